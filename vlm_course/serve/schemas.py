"""The request bodies the server accepts: OpenAI's chat-completions format for vision.

    {"model": "tiny-idefics2",
     "messages": [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
         {"type": "text", "text": "What do we see in this image?"}]}],
     "max_tokens": 32, "stream": true}

Pydantic checks the shape (types, ranges, roles); `vlm_course.serve.app` turns a valid request into
a transformers conversation. Unknown fields are ignored, as OpenAI's own server ignores them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..chat import GREEDY_BELOW, MAX_NEW_TOKENS_LIMIT


class ImageURL(BaseModel):
    url: str = Field(min_length=1, description="data:image/...;base64,..., an http(s) URL, or a path the operator allows")
    detail: Optional[Literal["auto", "low", "high"]] = None  # accepted for compatibility; the processor decides


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[ContentPart]]
    name: Optional[str] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1, le=MAX_NEW_TOKENS_LIMIT)  # the newer name
    temperature: float = Field(default=1.0, ge=0, le=2)  # OpenAI's default is 1; send 0 for greedy
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    logit_bias: Optional[dict[str, float]] = None  # token id (as a string) -> bias in [-100, 100]
    user: Optional[str] = None

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
        return 0.0 if v < GREEDY_BELOW else v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        if v is not None and not 0 <= v < 2**63:
            raise ValueError("seed must be a non-negative 64-bit integer")
        return v

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens
