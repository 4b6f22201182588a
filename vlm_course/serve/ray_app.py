"""The same FastAPI app as a Ray Serve deployment: one replica per model copy, across many machines.

    config = RayServeConfig(max_batch_size=16, num_replicas=2, ray_actor_options={"num_gpus": 1})
    url = start_ray(config, port=8000)          # a local Ray instance unless one is already running
    ...                                          # OpenAI-compatible at url + "/v1"
    stop_ray()

Configured the way Aana SDK configures its deployments: a pydantic model with the model id, dtype,
attention, quantization and batch size, plus Ray's own `num_replicas` and `ray_actor_options`. The
replica builds the app with `create_app` on its own machine (`serve.ingress` with a builder), so
the model loads there, and its batching worker is the one the single-machine server uses. Ray's
router spreads requests over replicas; each replica batches what it receives.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any, Optional

import annotated_types
from pydantic import BaseModel, Field, create_model

from ..errors import BackendError, missing_extra
from .app import create_app
from .settings import ServerSettings
from .settings import fields as settings_fields

APP_NAME = "vlm-course"


def _settings_fields() -> dict[str, Any]:
    """Every ServerSettings field as a pydantic field (same default, help and lower bound); `model` is
    called `model_id` here, as Ray and Aana configurations call it."""
    out: dict[str, Any] = {}
    for f, annotation in settings_fields():
        default = Field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING else \
            Field(f.default)
        default.description = f.metadata.get("help")
        if f.metadata.get("ge") is not None:
            default.metadata.append(annotated_types.Ge(f.metadata["ge"]))
        out[_ALIASES.get(f.name, f.name)] = (annotation, default)
    return out


_ALIASES = {"model": "model_id"}


class _RayFields(BaseModel):
    """Ray's own knobs; everything else (derived from ServerSettings) becomes the replica's settings."""

    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_ongoing_requests: Optional[int] = Field(
        None, description="requests a replica holds at once; default 2 x max_batch_size (Ray only lets a "
                          "replica batch what it holds, so this must be at least the batch size)")

    def server_settings(self) -> ServerSettings:
        return ServerSettings(**{f.name: getattr(self, _ALIASES.get(f.name, f.name)) for f, _ in settings_fields()})

    @classmethod
    def from_settings(cls, settings: ServerSettings, **ray_fields) -> "RayServeConfig":
        values = {_ALIASES.get(f.name, f.name): getattr(settings, f.name) for f, _ in settings_fields()}
        return cls(**values, **ray_fields)


RayServeConfig = create_model("RayServeConfig", __base__=_RayFields, __module__=__name__, **_settings_fields())
RayServeConfig.__doc__ = ("A deployment of one model: every ServerSettings field (model as model_id) plus Ray's "
                          "num_replicas, ray_actor_options and max_ongoing_requests.")


def _serve():
    try:
        from ray import serve
    except ImportError:
        raise missing_extra("ray[serve]", "ray") from None
    # Importing ray.serve gives its logger a handler of its own at INFO: every start, deploy and shutdown step
    # would print a timestamped line (red in a notebook). Warnings and errors still show.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return serve


def build_app(config: RayServeConfig):
    """The Ray Serve application (bind it with serve.run, or let start_ray do it)."""
    serve = _serve()
    settings = config.server_settings()

    def builder():  # a plain function (Ray treats other callables as ASGI apps); it runs on the replica,
        return create_app(settings)  # so the app, its model and its batcher are created there

    class VLMCourseServer:
        """A replica. It holds nothing itself: the FastAPI app owns the model."""

    deployment = serve.deployment(
        serve.ingress(builder)(VLMCourseServer),
        name="VLMCourseServer",
        num_replicas=config.num_replicas,
        ray_actor_options=config.ray_actor_options,
        max_ongoing_requests=config.max_ongoing_requests or max(2 * config.max_batch_size, 16),
    )
    return deployment.bind()


def start_ray(config: RayServeConfig, host: str = "127.0.0.1", port: int = 8000, num_cpus: Optional[int] = None) -> str:
    """Start (or join) Ray, deploy the app, wait until it answers, and return its base URL."""
    serve = _serve()
    init_ray(num_cpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")  # returns once replicas are healthy
    return f"http://{host}:{port}"


# What a local Ray Serve instance adds to the memory of the process that starts it, besides the replica's copy of
# the weights: GCS, raylet, the dashboard head and agent, the runtime-env agent, the autoscaler and log monitors,
# Serve's controller and HTTP proxy, and a replica importing torch and transformers. Measured with
# `vlm-course bench --suite notebooks` on notebook 07 (tiny model, Ray 2.60, summed RSS): 1.66 GB, of which
# the replica 0.55, Serve's controller and proxy 0.20 each, Ray's agents and monitors 0.10-0.15 each.
RAY_SERVE_BYTES = 1_700_000_000
# Ray's object store carries only the requests and replies here: room for ten of the largest request bodies the
# server accepts (20 MB) at once, and it spills to disk beyond. Ray's default, 30% of the machine's memory, is
# shared memory it may fill: more than a small machine should give it.
OBJECT_STORE_BYTES = 200_000_000


def ray_memory_shortfall(model_bytes: int = 0) -> Optional[str]:
    """Why a local Ray Serve instance with one replica of a model of `model_bytes` would not fit in the memory
    this session has left (vlm_course.system.available_memory), or None when it fits."""
    from ..memory import format_bytes
    from ..system import available_memory

    need, room = RAY_SERVE_BYTES + model_bytes, available_memory()
    if need <= room:
        return None
    return (f"a local Ray Serve instance with one replica needs about {format_bytes(need)} more (Ray's own processes "
            f"{format_bytes(RAY_SERVE_BYTES)}, plus the replica's copy of the weights), and this session has "
            f"{format_bytes(room)} left (Binder gives a session about 2 GB in all). Run this section where there is "
            "more memory: a laptop (make lab) or Colab.")


TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def _drop_token_notice() -> None:
    """Ray >= 2.5x turns token authentication on for every new local instance (good: it stays on) and logs a
    warning saying so at each start, which asks nothing of a learner. Only that notice is dropped."""
    logger = logging.getLogger(TOKEN_LOGGER)
    if not any(isinstance(f, _DropTokenNotice) for f in logger.filters):
        logger.addFilter(_DropTokenNotice())


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Connect to Ray, starting a local instance for this process unless one runs (or RAY_ADDRESS names one)."""
    import os

    # No usage-statistics notice, and no attempt to report them to Ray's servers from a learner's machine.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    _drop_token_notice()

    for attempt in (1, 2):
        if ray.is_initialized():
            break
        try:  # a local instance for this process; set RAY_ADDRESS to join an existing cluster instead
            # log_to_driver=False: the replicas' INFO lines stay in Ray's log files (/tmp/ray/session_latest/logs),
            # not in the notebook; errors still reach the caller as exceptions.
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     object_store_memory=None if os.environ.get("RAY_ADDRESS") else OBJECT_STORE_BYTES)
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception when its node fails to start
            # Ray's raylet gives its Python agents a fixed 15 s to start; on a machine whose CPUs are busy
            # they can miss it. One retry, then a clear error.
            if attempt == 2 or "timed out during startup" not in str(e):
                raise BackendError(f"Ray could not start a local instance: {e} On a busy machine Ray's helper "
                                   "processes can miss their startup deadline; try again when the CPUs are "
                                   "less loaded, or start Ray yourself (ray start --head) and set RAY_ADDRESS.") from e


def stop_ray() -> None:
    """Tear the deployment down and disconnect from Ray (shutting down a local instance)."""
    import ray

    serve = _serve()
    serve.shutdown()
    ray.shutdown()


def serve_with_ray(config: RayServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """`vlm-course serve --ray`: deploy, then wait for Ctrl-C or SIGTERM."""
    url = start_ray(config, host, port)
    print(f"vlm-course serve (Ray Serve, {config.num_replicas} replica(s)): {url}/v1 (Ctrl-C to stop)", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_ray()
