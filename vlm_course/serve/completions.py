"""POST /v1/chat/completions in steps a reader can follow, cheapest first:

1. `read_request`: the body (within the size limit, chunked or not), its Content-Type, its JSON and
   its schema, each refused with a 4xx that says what was wrong;
2. `plan`: the model name, fields this server does not implement, sampling options, and the
   prompt's length against the context (a 1 MB prompt is refused here, before any tokenizing);
3. `to_conversation`: OpenAI messages -> a transformers conversation with its images loaded under
   the image policy;
4. `Completion`: the job handed to the batching worker and the events that come back, watched for a
   client that leaves and for the server shutting down; `.json()` or `.sse()` shapes the answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from ..errors import GenerationError, MessagesError
from .batching import ContextLengthError, Job, check_context, context_length
from .errors import APIError, from_course_error, shutting_down, validation_error
from .image_policy import ImagePolicy
from .schemas import ChatCompletionRequest
from .settings import ServerSettings

POLL_S = 0.25  # how often a waiting handler checks for a client that left or a server that stops


# --------------------------------------------------------------------------- 1. the request


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` (a chunked body announces no length)."""
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise APIError(413, f"The request body is larger than this server's limit of {limit:,} bytes. "
                           "Send smaller images (or fewer).", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_request(request, settings: ServerSettings) -> ChatCompletionRequest:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        shown = f"{content_type[:40]!r}" if content_type else "none"
        raise APIError(400, f"Send the request as JSON with the header 'Content-Type: application/json' (got {shown}).",
                       "invalid_request")
    raw = await read_body(request, settings.max_body_bytes)
    try:
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise APIError(400, f"The request body is not valid JSON: {str(e)[:200]}.", "invalid_request") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The request body must be a JSON object, got {type(data).__name__}.", "invalid_request")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors(include_url=False)) from None
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply.", "invalid_request") from None


# --------------------------------------------------------------------------- 2. the plan


@dataclass
class Plan:
    max_new_tokens: int
    explicit: bool  # max_tokens came from the client (else: the server's default, shortened to fit)
    temperature: float
    top_p: float


def plan(vlm, body: ChatCompletionRequest, settings: ServerSettings, model_name: str) -> Plan:
    from ..chat import generation_options

    if body.model not in (None, "", "default", model_name):
        raise APIError(404, f"The model {body.model!r} does not exist on this server; it serves {model_name!r} "
                       "(see GET /v1/models).", "model_not_found", param="model")
    unsupported = body.unsupported()
    if unsupported:
        name, why = unsupported
        raise APIError(400, f"The parameter {name!r} is not supported by this server: {why}.", "unsupported_parameter",
                       param=name)
    explicit = body.max_new_tokens is not None
    max_new_tokens = body.max_new_tokens or settings.default_max_tokens
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    try:  # seed is applied by the worker, right before its generate
        generation_options(vlm, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=body.stop)
    except GenerationError as e:
        raise APIError(400, str(e), "invalid_request") from None
    vocab = len(vlm.tokenizer)
    for token in body.logit_bias or {}:
        if token >= vocab:
            raise APIError(400, f"logit_bias names token {token}, but the vocabulary has {vocab} tokens.",
                           "invalid_request", param="logit_bias")
    return Plan(max_new_tokens, explicit, temperature, top_p)


@lru_cache(maxsize=8)
def _longest_token_bytes(tokenizer) -> int:
    """An upper bound on the bytes of text one token covers (token strings are at least as long)."""
    return max(len(token.encode("utf-8", "replace")) for token in tokenizer.get_vocab())


def image_tokens_per_image(vlm) -> int:
    processor = vlm.processor
    per = getattr(processor, "image_seq_len", 0) or 0
    splitting = getattr(getattr(processor, "image_processor", None), "do_image_splitting", False)
    return per * (5 if splitting else 1)


async def check_prompt_length(vlm, body: ChatCompletionRequest, p: Plan) -> None:
    """Refuse a prompt that cannot fit the context, before any model work. First a bound that needs no
    tokenizer (a token covers at most N bytes of text), then the text's tokens plus the images' tokens:
    both count less than the real prompt, so nothing that fits is refused; the worker checks exactly."""
    context = context_length(vlm)
    if context is None:
        return
    texts = [m.content if isinstance(m.content, str) else "".join(part.text for part in m.content if part.type == "text")
             for m in body.messages]
    n_images = sum(1 for m in body.messages if not isinstance(m.content, str) for part in m.content
                   if part.type == "image_url")
    images = n_images * image_tokens_per_image(vlm)
    n_bytes = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    at_least = images + n_bytes // _longest_token_bytes(vlm.tokenizer)
    try:
        check_context(at_least, p.max_new_tokens, context, p.explicit)
        if n_bytes:
            tokens = await asyncio.to_thread(
                lambda: sum(len(vlm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t))
            check_context(images + tokens, p.max_new_tokens, context, p.explicit)
    except ContextLengthError as e:
        raise APIError(400, str(e), e.code, param=e.param) from None
    except (TypeError, ValueError):  # text the tokenizer cannot read: validate() says why, next
        pass


# --------------------------------------------------------------------------- 3. the conversation


def count_images(body: ChatCompletionRequest) -> int:
    return sum(1 for m in body.messages if not isinstance(m.content, str) for p in m.content if p.type == "image_url")


async def to_conversation(body: ChatCompletionRequest, policy: ImagePolicy, max_images: int) -> list[dict]:
    """OpenAI messages -> a validated transformers conversation with images loaded (one at a time, each
    charged to the request's pixel budget from its header before it is decoded)."""
    from ..messages import validate

    n_images = count_images(body)
    if n_images > max_images:
        raise APIError(400, f"The request has {n_images} images; this server takes at most {max_images} "
                       "per request.", "too_many_images", param="messages")
    budget = policy.budget()
    conversation = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        if isinstance(message.content, str):  # Idefics2's template drops plain strings: make it a part
            parts = [{"type": "text", "text": message.content}]
        else:
            parts = []
            for part in message.content:
                if part.type == "text":
                    parts.append({"type": "text", "text": part.text})
                else:
                    parts.append({"type": "image", "image": await policy.load(part.image_url.url, budget)})
        conversation.append({"role": role, "content": parts})
    try:
        return validate(conversation)
    except MessagesError as e:
        raise APIError(400, str(e), "invalid_messages", param="messages") from None


# --------------------------------------------------------------------------- 4. the completion


def usage_json(usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "seconds": round(usage.seconds, 6),
            "time_to_first_token": None if usage.time_to_first_token is None else round(usage.time_to_first_token, 6),
            "prompt_tokens_per_second": usage.prefill_tokens_per_second,
            "completion_tokens_per_second": usage.decode_tokens_per_second}


class Completion:
    """One request's job in the batching worker, and the events it sends back."""

    def __init__(self, batcher, body: ChatCompletionRequest, p: Plan, conversation: list[dict], model_name: str,
                 request, stopping: asyncio.Event):
        self.body, self.model_name, self.request, self.stopping = body, model_name, request, stopping
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

        def emit(event):  # called from the worker thread
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        self.job = Job(conversation, emit, max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_p=p.top_p,
                       seed=body.seed, stops=body.stop, logit_bias=body.logit_bias, stream=bool(body.stream),
                       top_k=body.top_k, frequency_penalty=body.frequency_penalty or 0.0,
                       presence_penalty=body.presence_penalty or 0.0, logprobs=bool(body.logprobs),
                       top_logprobs=body.top_logprobs or 0, max_tokens_explicit=p.explicit)
        batcher.submit(self.job)

    def cancel(self) -> None:
        self.job.cancel.set()

    async def next_event(self) -> tuple:
        """The worker's next event; raises APIError when the client has left or the server stops."""
        while True:
            if self.stopping.is_set():  # checked at every event too: a busy stream never waits long
                self.cancel()
                raise shutting_down()
            try:
                return await asyncio.wait_for(self.events.get(), timeout=POLL_S)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.cancel()
                    raise APIError(499, "The client closed the request.", "client_closed") from None

    async def first(self) -> tuple:
        try:
            event = await self.next_event()
        except BaseException:
            self.cancel()
            raise
        if event[0] == "error":
            raise from_course_error(event[1], event[2])
        return event

    async def json(self, first: tuple) -> dict:
        event = first
        try:
            while event[0] == "delta":
                event = await self.next_event()
        finally:
            self.cancel()  # no-op when finished; stops the row if this handler is cancelled
        if event[0] == "error":
            raise from_course_error(event[1], event[2])
        result = event[1]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason,
                             "logprobs": {"content": result.logprobs} if result.logprobs is not None else None}],
                "usage": usage_json(result.usage)}

    def chunk(self, delta: dict, finish_reason=None, usage=None, choices=True, logprobs=None) -> str:
        data: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model_name, "choices": []}
        if choices:
            data["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                "logprobs": {"content": logprobs} if logprobs is not None else None}]
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n"

    async def sse(self, first: tuple):
        """Server-sent events; every stream ends with [DONE], after an error event if it ended badly."""
        include_usage = bool(self.body.stream_options and self.body.stream_options.include_usage)
        event = first
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            while event[0] == "delta":
                if event[1] or event[2]:
                    yield self.chunk({"content": event[1]}, logprobs=event[2])
                event = await self.next_event()
            if event[0] == "error":
                yield f"data: {json.dumps(from_course_error(event[1], event[2]).body())}\n\n"
            else:
                result = event[1]
                yield self.chunk({}, finish_reason=result.finish_reason)
                if include_usage:
                    yield self.chunk({}, usage=usage_json(result.usage), choices=False)
            yield "data: [DONE]\n\n"
        except APIError as e:  # the server is stopping (a client that left reads nothing more)
            yield f"data: {json.dumps(e.body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # the client hung up (or we are done): stop this row's generation
