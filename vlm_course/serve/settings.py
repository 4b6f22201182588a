"""`ServerSettings`: everything an operator can set, in one place.

The command line (`vlm-course serve --help`) and the Ray Serve configuration (`RayServeConfig`) are both
derived from these fields: a new field is a new option everywhere, with the same default and help.
Each field's metadata holds its help text and, where it has one, its lower bound ("ge") and flag name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

DEFAULT_MAX_TOKENS = 128


def option(default: Any, help: str, *, ge: Optional[float] = None, flag: Optional[str] = None, **extra) -> Any:
    """A settings field: its default, help text for the command line, and an optional lower bound."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(**kwargs, metadata={"help": help, "ge": ge, "flag": flag, **extra})


@dataclass
class ServerSettings:
    """Everything an operator can set. The defaults are the safe ones."""

    model: Optional[str] = option(None, "hub id or directory (default: $VLM_COURSE_MODEL or the tiny model)")
    dtype: str = option("auto", "torch dtype of the weights")
    attn: str = option("auto", "attention backend (eager, sdpa, flex_attention, ...)")
    quant: Optional[str] = option(None, "quantization (see vlm-course info)")
    device: Optional[str] = option(None, "cpu, cuda, mps (default: best available)")
    adapter: Optional[str] = option(None, "a LoRA adapter directory (vlm-course finetune) to serve on the model")
    api_key: Optional[str] = option(None, "require 'Authorization: Bearer KEY' (default: $VLM_COURSE_API_KEY, else no key)",
                                    env="VLM_COURSE_API_KEY")
    max_batch_size: int = option(8, "most requests in one batched generate", ge=1)
    max_wait_ms: float = option(10.0, "how long the first request waits for company", ge=0)
    allow_dirs: list[str] = option(list, "allow image paths under DIR (repeatable; default: no local paths)",
                                   flag="--allow-dir", metavar="DIR")
    allow_private_urls: bool = option(False, "allow image URLs on loopback/private addresses (default: refused)")
    max_images: int = option(8, "most images per request", ge=1)
    max_body_bytes: int = option(20_000_000, "largest request body, chunked or not (413 above)", ge=1)
    max_image_bytes: int = option(10_000_000, "largest encoded image (a download, a file, a data URI)", ge=1)
    max_image_pixels: Optional[int] = option(
        None, "most pixels one image may decode to (default: from the processor's image size, 4 M to 40 M)", ge=1)
    max_request_pixels: Optional[int] = option(
        None, "most pixels all images of one request may decode to (default: twice --max-image-pixels)", ge=1)
    url_timeout: float = option(10.0, "seconds for a whole image download: connect, headers and body", ge=0.001)
    default_max_tokens: int = option(DEFAULT_MAX_TOKENS, "max_tokens when a request sends none", ge=1)
    shutdown_grace_s: float = option(5.0, "on SIGTERM, seconds in-flight requests get to finish before they "
                                          "are ended with an error", ge=0)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, bound = getattr(self, f.name), f.metadata.get("ge")
            if bound is not None and value is not None and (isinstance(value, bool) or value < bound):
                raise ValueError(f"ServerSettings.{f.name} must be at least {bound}, got {value!r}")
            if hints[f.name] == list[str]:
                setattr(self, f.name, list(value))


def fields() -> list[tuple[dataclasses.Field, Any]]:
    """Each settings field with its resolved type annotation (the module uses postponed annotations)."""
    hints = typing.get_type_hints(ServerSettings)
    return [(f, hints[f.name]) for f in dataclasses.fields(ServerSettings)]


def base_type(annotation) -> Any:
    """Optional[X] -> X; list[str] stays list[str]."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        return args[0]
    return annotation


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_arguments(parser, skip: tuple[str, ...] = ()) -> None:
    """One command-line option per settings field (`--max-image-bytes` for max_image_bytes, ...)."""
    import os

    for f, annotation in fields():
        if f.name in skip:
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kind, default = base_type(annotation), default_of(f)
        if f.metadata.get("env"):
            default = os.environ.get(f.metadata["env"], default)
        kwargs: dict[str, Any] = {"dest": f.name, "help": f.metadata["help"], "default": default}
        if kind is bool:
            kwargs["action"] = "store_true"
        elif kind == list[str]:
            kwargs.update(action="append", metavar=f.metadata.get("metavar"))
        else:
            kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)


def from_arguments(args) -> ServerSettings:
    return ServerSettings(**{f.name: getattr(args, f.name) for f, _ in fields()})
