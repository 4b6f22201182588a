"""The OpenAI-compatible HTTP app: `create_app(settings)` returns a FastAPI application.

    POST /v1/chat/completions   OpenAI's chat format with image_url parts; stream=true for SSE
    GET  /v1/models             the one model this server holds
    GET  /health                liveness (the batcher's counters too, with the API key when one is set)

Every error is OpenAI-shaped JSON (`errors`), with a 4xx status for anything the client did wrong. The
model lives in one `Batcher` worker thread; request handlers check input (`completions`), load images
(`image_policy`) and wait for their rows. On shutdown (`drain`, called by the server on SIGTERM) new
requests get 503 and in-flight ones have `shutdown_grace_s` to finish before they are ended with an
OpenAI-shaped error (streams: an error event, then [DONE]). The same app runs under uvicorn
(`vlm-course serve`) and inside a Ray Serve replica (`vlm_course.serve.ray_app`).
"""


import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from typing import Any, Optional

from ..errors import missing_extra
from .errors import APIError, BodyLimit, install_handlers, shutting_down
from .settings import DEFAULT_MAX_TOKENS, ServerSettings  # noqa: F401  (re-exported: serve.app.ServerSettings)

__all__ = ["ServerSettings", "create_app", "APIError"]


def create_app(settings: Optional[ServerSettings] = None, vlm=None, network: Optional[dict] = None):
    """The FastAPI app. With `vlm` given it serves that model; otherwise it loads `settings.model` at startup.
    `network` replaces the image fetcher's connect / resolve / allowed (tests: loopback only, no DNS)."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import StreamingResponse
    except ImportError:
        raise missing_extra("fastapi", "serve") from None
    from . import completions
    from .batching import Batcher
    from .image_policy import ImagePolicy

    settings = settings or ServerSettings()
    state: dict[str, Any] = {"vlm": vlm, "created": int(time.time()), "batcher": None, "policy": None}

    @asynccontextmanager
    async def lifespan(app):
        if state["vlm"] is None:
            from ..models import load_vlm

            state["vlm"] = await asyncio.to_thread(load_vlm, settings.model, dtype=settings.dtype, attn=settings.attn,
                                                   quant=settings.quant, device=settings.device)
        state["policy"] = ImagePolicy.for_model(settings, state["vlm"], network)
        state["batcher"] = Batcher(state["vlm"], settings.max_batch_size, settings.max_wait_ms)
        state["draining"], state["stopping"] = asyncio.Event(), asyncio.Event()
        state["loop"] = asyncio.get_running_loop()
        app.state.batcher = state["batcher"]
        try:
            yield
        finally:
            state["stopping"].set()
            await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="vlm-course", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible chat-completions server for vision-language models.")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    install_handlers(app)

    def drain(grace: Optional[float] = None) -> None:
        """Stop taking requests; end the ones still running after `grace` seconds. Safe from any thread."""
        loop = state.get("loop")
        if loop is None or loop.is_closed():
            return
        grace = settings.shutdown_grace_s if grace is None else grace

        def start():
            state["draining"].set()
            loop.call_later(grace, state["stopping"].set)

        loop.call_soon_threadsafe(start)

    app.state.drain = drain

    def model_name() -> str:
        return state["vlm"].name if state["vlm"] is not None else str(settings.model)

    def has_key(request: Request) -> bool:
        if settings.api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.api_key.encode())

    def authorize(request: Request) -> None:
        if not has_key(request):
            raise APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")

    def accepting() -> None:
        if state["batcher"] is None:
            raise APIError(503, "The model is still loading; retry in a moment.", "model_loading", "server_error")
        if state["draining"].is_set():
            raise shutting_down()

    @app.get("/health")
    async def health(request: Request):
        batcher = state["batcher"]
        status = "loading" if batcher is None else "draining" if state["draining"].is_set() else "ok"
        answer: dict[str, Any] = {"status": status, "model": model_name()}
        if has_key(request):  # counters only for whoever may use the API (they tell traffic and load)
            answer["batcher"] = dict(batcher.stats, max_batch_size=batcher.max_batch_size) if batcher else None
            answer["images"] = state["policy"].describe() if state["policy"] else None
        return answer

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name(), "object": "model", "created": state["created"],
                                            "owned_by": "vlm-course"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)  # before the body is read or parsed
        accepting()
        body = await completions.read_request(request, settings)
        vlm = state["vlm"]
        plan = completions.plan(vlm, body, settings, model_name())
        await completions.check_prompt_length(vlm, body, plan)
        conversation = await completions.to_conversation(body, state["policy"], settings.max_images)
        accepting()
        completion = completions.Completion(state["batcher"], body, plan, conversation, model_name(), request,
                                            state["stopping"])
        first = await completion.first()
        if not body.stream:
            return await completion.json(first)
        return StreamingResponse(completion.sse(first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
