"""One way to load an image for a vision-language model: `load_image()`.

Accepted sources, all returning an RGB `PIL.Image.Image`:

- a `PIL.Image.Image` (any mode; transparency is composited on white),
- a local path, as `pathlib.Path` (or any `os.PathLike`) or `str` (`~` is expanded),
- an ``http://`` or ``https://`` URL (through `vlm_course.fetch`: one deadline over the whole download, a byte
  limit, redirects checked hop by hop; ``allow_private_urls=False`` refuses non-public addresses),
- a ``data:image/...;base64,...`` URI,
- a plain base64 string of image bytes,
- `bytes`, `bytearray` or `memoryview` holding an encoded image (PNG, JPEG, ...).

``file://`` URLs are refused on purpose, as transformers' pipelines refuse them: pass the local
path itself (``"/data/cat.png"`` or ``Path("/data/cat.png")``). Every other URL scheme (``ftp://``,
``s3://``, ...) is refused too. A server that loads images named by its clients should call
``load_image(..., allow_local=False)`` so that a request cannot read the server's own files.

Every failure raises `vlm_course.errors.ImageError` (a `ValueError`) whose message says what was
wrong and what to do. Limits guard against huge downloads and decompression bombs: the encoded
size is checked against ``max_bytes`` before decoding, and the pixel count read from the header is
checked against ``max_pixels`` (and charged to a request's ``budget``) before any pixel data is decoded.
``max_side`` decodes no larger than needed: a JPEG at 1/2, 1/4 or 1/8 scale, anything else shrunk
right after decoding, so only small images are kept.

`image_to_data_uri()` goes the other way: an image to a ``data:`` URI, the form the OpenAI chat API
and the course's server accept.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
import urllib.parse
import warnings
from pathlib import Path
from typing import Optional, Union

from PIL import Image, ImageOps, UnidentifiedImageError

from vlm_course.errors import ImageError

__all__ = ["load_image", "image_to_data_uri", "ImageSource", "PixelBudget"]

ImageSource = Union[Image.Image, str, "os.PathLike[str]", bytes, bytearray, memoryview]

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/\-_]+={0,2}$")
_MIN_BASE64_LEN = 32  # shorter strings are treated as paths; no real image encodes that small


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_image(
    source: ImageSource,
    *,
    max_bytes: int = 20_000_000,
    max_pixels: int = 40_000_000,
    timeout: float = 10.0,
    allow_local: bool = True,
    allow_private_urls: bool = True,
    max_side: Optional[int] = None,
    budget: Optional["PixelBudget"] = None,
) -> Image.Image:
    """Load an image from any supported source and return it as an RGB `PIL.Image.Image`.

    Args:
        source: a PIL image, a path (`str` or `pathlib.Path`), an http(s) URL, a
            ``data:image/...;base64,`` URI, a base64 string, or encoded image bytes.
        max_bytes: refuse encoded images (files, downloads, decoded base64) larger than this.
        max_pixels: refuse images whose width x height exceeds this, before decoding pixels.
        timeout: seconds allowed for a whole URL download (connect, headers and body).
        allow_local: if False, refuse local paths (for servers that load client-named images).
        allow_private_urls: if False, refuse URLs whose host is not a public address (loopback, private
            networks, link-local, ...: see `vlm_course.fetch.is_public_address`).
        max_side: decode no larger than this many pixels on the longer side (JPEG decodes at a reduced
            scale; other formats are shrunk right after decoding). None keeps the full size.
        budget: a `PixelBudget` shared by the images of one request: each image's pixels are charged
            from its header, before it is decoded.

    Raises:
        ImageError: with a message saying what was wrong and what to do.
    """
    limits = _Limits(max_pixels, max_side, budget)
    if isinstance(source, Image.Image):
        return _finish(source, limits, origin="the PIL image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("The image bytes are empty. Pass the encoded file contents (PNG, JPEG, ...).")
        _check_bytes(len(data), max_bytes, "the image bytes")
        return _decode(data, limits, origin=f"the image data ({len(data)} bytes)")
    if isinstance(source, os.PathLike):
        if not allow_local:
            raise ImageError("Local file paths are not allowed here. Send the image as a data URI, base64 or an http(s) URL.")
        return _load_path(Path(source), max_bytes=max_bytes, limits=limits)
    if isinstance(source, str):
        return _load_str(source, max_bytes=max_bytes, limits=limits, timeout=timeout, allow_local=allow_local,
                         allow_private_urls=allow_private_urls)
    raise ImageError(
        f"Cannot load an image from a {type(source).__name__} ({_short(repr(source))}). "
        "Pass a PIL image, a file path, an http(s) URL, a data URI, a base64 string or image bytes."
    )


def image_to_data_uri(img: ImageSource, format: str = "PNG") -> str:
    """Encode an image as a ``data:image/...;base64,`` URI (PNG by default, or e.g. ``"JPEG"``).

    `img` may be anything `load_image` accepts; non-PIL sources are loaded first.
    """
    if not isinstance(img, Image.Image):
        img = load_image(img)
    fmt = format.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    Image.init()  # Image.MIME is empty until PIL has registered its plugins
    mime = Image.MIME.get(fmt)
    if mime is None:
        raise ImageError(f"Unknown image format {format!r} for a data URI. Use 'PNG' or 'JPEG'.")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = _to_rgb(img)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError) as exc:
        raise ImageError(f"Could not encode the image as {fmt}: {exc}. Try format='PNG'.") from exc
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


# --------------------------------------------------------------------------- limits


class PixelBudget:
    """Pixels one request may decode in all, charged image by image from the headers (thread-safe)."""

    def __init__(self, total: int):
        self.total, self.spent = total, 0
        self._lock = threading.Lock()

    def charge(self, pixels: int, origin: str) -> None:
        with self._lock:
            if self.spent + pixels > self.total:
                raise ImageError(
                    f"{origin[0].upper()}{origin[1:]} would bring this request's images to "
                    f"{self.spent + pixels:,} pixels, over the limit of {self.total:,} per request. "
                    "Send fewer or smaller images.")
            self.spent += pixels


class _Limits:
    def __init__(self, max_pixels: int, max_side: Optional[int], budget: Optional[PixelBudget]):
        if isinstance(max_side, bool) or (max_side is not None and (not isinstance(max_side, int) or max_side < 1)):
            raise ImageError(f"max_side must be a positive number of pixels or None, got {max_side!r}.")
        self.max_pixels, self.max_side, self.budget = max_pixels, max_side, budget


# --------------------------------------------------------------------------- sources


def _load_str(source: str, *, max_bytes: int, limits: _Limits, timeout: float, allow_local: bool,
              allow_private_urls: bool) -> Image.Image:
    text = source.strip()
    if not text:
        raise ImageError("The image source is an empty string. Pass a file path, an http(s) URL, a data URI or base64.")
    if text[:5].lower() == "data:":
        return _load_data_uri(text, max_bytes=max_bytes, limits=limits)
    match = _SCHEME_RE.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme in ("http", "https"):
            return _load_url(text, max_bytes=max_bytes, limits=limits, timeout=timeout, allow_private=allow_private_urls)
        if scheme == "file":
            raise ImageError(
                f"file:// URLs are not supported ({_short(text)}). "
                "Pass the local path itself, e.g. load_image('/data/cat.png') or load_image(Path(...))."
            )
        raise ImageError(
            f"Unsupported URL scheme '{scheme}://' in {_short(text)}. "
            "Use an http(s) URL, or download the file and pass its local path."
        )
    if allow_local:
        path = Path(text).expanduser()
        if _exists(path):
            return _load_path(path, max_bytes=max_bytes, limits=limits)
    compact = re.sub(r"\s+", "", text)
    if len(compact) >= _MIN_BASE64_LEN and _BASE64_RE.match(compact):
        data = _b64decode(compact, max_bytes=max_bytes, what="The string")
        return _decode(
            data,
            limits,
            origin=f"the base64 string ({len(data)} bytes once decoded)",
            hint="If you meant a file path, no such file exists.",
        )
    if not allow_local:
        raise ImageError(
            f"{_short(text)!r} is not an http(s) URL, a data URI or base64 image data "
            "(local file paths are not allowed here)."
        )
    raise ImageError(
        f"Image file not found: {_short(text, 200)!r}. Check the path (a relative path starts from the "
        "current directory), or pass an http(s) URL, a data URI or base64 image data."
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # name too long, embedded NUL, ...
        return False


def _check_path_text(path: Path) -> None:
    """Refuse names no file system takes, with the reason (os raises ValueError / OSError for them)."""
    text = str(path)
    if "\0" in text:
        raise ImageError(f"The image path {_short(text)!r} contains a NUL character; no file has such a name.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError(f"The image path {_short(text)!r} is not valid text (it holds a lone surrogate).") from None
    if any(len(part.encode()) > 255 for part in path.parts):
        raise ImageError(f"The image path {_short(text)!r} has a name longer than 255 bytes; no file has such a name.")


def _load_path(path: Path, *, max_bytes: int, limits: _Limits) -> Image.Image:
    path = path.expanduser()
    _check_path_text(path)
    shown = _short(str(path), 200)
    if not _exists(path):
        raise ImageError(f"Image file not found: {shown!r}. Check the path (a relative path starts from the current "
                         "directory).")
    if path.is_dir():
        raise ImageError(f"{shown!r} is a directory, not an image file. Pass the path of one image file inside it.")
    try:
        size = path.stat().st_size
        _check_bytes(size, max_bytes, f"the file {shown!r}")
        if size == 0:
            raise ImageError(f"The file {shown!r} is empty (0 bytes). Pass a real image file (PNG, JPEG, ...).")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except ImageError:
        raise
    except OSError as exc:
        raise ImageError(f"Could not read the image file {shown!r}: {exc.strerror or exc}. Check its permissions.") from exc
    _check_bytes(len(data), max_bytes, f"the file {shown!r}")
    return _decode(data, limits, origin=f"the file {shown!r}")


def _load_data_uri(uri: str, *, max_bytes: int, limits: _Limits) -> Image.Image:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageError(
            "The data URI has no ',' separating its header from its data. "
            "Expected the form 'data:image/png;base64,iVBORw0...'."
        )
    params = [p.strip().lower() for p in header[5:].split(";")]
    mime = params[0]
    if mime and not mime.startswith("image/"):
        raise ImageError(
            f"The data URI holds {_short(mime, 40)!r}, not an image. Expected 'data:image/png;base64,...' "
            "(or image/jpeg, image/webp, ...)."
        )
    if "base64" in params[1:]:
        compact = re.sub(r"\s+", "", payload)
        if not compact:
            raise ImageError("The data URI holds no data after the comma. Encode the image bytes with base64.")
        data = _b64decode(compact, max_bytes=max_bytes, what="The data URI's payload")
    else:
        try:
            data = urllib.parse.unquote_to_bytes(payload)
        except UnicodeEncodeError:
            raise ImageError("The data URI's payload is not valid text (it holds a lone surrogate).") from None
        if not data:
            raise ImageError("The data URI holds no data after the comma. Encode the image bytes with base64.")
        _check_bytes(len(data), max_bytes, "the data URI")
    return _decode(data, limits, origin=f"the data URI ({_short(mime, 40) or 'no media type'}, {len(data)} bytes)")


def _load_url(url: str, *, max_bytes: int, limits: _Limits, timeout: float, allow_private: bool) -> Image.Image:
    from .fetch import _short as short_url, fetch

    fetched = fetch(url, timeout=timeout, max_bytes=max_bytes, allow_private=allow_private)
    return _decode(fetched.data, limits, origin=f"the download from {short_url(url)}")


# --------------------------------------------------------------------------- decoding


def _check_bytes(n: int, max_bytes: int, what: str, *, at_least: bool = False) -> None:
    if n > max_bytes:
        size = f"more than {_mb(max_bytes)}" if at_least else _mb(n)
        raise ImageError(
            f"{what[0].upper()}{what[1:]} is too large ({size}; the limit is max_bytes={max_bytes:,}). "
            "Use a smaller image, or raise max_bytes= if you trust the source."
        )


def _b64decode(text: str, *, max_bytes: int, what: str) -> bytes:
    # Base64 grows data by 4/3: refuse before decoding something that would be too large.
    if len(text) * 3 // 4 > max_bytes + 3:
        _check_bytes(len(text) * 3 // 4, max_bytes, f"{what[0].lower()}{what[1:]} once decoded")
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text = text + "=" * (-len(text) % 4) if "=" not in text else text
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(
            f"{what} is not valid base64 ({exc}). Encode the image bytes with base64.b64encode, "
            "or pass a file path or URL instead."
        ) from exc
    if not data:
        raise ImageError(f"{what} decodes to no bytes. Encode the image bytes with base64.")
    _check_bytes(len(data), max_bytes, f"{what[0].lower()}{what[1:]} once decoded")
    return data


def _decode(data: bytes, limits: _Limits, *, origin: str, hint: str = "") -> Image.Image:
    hint = f" {hint}" if hint else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} has too many pixels for Pillow's decompression-bomb guard ({exc}). "
            "Use a smaller image."
        ) from exc
    except UnidentifiedImageError as exc:
        head = data[:16]
        looks_text = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        kind = "text, not an image" if looks_text else "not an image format Pillow can read"
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} is {kind} (it starts with {head!r}). "
            f"Pass a PNG, JPEG, WebP, GIF or BMP image.{hint}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the image's fault
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} is truncated or corrupt and could not be read as an image "
            f"({type(exc).__name__}: {exc}). Re-export or re-download the image.{hint}"
        ) from exc
    return _finish(img, limits, origin=origin)


def _finish(img: Image.Image, limits: _Limits, *, origin: str) -> Image.Image:
    """Check the size from the header, then decode no larger than needed, as RGB."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"{origin[0].upper()}{origin[1:]} has no pixels ({width}x{height}). Pass a non-empty image.")
    if limits.max_side and getattr(img, "format", None) == "JPEG" and max(width, height) > limits.max_side:
        # JPEG decodes at 1/2, 1/4 or 1/8 scale directly: the full-size pixels never exist in memory.
        scale = limits.max_side / max(width, height)
        img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        width, height = img.size
    pixels = width * height
    if pixels > limits.max_pixels:
        bands = len(img.getbands())
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} is {width}x{height} = {pixels:,} pixels (about "
            f"{_mb(pixels * max(bands, 3))} once decoded), over the limit max_pixels={limits.max_pixels:,}. "
            "Resize it first, or raise max_pixels= if you trust the source."
        )
    if limits.budget is not None:
        limits.budget.charge(pixels, origin)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
            if limits.max_side and max(img.size) > limits.max_side:
                img = _shrink(img, limits.max_side)
            return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} has too many pixels for Pillow's decompression-bomb guard ({exc}). "
            "Use a smaller image."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated data, bad chunks, unsupported modes
        raise ImageError(
            f"{origin[0].upper()}{origin[1:]} is truncated or corrupt and could not be decoded "
            f"({type(exc).__name__}: {exc}). Re-export or re-download the image."
        ) from exc


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """A copy that fits in max_side x max_side (aspect kept); the decoded original can be freed at once."""
    if img.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F"):
        img = _to_rgb(img)  # palette and other modes: resample in RGB, not by nearest palette index
    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB copy of `img`; any transparency is composited on a white background."""
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    ) or (img.mode in ("L", "RGB") and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode.startswith("I;16"):
        # 16-bit greyscale (e.g. some PNGs): scale to 8 bits rather than clipping to white.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img.convert("RGB")
