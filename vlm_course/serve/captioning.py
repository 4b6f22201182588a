"""A captioning deployment on Ray Serve that batches images across concurrent requests.

    config = CaptioningConfig(model_id="tiny-blip2", batch_size=8, num_replicas=1)
    url = start_captioning(config, port=8000)   # a local Ray instance unless one is already running
    httpx.post(url + "/caption", json={"images": [data_uri], "prompt": None}).json()  # {"captions": [...]}
    openai.OpenAI(base_url=url + "/v1", api_key="-").chat.completions.create(...)   # one image, optional prompt
    stop_captioning()

Configured like Aana SDK's `HFBlip2Config` (model id, dtype, batch size, processing threads, max new
tokens) plus Ray's own `num_replicas` and `ray_actor_options`. Aana's `HFBlip2Deployment` chunks the
images of one request into batches; here every image is one call of a `@serve.batch` method, so
Ray groups the images of *all* requests that arrive together (up to `batch_size`, waiting at most
`batch_wait_timeout_s` for company) into one `generate`. Greedy captions are the same whatever
batch they land in. Any model `caption()` takes can be served (BLIP-2 or Idefics2); what the model
cannot do (several images in one BLIP-2 turn, a second turn, no image) is a 400 saying so.
"""

# No `from __future__ import annotations`: Ray ships the deployment class to the replica by value, and
# FastAPI must see the request models themselves, not their names, to read the bodies.
import asyncio
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..chat import MAX_NEW_TOKENS_LIMIT
from ..errors import VLMCourseError, missing_extra
from .schemas import ChatCompletionRequest

APP_NAME = "vlm-course-captioning"


class CaptioningConfig(BaseModel):
    """One captioning deployment (the fields of Aana's HFBlip2Config, then Ray's)."""

    model_id: str = Field("tiny-blip2", description="hub id, directory, or a bundled name (tiny-blip2, tiny-idefics2)")
    dtype: str = "auto"
    device: Optional[str] = None
    batch_size: int = Field(8, ge=1, description="most images in one generate (Ray's max_batch_size)")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="how long the first image waits for company")
    num_processing_threads: int = Field(1, ge=1, description="threads that decode the images of a request")
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_images: int = Field(16, ge=1, description="most images in one /caption request")
    max_image_bytes: int = 10_000_000
    max_image_pixels: int = 40_000_000
    # Ray's own knobs.
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    max_ongoing_requests: Optional[int] = Field(
        None, description="requests a replica holds at once; default 2 x batch_size (a replica only batches "
                          "what it holds)")


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(min_length=1, description="data:image/...;base64,... URIs or bare base64")
    prompt: Optional[str] = Field(None, description="BLIP-2 continues it ('Question: ... Answer:'); None: a caption")
    max_new_tokens: Optional[int] = Field(None, ge=1, le=MAX_NEW_TOKENS_LIMIT)


def _serve():
    from .ray_app import _serve  # one import of ray.serve, quieted the same way

    return _serve()


def _error(status: int, message: str, code: str, param: Optional[str] = None):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


class _BadRequest(Exception):
    def __init__(self, message: str, code: str = "invalid_request", param: Optional[str] = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def build_captioning_app(config: CaptioningConfig):
    """The Ray Serve application (bind it with serve.run, or let start_captioning do it)."""
    serve = _serve()
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
    except ImportError:
        raise missing_extra("fastapi", "serve") from None
    api = FastAPI(title="vlm-course captioning", description="Batched image-to-text on Ray Serve.")

    @api.exception_handler(_BadRequest)
    async def _bad(request, e: _BadRequest):
        return _error(400, e.message, e.code, e.param)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(400, f"Invalid request: {where or 'body'}: {first.get('msg', 'malformed')}.", "invalid_request",
                      where or None)

    settings = config.model_dump()

    @serve.deployment(name="CaptioningDeployment", num_replicas=config.num_replicas,
                      ray_actor_options=config.ray_actor_options,
                      max_ongoing_requests=config.max_ongoing_requests or max(2 * config.batch_size, 16))
    @serve.ingress(api)
    class CaptioningDeployment:
        """A replica: the model, a pool that decodes images, and the batched caption method."""

        def __init__(self, settings: dict):
            from ..models import load_vlm

            self.config = CaptioningConfig(**settings)
            self.vlm = load_vlm(self.config.model_id, dtype=self.config.dtype, device=self.config.device)
            self.pool = ThreadPoolExecutor(self.config.num_processing_threads, thread_name_prefix="decode")
            self.caption_one.set_max_batch_size(self.config.batch_size)
            self.caption_one.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
            self.batch_sizes: Counter = Counter()  # batch size -> how many generates ran at it

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)  # both reset from the config in __init__
        async def caption_one(self, items: list[tuple]) -> list:
            """Many (image, prompt, max_new_tokens) from any number of requests -> one generate."""
            from ..caption import Caption, blip2_generate, caption, is_blip2

            images, prompts, limits = (list(x) for x in zip(*items))
            self.batch_sizes[len(items)] += 1
            if is_blip2(self.vlm):
                return await asyncio.to_thread(blip2_generate, self.vlm.model, self.vlm.processor, images, prompts,
                                               limits, True)
            texts = await asyncio.to_thread(caption, self.vlm, images, prompts, batch_size=len(images),
                                            max_new_tokens=max(limits))
            return [Caption(t, 0, 0, "stop") for t in texts]

        async def _decode(self, sources: list[str]) -> list:
            from ..images import load_image

            def one(source: str):
                if source[:8].lower().startswith(("http://", "https://")) or source.startswith(("/", "~", "file:")):
                    raise _BadRequest("This captioning deployment takes images as data:image/...;base64 URIs or "
                                      "bare base64, not URLs or paths: encode the image and send it inline.",
                                      "invalid_image", "images")
                try:
                    return load_image(source, allow_local=False, max_bytes=self.config.max_image_bytes,
                                      max_pixels=self.config.max_image_pixels)
                except VLMCourseError as e:
                    raise _BadRequest(str(e), "invalid_image", "images") from None

            loop = asyncio.get_running_loop()
            return await asyncio.gather(*(loop.run_in_executor(self.pool, one, s) for s in sources))

        def _limit(self, asked: Optional[int]) -> int:
            if asked is not None and asked > self.config.max_new_tokens:
                raise _BadRequest(f"max_new_tokens {asked} is above this deployment's limit of "
                                  f"{self.config.max_new_tokens}.", "invalid_request", "max_new_tokens")
            return asked or self.config.max_new_tokens

        @api.get("/health")
        async def health(self) -> dict:
            return {"status": "ok", "model": self.vlm.name, "batch_size": self.config.batch_size,
                    "batches": {str(k): v for k, v in sorted(self.batch_sizes.items())}}

        @api.get("/v1/models")
        async def models(self) -> dict:
            return {"object": "list", "data": [{"id": self.vlm.name, "object": "model", "created": 0,
                                                "owned_by": "vlm-course"}]}

        @api.post("/caption")
        async def caption_route(self, body: CaptionRequest) -> dict:
            """Several images, one optional prompt for all: one caption each, in order."""
            from ..caption import is_blip2

            if len(body.images) > self.config.max_images:
                raise _BadRequest(f"The request has {len(body.images)} images; this deployment takes at most "
                                  f"{self.config.max_images}.", "too_many_images", "images")
            limit = self._limit(body.max_new_tokens)
            images = await self._decode(body.images)
            results = await asyncio.gather(*(self.caption_one((im, body.prompt, limit)) for im in images))
            return {"model": self.vlm.name, "captions": [r.text for r in results],
                    "family": "blip-2" if is_blip2(self.vlm) else self.vlm.model.config.model_type}

        @api.post("/v1/chat/completions")
        async def chat_completions(self, body: ChatCompletionRequest) -> dict:
            """OpenAI's format, for one user turn with one image and an optional text prompt."""
            from ..caption import blip2_inputs
            from ..errors import MessagesError

            if body.stream:
                raise _BadRequest("This captioning deployment does not stream; send stream=false (captions are a "
                                  "few tokens).", "unsupported", "stream")
            if (body.temperature or 0) > 0:
                raise _BadRequest("This captioning deployment decodes greedily; send temperature=0 or leave it out.",
                                  "unsupported", "temperature")
            conversation = []
            for message in body.messages:
                parts = [{"type": "text", "text": message.content}] if isinstance(message.content, str) else [
                    {"type": "text", "text": p.text} if p.type == "text" else {"type": "image", "image": p.image_url.url}
                    for p in message.content]
                conversation.append({"role": message.role, "content": parts})
            try:
                source, prompt = blip2_inputs(conversation)
            except MessagesError as e:
                raise _BadRequest(str(e), "invalid_messages", "messages") from None
            (image,) = await self._decode([source])
            result = await self.caption_one((image, prompt, self._limit(body.max_new_tokens)))
            return {"id": f"chatcmpl-{os.urandom(8).hex()}", "object": "chat.completion", "created": int(time.time()),
                    "model": self.vlm.name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                 "finish_reason": result.finish_reason}],
                    "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                              "total_tokens": result.prompt_tokens + result.completion_tokens}}

    return CaptioningDeployment.bind(settings)


def start_captioning(config: CaptioningConfig, host: str = "127.0.0.1", port: int = 8000,
                     num_cpus: Optional[int] = None) -> str:
    """Start (or join) Ray, deploy the captioning app, wait until it is healthy, and return its base URL."""
    from .ray_app import init_ray

    serve = _serve()
    init_ray(num_cpus)  # set RAY_ADDRESS to join an existing cluster instead
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_captioning_app(config), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def stop_captioning() -> None:
    """Tear the deployment down and disconnect from Ray (shutting down a local instance)."""
    import ray

    _serve().shutdown()
    ray.shutdown()
