"""The request bodies the server accepts: OpenAI's chat-completions format for vision.

    {"model": "tiny-idefics2",
     "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
         {"type": "text", "text": "What do we see in this image?"}]}],
     "max_tokens": 32, "stream": true}

Pydantic checks the shape strictly (`"stream": "yes"` and `"max_tokens": true` are refused; `null` means
"the default" for every optional field, as in OpenAI's API). An unknown field is refused with a 400
naming it, as OpenAI's own server does: nothing a client sends is ignored silently. Fields OpenAI has
and this server does not implement (`tools`, `response_format` other than text, `n` > 1, ...) are
declared so that the 400 can say so (`UNSUPPORTED`). `vlm_course.serve.completions` turns a valid
request into a transformers conversation.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..chat import GREEDY_BELOW, MAX_NEW_TOKENS_LIMIT


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ImageURL(Strict):
    url: str = Field(min_length=1, description="data:image/...;base64,..., an http(s) URL, or a path the operator allows")
    detail: Optional[Literal["auto", "low", "high"]] = None  # accepted for compatibility; the processor decides


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: Union[str, list[ContentPart]]
    name: Optional[str] = None


class StreamOptions(Strict):
    include_usage: Optional[bool] = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # json_schema etc. arrive here, and are refused
    type: str


# Declared so that a request using them gets a 400 that names them (never silently ignored).
UNSUPPORTED = {
    "tools": "tool calling is not implemented: this server's models were not trained for it",
    "tool_choice": "tool calling is not implemented",
    "functions": "function calling is not implemented",
    "function_call": "function calling is not implemented",
    "parallel_tool_calls": "tool calling is not implemented",
    "audio": "audio output is not implemented",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "web search is not implemented",
    "reasoning_effort": "these models do not reason in a separate channel",
}


class ChatCompletionRequest(Strict):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)  # the newer name
    temperature: Optional[float] = Field(default=None, ge=0, le=2)  # None: OpenAI's default, 1; send 0 for greedy
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    top_k: Optional[int] = Field(default=None, ge=-1)  # vLLM's and llama.cpp's extension; -1 or 0: off
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: Optional[bool] = None
    stream_options: Optional[StreamOptions] = None
    n: Optional[int] = Field(default=None, ge=1)
    logit_bias: Optional[dict[str, float]] = None  # token id (as a string) -> bias in [-100, 100]
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(default=None, ge=-2, le=2)
    response_format: Optional[ResponseFormat] = None
    modalities: Optional[list[str]] = None
    user: Optional[str] = None  # an end-user id; kept in no log
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    tools: Optional[Any] = None
    tool_choice: Optional[Any] = None
    functions: Optional[Any] = None
    function_call: Optional[Any] = None
    parallel_tool_calls: Optional[Any] = None
    audio: Optional[Any] = None
    prediction: Optional[Any] = None
    web_search_options: Optional[Any] = None
    reasoning_effort: Optional[Any] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops or None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if v is None:
            return v
        if len(v) > 300:
            raise ValueError("logit_bias may name at most 300 tokens")
        for key, bias in v.items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids written as strings, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {bias!r}")
        return {int(k): float(b) for k, b in v.items()}

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        # chat treats these as greedy too; normalising here lets the batcher group them with greedy requests
        return None if v is None else 0.0 if v < GREEDY_BELOW else v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        if v is not None and not 0 <= v < 2**63:
            raise ValueError("seed must be a non-negative 64-bit integer")
        return v

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    def unsupported(self) -> Optional[tuple[str, str]]:
        """(parameter, why) for the first field this server cannot honour, or None."""
        for name, why in UNSUPPORTED.items():
            if getattr(self, name) is not None:
                return name, why
        if self.n is not None and self.n > 1:
            return "n", "this server returns one choice per request: send n=1 (or leave it out) and repeat the request"
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format", (f"response_format {self.response_format.type!r} is not implemented "
                                       "(only {'type': 'text'})")
        if self.modalities is not None and any(m != "text" for m in self.modalities):
            return "modalities", "this server answers in text only"
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed with stream: true"
        return None
