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


def init_ray(num_cpus: Optional[int] = None) -> None:
    """Connect to Ray, starting a local instance for this process unless one runs (or RAY_ADDRESS names one)."""
    import ray

    for attempt in (1, 2):
        if ray.is_initialized():
            break
        try:  # a local instance for this process; set RAY_ADDRESS to join an existing cluster instead
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
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
