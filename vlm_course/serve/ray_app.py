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

import os
import signal
import threading
from typing import Any, Optional

from pydantic import BaseModel, Field

from ..errors import BackendError, missing_extra
from .app import ServerSettings, create_app

APP_NAME = "vlm-course"


class RayServeConfig(BaseModel):
    """A deployment of one model. Everything but the Ray fields becomes the replica's ServerSettings."""

    model_id: Optional[str] = Field(None, description="hub id or directory; None: VLM_COURSE_MODEL or the tiny model")
    dtype: str = "auto"
    attn: str = "auto"
    quant: Optional[str] = None
    device: Optional[str] = None
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    api_key: Optional[str] = None
    allow_private_urls: bool = False
    allow_dirs: list[str] = Field(default_factory=list)
    max_images: int = Field(8, ge=1)
    # Ray's own knobs.
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_ongoing_requests: Optional[int] = Field(
        None, description="requests a replica holds at once; default 2 x max_batch_size (Ray only lets a "
                          "replica batch what it holds, so this must be at least the batch size)")

    def server_settings(self) -> ServerSettings:
        return ServerSettings(model=self.model_id, dtype=self.dtype, attn=self.attn, quant=self.quant, device=self.device,
                              api_key=self.api_key, max_batch_size=self.max_batch_size, max_wait_ms=self.max_wait_ms,
                              allow_dirs=list(self.allow_dirs), allow_private_urls=self.allow_private_urls,
                              max_images=self.max_images)

    @classmethod
    def from_settings(cls, settings: ServerSettings, **ray_fields) -> "RayServeConfig":
        return cls(model_id=settings.model, dtype=settings.dtype, attn=settings.attn, quant=settings.quant,
                   device=settings.device, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
                   api_key=settings.api_key, allow_private_urls=settings.allow_private_urls,
                   allow_dirs=list(settings.allow_dirs), max_images=settings.max_images, **ray_fields)


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
    import ray

    serve = _serve()
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
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")  # returns once replicas are healthy
    return f"http://{host}:{port}"


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
