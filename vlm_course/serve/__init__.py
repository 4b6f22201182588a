"""Serve a vision-language model over HTTP, OpenAI-style: `vlm-course serve`.

    vlm-course serve                        # the tiny model on http://127.0.0.1:8000/v1
    vlm-course serve --model DIR --port 9000 --api-key SECRET --max-batch-size 16
    vlm-course serve --ray --num-replicas 2 # the same app as a Ray Serve deployment

Modules: `settings` (ServerSettings: the one source of the options here and of RayServeConfig),
`schemas` (request bodies), `errors` (OpenAI-shaped errors, the body limit), `image_policy` (which
images, fetched how, decoded how large), `completions` (a request checked step by step, its job and
its answer), `batching` (the worker that groups requests into one generate), `routes` and `app` (the
FastAPI app, its state and its drain on shutdown), `server` (uvicorn, foreground or in a background
thread), `ray_app` (the Ray Serve deployment), `loadtest` (concurrent clients), `probe` (the issue-16
attacks, measured). FastAPI, uvicorn and Ray are imported only when used.
"""

from __future__ import annotations

import argparse

__all__ = ["ServerSettings", "create_app", "start_in_background", "RayServeConfig", "main"]


def __getattr__(name):  # lazy: `import vlm_course.serve` must not need fastapi
    if name in ("ServerSettings", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "start_in_background":
        from .server import start_in_background

        return start_in_background
    if name == "RayServeConfig":
        from .ray_app import RayServeConfig

        return RayServeConfig
    raise AttributeError(name)


def build_parser() -> argparse.ArgumentParser:
    from .settings import add_arguments

    p = argparse.ArgumentParser(prog="vlm-course serve", description="An OpenAI-compatible chat-completions server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    add_arguments(p)  # one option per ServerSettings field, with its default and help
    p.add_argument("--log-level", default="info")
    ray = p.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment on a local Ray instance")
    ray.add_argument("--num-replicas", type=int, default=1)
    ray.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (ray_actor_options)")
    ray.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica (ray_actor_options)")
    return p


def main(argv: list[str] | None = None) -> int:
    from .settings import from_arguments

    args = build_parser().parse_args(argv)
    try:
        settings = from_arguments(args)
    except ValueError as e:
        build_parser().error(str(e))
    if args.ray:
        from .ray_app import RayServeConfig, serve_with_ray

        config = RayServeConfig.from_settings(settings, num_replicas=args.num_replicas,
                                              ray_actor_options={"num_cpus": args.num_cpus, "num_gpus": args.num_gpus})
        serve_with_ray(config, host=args.host, port=args.port)
        return 0
    from .server import serve_forever

    print(f"vlm-course serve: http://{args.host}:{args.port}/v1 (OpenAI-compatible; Ctrl-C to stop)", flush=True)
    serve_forever(settings, host=args.host, port=args.port, log_level=args.log_level)
    return 0
