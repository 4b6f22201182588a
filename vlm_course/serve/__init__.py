"""Serve a vision-language model over HTTP, OpenAI-style: `vlm-course serve`.

    vlm-course serve                        # the tiny model on http://127.0.0.1:8000/v1
    vlm-course serve --model DIR --port 9000 --api-key SECRET --max-batch-size 16
    vlm-course serve --ray --num-replicas 2 # the same app as a Ray Serve deployment

Modules: `schemas` (request bodies), `batching` (the worker that groups requests into one
generate), `app` (the FastAPI app and its image policy), `server` (uvicorn, foreground or in a
background thread), `ray_app` (the Ray Serve deployment), `loadtest` (concurrent clients).
FastAPI, uvicorn and Ray are imported only when used.
"""

from __future__ import annotations

import argparse
import os

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
    p = argparse.ArgumentParser(prog="vlm-course serve", description="An OpenAI-compatible chat-completions server.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="hub id or directory (default: $VLM_COURSE_MODEL or the tiny model)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--attn", default="auto")
    p.add_argument("--quant", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--api-key", default=os.environ.get("VLM_COURSE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $VLM_COURSE_API_KEY, else no key)")
    p.add_argument("--max-batch-size", type=int, default=8, help="most requests in one batched generate")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="how long the first request waits for company")
    p.add_argument("--allow-dir", action="append", default=[], metavar="DIR",
                   help="allow image paths under DIR (repeatable; default: no local paths)")
    p.add_argument("--allow-private-urls", action="store_true",
                   help="allow image URLs on loopback/private addresses (default: refused)")
    p.add_argument("--max-images", type=int, default=8, help="most images per request")
    p.add_argument("--max-body-bytes", type=int, default=20_000_000)
    p.add_argument("--log-level", default="info")
    ray = p.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment on a local Ray instance")
    ray.add_argument("--num-replicas", type=int, default=1)
    ray.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (ray_actor_options)")
    ray.add_argument("--num-gpus", type=float, default=0, help="GPUs per replica (ray_actor_options)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .app import ServerSettings

    settings = ServerSettings(model=args.model, dtype=args.dtype, attn=args.attn, quant=args.quant, device=args.device,
                              api_key=args.api_key, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                              allow_dirs=args.allow_dir, allow_private_urls=args.allow_private_urls,
                              max_images=args.max_images, max_body_bytes=args.max_body_bytes)
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
