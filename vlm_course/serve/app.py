"""The OpenAI-compatible HTTP app: `create_app(settings)` returns a FastAPI application.

    POST /v1/chat/completions   OpenAI's chat format with image_url parts; stream=true for SSE
    GET  /v1/models             the one model this server holds
    GET  /health                liveness (the batcher's counters too, with the API key when one is set)

The parts, each in its own module: `settings` (what an operator sets), `errors` (OpenAI-shaped errors,
the body limit), `image_policy` (which images, fetched how, decoded how large), `completions` (a request
checked step by step, then its job and its answer), `routes` (the three endpoints) and `batching` (the
worker thread that owns the model). This module holds the server's state and its life: the model and
batcher start with the app; on shutdown (`drain`, called by the server on SIGTERM) new requests get 503
and in-flight ones have `shutdown_grace_s` to finish before they are ended with an OpenAI-shaped error
(streams: an error event, then [DONE]). The same app runs under uvicorn (`vlm-course serve`) and inside
a Ray Serve replica (`vlm_course.serve.ray_app`).
"""

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from typing import Optional

from ..errors import missing_extra
from .errors import APIError, BodyLimit, install_handlers, shutting_down
from .settings import DEFAULT_MAX_TOKENS, ServerSettings  # noqa: F401  (re-exported: serve.app.ServerSettings)

__all__ = ["ServerSettings", "create_app", "APIError", "ServerState"]


class ServerState:
    """The model, its batcher and image policy, and whether the server is draining or stopping."""

    def __init__(self, settings: ServerSettings, vlm=None, network: Optional[dict] = None):
        self.settings, self.vlm, self.network = settings, vlm, network
        self.created = int(time.time())
        self.batcher = self.policy = self.loop = None
        self.draining: Optional[asyncio.Event] = None  # set: new requests get 503
        self.stopping: Optional[asyncio.Event] = None  # set: in-flight requests are ended

    async def start(self) -> None:
        from .batching import Batcher
        from .image_policy import ImagePolicy

        s = self.settings
        if self.vlm is None:
            from ..models import load_vlm

            self.vlm = await asyncio.to_thread(load_vlm, s.model, dtype=s.dtype, attn=s.attn, quant=s.quant,
                                               device=s.device, adapter=s.adapter)
        self.policy = ImagePolicy.for_model(s, self.vlm, self.network)
        self.batcher = Batcher(self.vlm, s.max_batch_size, s.max_wait_ms)
        self.draining, self.stopping = asyncio.Event(), asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.to_thread(self.batcher.close)

    def drain(self, grace: Optional[float] = None) -> None:
        """Stop taking requests; end the ones still running after `grace` seconds. Safe from any thread."""
        if self.loop is None or self.loop.is_closed():
            return
        grace = self.settings.shutdown_grace_s if grace is None else grace

        def start():
            self.draining.set()
            self.loop.call_later(grace, self.stopping.set)

        self.loop.call_soon_threadsafe(start)

    def model_name(self) -> str:
        return self.vlm.name if self.vlm is not None else str(self.settings.model)

    def has_key(self, request) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def authorize(self, request) -> None:
        if not self.has_key(request):
            raise APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")

    def accepting(self) -> None:
        if self.batcher is None:
            raise APIError(503, "The model is still loading; retry in a moment.", "model_loading", "server_error")
        if self.draining.is_set():
            raise shutting_down()


def create_app(settings: Optional[ServerSettings] = None, vlm=None, network: Optional[dict] = None):
    """The FastAPI app. With `vlm` given it serves that model; otherwise it loads `settings.model` at startup.
    `network` replaces the image fetcher's connect / resolve / allowed (tests: loopback only, no DNS)."""
    try:
        from fastapi import FastAPI
    except ImportError:
        raise missing_extra("fastapi", "serve") from None
    from .routes import add_routes

    settings = settings or ServerSettings()
    state = ServerState(settings, vlm, network)

    @asynccontextmanager
    async def lifespan(app):
        await state.start()
        app.state.batcher = state.batcher
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="vlm-course", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible chat-completions server for vision-language models.")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    install_handlers(app)
    app.state.drain = state.drain
    add_routes(app, state)
    return app
