"""Which images a request may name, how they are fetched, and how much decoding they may cost.

    policy = ImagePolicy.for_model(settings, vlm)
    image = await policy.load(url, budget)          # an RGB PIL image no larger than the processor uses

- data URIs always; http(s) URLs through `vlm_course.fetch` (one deadline, pinned addresses, no
  private addresses unless the operator allows them); local paths only under `--allow-dir`.
- Images decode no larger than the processor will use: JPEG at a reduced scale, others shrunk right
  after decoding, so a request holds small images while it waits for the model.
- A pixel budget per image and per request, both sized from the processor, is charged from each
  image's header before it is decoded; and at most `DECODERS` images decode at once in the whole
  server, so concurrent requests cannot multiply the peak.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import ImageError
from ..fetch import FetchError, fetch
from ..images import PixelBudget, load_image
from .errors import APIError
from .settings import ServerSettings

DECODERS = 2  # images decoding at once in the whole server (each may briefly hold its full-size pixels)
FETCHERS = 16  # downloads at once (threads that mostly wait on the network)
MIN_IMAGE_PIXELS, MAX_IMAGE_PIXELS = 4_000_000, 40_000_000


def processor_side(vlm) -> Optional[int]:
    """The most pixels across a side the processor uses: its longest edge, twice that with image splitting
    possible (each half of the image is then resized to the longest edge)."""
    image_processor = getattr(getattr(vlm, "processor", None), "image_processor", None)
    size = getattr(image_processor, "size", None)
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)  # a dict or a SizeDict
    edge = get("longest_edge") or get("height") or get("shortest_edge")
    return 2 * int(edge) if edge else None


@dataclass
class ImagePolicy:
    settings: ServerSettings
    max_side: Optional[int]  # decode no larger than this
    max_image_pixels: int
    max_request_pixels: int
    network: Optional[dict] = None  # the fetcher's connect / resolve / allowed (tests: loopback only, no DNS)

    @classmethod
    def for_model(cls, settings: ServerSettings, vlm, network: Optional[dict] = None) -> "ImagePolicy":
        side = processor_side(vlm)
        # 16 x what the processor uses, within [4 M, 40 M]: room for photos, none for bombs.
        derived = MAX_IMAGE_PIXELS if side is None else min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_PIXELS, 16 * side * side))
        per_image = settings.max_image_pixels or derived
        per_request = settings.max_request_pixels or 2 * per_image
        return cls(settings, side, per_image, per_request, network)

    def budget(self) -> PixelBudget:
        return PixelBudget(self.max_request_pixels)

    def describe(self) -> dict:
        return {"max_side": self.max_side, "max_image_pixels": self.max_image_pixels,
                "max_request_pixels": self.max_request_pixels}

    async def load(self, url: str, budget: PixelBudget):
        """An image_url part's url -> RGB PIL image, under this policy. Raises APIError (400)."""
        loop = asyncio.get_running_loop()
        limits = dict(max_bytes=self.settings.max_image_bytes, max_pixels=self.max_image_pixels,
                      max_side=self.max_side, budget=budget)
        lowered = url[:16].lower()
        try:
            if lowered.startswith("data:"):
                source = url
            elif lowered.startswith(("http://", "https://")):
                source = await loop.run_in_executor(_FETCH_POOL, self._download, url)
            elif lowered.startswith("file://") or url.startswith(("/", "~")):
                source = self.allowed_path(url)
            else:
                raise APIError(400, f"Unsupported image url {_short(url)}: send a data:image/...;base64 URI, an "
                               "http(s) URL, or (if the operator allows a directory) a local path.",
                               "invalid_image_url", param="messages")
            return await loop.run_in_executor(_DECODE_POOL, lambda: load_image(source, allow_local=True, **limits))
        except FetchError as e:
            raise APIError(400, str(e), e.code, param="messages") from None
        except ImageError as e:
            raise APIError(400, str(e), "invalid_image", param="messages") from None

    def _download(self, url: str) -> bytes:
        return fetch(url, timeout=self.settings.url_timeout, max_bytes=self.settings.max_image_bytes,
                     allow_private=self.settings.allow_private_urls, **(self.network or {})).data

    def allowed_path(self, url: str) -> Path:
        raw = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url[:7].lower() == "file://" else url
        if not self.settings.allow_dirs:
            raise APIError(400, "Local image paths are not allowed on this server (the operator can allow a "
                           "directory with --allow-dir). Send the image as a data URI or an http(s) URL.",
                           "path_not_allowed", param="messages")
        try:
            path = Path(raw).expanduser().resolve()  # resolves '..' and symlinks before the check
        except (OSError, ValueError, RuntimeError) as e:  # NUL, a name too long, a symlink loop
            raise APIError(400, f"The image path {_short(raw)} is not a usable path ({type(e).__name__}).",
                           "path_not_allowed", param="messages") from None
        for allowed in self.settings.allow_dirs:
            if path.is_relative_to(Path(allowed).expanduser().resolve()):
                return path
        raise APIError(400, f"The image path {_short(raw)} is outside the directories this server allows.",
                       "path_not_allowed", param="messages")


def _short(text: str, limit: int = 80) -> str:
    shown = ascii(text) if not text.isprintable() else repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


_FETCH_POOL = ThreadPoolExecutor(FETCHERS, thread_name_prefix="vlm-course-fetch")
_DECODE_POOL = ThreadPoolExecutor(DECODERS, thread_name_prefix="vlm-course-decode")
