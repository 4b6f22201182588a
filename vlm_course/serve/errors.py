"""Error shaping: every error the server answers is OpenAI-shaped JSON with a 4xx for the client's mistakes.

    {"error": {"message": "...", "type": "invalid_request_error", "code": "context_length_exceeded", "param": "messages"}}

`APIError` is raised anywhere in a request; `install_handlers(app)` turns it (and FastAPI's, Starlette's
and any unexpected exception) into that shape. `BodyLimit` refuses oversize bodies with 413, whether
they announce a Content-Length or arrive chunked.
"""

from __future__ import annotations

import json
from typing import Optional

from ..errors import GenerationError, ImageError, MessagesError


class APIError(Exception):
    """An error answered as OpenAI-shaped JSON."""

    def __init__(self, status: int, message: str, code: str, type: str = "invalid_request_error",
                 param: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class ShuttingDown(Exception):
    """The server stopped before this request's reply was complete."""


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down; this request was not completed. Retry it (on another "
                    "replica if you have one).", "server_shutting_down", "server_error")


def from_course_error(e: BaseException, status: int = 400) -> APIError:
    """A worker's error event -> the APIError the client sees."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ShuttingDown):
        return shutting_down()
    if status >= 500:
        return APIError(status, f"The server failed to generate a reply: {type(e).__name__}: {e}", "server_error",
                        "server_error")
    code = getattr(e, "code", None) or next(
        (c for t, c in ((ImageError, "invalid_image"), (MessagesError, "invalid_messages"),
                        (GenerationError, "invalid_request")) if isinstance(e, t)), "invalid_request")
    return APIError(status, str(e), code, param=getattr(e, "param", None))


_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "none", "function-after", "function-before"}


def _where(err: dict) -> str:
    """A readable location: pydantic's union branches ('str', 'list[tagged-union[...]]') left out."""
    parts = [str(x) for x in err.get("loc", ()) if x != "body"
             and not (isinstance(x, str) and (x in _TYPE_NAMES or "[" in x))]
    return ".".join(parts)


def validation_error(errors: list[dict]) -> APIError:
    """pydantic's errors -> one 400 naming the bad parameter (the deepest error: for `content`, a string or a
    list of parts, the list's error says more than 'not a string')."""
    errors = sorted(errors, key=lambda err: -len(_where(err).split(".")))

    def one(err: dict) -> str:
        loc = _where(err) or "body"
        if err.get("type") == "extra_forbidden":
            return f"{loc}: this server does not know the parameter {loc.rsplit('.', 1)[-1]!r} (it ignores nothing silently)"
        return f"{loc}: {err.get('msg')}"

    where = _where(errors[0]) if errors else None
    return APIError(400, "; ".join(one(err) for err in errors[:5]), "invalid_request", param=where or None)


def install_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        error = validation_error(e.errors())
        return JSONResponse(error.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request")
        return JSONResponse(APIError(e.status_code, str(e.detail), code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):  # the last resort: still OpenAI-shaped
        return JSONResponse(APIError(500, f"Internal error: {type(e).__name__}", "server_error", "server_error").body(),
                            status_code=500)


# --------------------------------------------------------------------------- the body limit


class _TooLarge(Exception):
    pass


async def send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """ASGI middleware: refuse request bodies over `limit` bytes with 413, by Content-Length or while reading
    (a chunked body has none). The handler reads the body only through this limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def too_large(self) -> APIError:
        return APIError(413, f"The request body is larger than this server's limit of {self.limit:,} bytes. "
                        "Send smaller images (or fewer).", "request_too_large")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await send_json(send, 400, APIError(400, "Bad Content-Length header.", "invalid_request").body())
            if int(length) > self.limit:
                return await send_json(send, 413, self.too_large().body())
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_json(send, 413, self.too_large().body())
