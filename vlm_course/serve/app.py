"""The OpenAI-compatible HTTP app: `create_app(settings)` returns a FastAPI application.

    POST /v1/chat/completions   OpenAI's chat format with image_url parts; stream=true for SSE
    GET  /v1/models             the one model this server holds
    GET  /health                liveness, plus the batcher's counters

Every error is OpenAI-shaped JSON, {"error": {"message", "type", "code", "param"}}, with a 4xx
status for anything the client did wrong. The model lives in one `Batcher` worker thread; request
handlers only check input, load images and wait for their rows. The same app runs under uvicorn
(`vlm-course serve`) and inside a Ray Serve replica (`vlm_course.serve.ray_app`).
"""


import asyncio
import hmac
import ipaddress
import json
import socket
import time
import urllib.parse
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import GenerationError, ImageError, MessagesError, VLMCourseError, missing_extra

DEFAULT_MAX_TOKENS = 128


@dataclass
class ServerSettings:
    """Everything an operator can set. The defaults are the safe ones."""

    model: Optional[str] = None  # hub id or directory; None: VLM_COURSE_MODEL or the bundled tiny model
    dtype: str = "auto"
    attn: str = "auto"
    quant: Optional[str] = None
    device: Optional[str] = None
    api_key: Optional[str] = None  # if set, /v1/* needs "Authorization: Bearer <api_key>"
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    allow_dirs: list[str] = field(default_factory=list)  # local image paths only under these directories
    allow_private_urls: bool = False  # image URLs on loopback/private addresses (off: no SSRF into your network)
    max_images: int = 8  # per request
    max_body_bytes: int = 20_000_000
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 40_000_000
    url_timeout: float = 10.0
    default_max_tokens: int = DEFAULT_MAX_TOKENS


class APIError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(self, status: int, message: str, code: str, type: str = "invalid_request_error",
                 param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def _from_course_error(e: Exception, status: int = 400) -> APIError:
    if status >= 500:
        return APIError(status, f"The server failed to generate a reply: {e}", "server_error", "server_error")
    code = {ImageError: "invalid_image", MessagesError: "invalid_messages", GenerationError: "invalid_request"}
    return APIError(status, str(e), next((c for t, c in code.items() if isinstance(e, t)), "invalid_request"))


# --------------------------------------------------------------------------- images


def _check_host(host: str, port: int, allow_private: bool) -> None:
    """Refuse URLs that resolve to this machine or a private network unless the operator allows them."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        raise APIError(400, f"Could not resolve the image URL's host {host!r} ({e}).", "invalid_image_url", param="messages")
    if allow_private:
        return
    for *_, addr in infos:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if not ip.is_global or ip.is_multicast:
            raise APIError(400, f"The image URL's host {host!r} is a private or loopback address ({ip}); this server "
                           "refuses those (the operator can allow them with --allow-private-urls). Send the image "
                           "as a data URI instead.", "url_not_allowed", param="messages")


async def _download(url: str, settings: ServerSettings) -> bytes:
    """GET an image with a timeout and a byte limit; redirects are followed by hand so each hop is checked."""
    import httpx

    deadline = time.monotonic() + settings.url_timeout
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=settings.url_timeout) as client:
        for _ in range(4):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise APIError(400, f"Image URLs must be http(s) with a host, got {url[:80]!r}.", "invalid_image_url", param="messages")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            await asyncio.to_thread(_check_host, parts.hostname, port, settings.allow_private_urls)
            try:
                async with client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urllib.parse.urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise APIError(400, f"Downloading the image {url[:80]!r} failed with HTTP {response.status_code}.",
                                       "invalid_image_url", param="messages")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > settings.max_image_bytes:
                            raise APIError(400, f"The image at {url[:80]!r} is larger than the server's limit of "
                                           f"{settings.max_image_bytes:,} bytes.", "image_too_large", param="messages")
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("deadline")
                    return bytes(data)
            except httpx.TimeoutException:
                raise APIError(400, f"Downloading the image {url[:80]!r} timed out after {settings.url_timeout:g} s.",
                               "invalid_image_url", param="messages") from None
            except httpx.HTTPError as e:
                raise APIError(400, f"Could not download the image {url[:80]!r}: {e}.", "invalid_image_url", param="messages") from None
    raise APIError(400, f"The image URL {url[:80]!r} redirects too many times.", "invalid_image_url", param="messages")


def _allowed_path(url: str, settings: ServerSettings) -> Path:
    raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file://") else url
    if not settings.allow_dirs:
        raise APIError(400, "Local image paths are not allowed on this server (the operator can allow a directory "
                       "with --allow-dir). Send the image as a data URI or an http(s) URL.", "path_not_allowed", param="messages")
    path = Path(raw).expanduser().resolve()  # resolves '..' and symlinks before the check
    for allowed in settings.allow_dirs:
        if path.is_relative_to(Path(allowed).expanduser().resolve()):
            return path
    raise APIError(400, f"The image path {raw[:80]!r} is outside the directories this server allows.", "path_not_allowed",
                   param="messages")


async def load_request_image(url: str, settings: ServerSettings):
    """An image_url part's url -> RGB PIL image, under the server's policy (data URI, http(s), allowed paths)."""
    from ..images import load_image

    limits = dict(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    lowered = url[:16].lower()
    try:
        if lowered.startswith("data:"):
            return await asyncio.to_thread(load_image, url, allow_local=False, **limits)
        if lowered.startswith(("http://", "https://")):
            data = await _download(url, settings)
            return await asyncio.to_thread(load_image, data, **limits)
        if lowered.startswith("file://") or url.startswith(("/", "~")):
            path = _allowed_path(url, settings)
            return await asyncio.to_thread(load_image, path, **limits)
    except ImageError as e:
        raise APIError(400, str(e), "invalid_image", param="messages") from None
    raise APIError(400, f"Unsupported image url {url[:60]!r}: send a data:image/...;base64 URI, an http(s) URL, or "
                   "(if the operator allows a directory) a local path.", "invalid_image_url", param="messages")


# --------------------------------------------------------------------------- requests to jobs


async def to_conversation(request, settings: ServerSettings) -> list[dict]:
    """OpenAI messages -> a validated transformers conversation with images loaded."""
    from ..messages import validate

    n_images = sum(1 for m in request.messages if not isinstance(m.content, str)
                   for p in m.content if p.type == "image_url")
    if n_images > settings.max_images:
        raise APIError(400, f"The request has {n_images} images; this server takes at most {settings.max_images} "
                       "per request.", "too_many_images", param="messages")
    conversation = []
    for message in request.messages:
        if isinstance(message.content, str):  # Idefics2's template drops plain strings: make it a part
            parts = [{"type": "text", "text": message.content}]
        else:
            parts = []
            for part in message.content:
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                else:
                    parts.append({"type": "image", "image": await load_request_image(part.image_url.url, settings)})
        conversation.append({"role": message.role, "content": parts})
    try:
        return validate(conversation)
    except MessagesError as e:
        raise APIError(400, str(e), "invalid_messages", param="messages") from None


def _check_options(vlm, request, max_new_tokens: int) -> None:
    from ..chat import generation_options

    try:  # seed is applied by the worker, right before its generate
        generation_options(vlm, max_new_tokens=max_new_tokens, temperature=request.temperature,
                           top_p=request.top_p, stop=request.stop)
    except GenerationError as e:
        raise APIError(400, str(e), "invalid_request") from None
    vocab = len(vlm.tokenizer)
    for token in request.logit_bias or {}:
        if token >= vocab:
            raise APIError(400, f"logit_bias names token {token}, but the vocabulary has {vocab} tokens.",
                           "invalid_request", param="logit_bias")


def _usage_json(usage) -> dict:
    d = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
         "total_tokens": usage.total_tokens, "seconds": round(usage.seconds, 6),
         "time_to_first_token": None if usage.time_to_first_token is None else round(usage.time_to_first_token, 6),
         "prompt_tokens_per_second": usage.prefill_tokens_per_second,
         "completion_tokens_per_second": usage.decode_tokens_per_second}
    return d


# --------------------------------------------------------------------------- the app


class _BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes (by Content-Length, or while reading)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = APIError(413, f"The request body is larger than this server's limit of {self.limit:,} bytes. "
                         "Send smaller images.", "request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413 if length.isdigit() else 400,
                                    error.body() if length.isdigit() else APIError(400, "Bad Content-Length.", "invalid_request").body())
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await _send_json(send, 413, error.body())


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(settings: Optional[ServerSettings] = None, vlm=None):
    """The FastAPI app. With `vlm` given it serves that model; otherwise it loads `settings.model` at startup."""
    try:
        from fastapi import Depends, FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise missing_extra("fastapi", "serve") from None
    from . import schemas
    from .batching import Batcher, Job

    settings = settings or ServerSettings()
    state: dict[str, Any] = {"vlm": vlm, "created": int(time.time())}

    @asynccontextmanager
    async def lifespan(app):
        if state["vlm"] is None:
            from ..models import load_vlm

            state["vlm"] = await asyncio.to_thread(load_vlm, settings.model, dtype=settings.dtype, attn=settings.attn,
                                                   quant=settings.quant, device=settings.device)
        state["batcher"] = Batcher(state["vlm"], settings.max_batch_size, settings.max_wait_ms)
        app.state.batcher = state["batcher"]
        try:
            yield
        finally:
            await asyncio.to_thread(state["batcher"].close)

    app = FastAPI(title="vlm-course", version="1", lifespan=lifespan,
                  description="An OpenAI-compatible chat-completions server for vision-language models.")
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        if first.get("type") == "json_invalid":
            message = f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}."
        else:
            message = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()) if x != 'body') or 'body'}: {err.get('msg')}"
                                for err in errors[:5])
        return JSONResponse(APIError(400, message, "invalid_request", param=where).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return JSONResponse(APIError(e.status_code, str(e.detail), code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):  # the last resort: still OpenAI-shaped
        return JSONResponse(APIError(500, f"Internal error: {type(e).__name__}", "server_error", "server_error").body(),
                            status_code=500)

    def model_name() -> str:
        return state["vlm"].name if state["vlm"] is not None else str(settings.model)

    async def authorized(request: Request):
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "Missing or incorrect API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")

    @app.get("/health")
    async def health():
        batcher = state.get("batcher")
        return {"status": "ok" if batcher else "loading", "model": model_name(),
                "batcher": dict(batcher.stats, max_batch_size=batcher.max_batch_size) if batcher else None}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": model_name(), "object": "model", "created": state["created"],
                                            "owned_by": "vlm-course"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: schemas.ChatCompletionRequest, request: Request):
        vlm = state["vlm"]
        if body.model not in (None, "", "default", model_name()):
            raise APIError(404, f"The model {body.model!r} does not exist on this server; it serves {model_name()!r} "
                           "(see GET /v1/models).", "model_not_found", param="model")
        max_new_tokens = body.max_new_tokens or settings.default_max_tokens
        _check_options(vlm, body, max_new_tokens)
        conversation = await to_conversation(body, settings)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):  # called from the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        job = Job(conversation, emit, max_new_tokens=max_new_tokens, temperature=body.temperature,
                  top_p=body.top_p, seed=body.seed, stops=body.stop, logit_bias=body.logit_bias, stream=body.stream)
        state["batcher"].submit(job)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        async def next_event():
            # Wait for the worker; notice a client that hangs up while waiting.
            while True:
                try:
                    return await asyncio.wait_for(events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel.set()
                        raise APIError(499, "The client closed the request.", "client_closed")

        try:
            first = await next_event()
        except BaseException:
            job.cancel.set()
            raise
        if first[0] == "error":
            raise _from_course_error(first[1], first[2])

        if not body.stream:
            text: list[str] = []
            event = first
            try:
                while event[0] == "delta":
                    text.append(event[1])
                    event = await next_event()
            finally:
                job.cancel.set()  # no-op when finished; stops the row if this handler is cancelled
            if event[0] == "error":
                raise _from_course_error(event[1], event[2])
            result = event[1]
            return {"id": rid, "object": "chat.completion", "created": created, "model": model_name(),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                 "finish_reason": result.finish_reason, "logprobs": None}],
                    "usage": _usage_json(result.usage)}

        def chunk(delta: dict, finish_reason=None, usage=None, choices=True) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name(),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}] if choices else []}
            if usage is not None:
                data["usage"] = usage
            return f"data: {json.dumps(data)}\n\n"

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse():
            event = first
            try:
                yield chunk({"role": "assistant", "content": ""})
                while event[0] == "delta":
                    yield chunk({"content": event[1]})
                    event = await next_event()
                if event[0] == "error":
                    err = _from_course_error(event[1], event[2])
                    yield f"data: {json.dumps(err.body())}\n\n"
                else:
                    result = event[1]
                    yield chunk({}, finish_reason=result.finish_reason)
                    if include_usage:
                        yield chunk({}, usage=_usage_json(result.usage), choices=False)
                yield "data: [DONE]\n\n"
            finally:
                job.cancel.set()  # the client hung up (or we are done): stop this row's generation

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
