"""Images as the app keeps them: what the user gave and the 28x28 input the network sees.

Pure Python (NumPy + Pillow + the engine's preprocessing), no Streamlit. The only process-wide state
is an LRU cache of preprocessing results keyed by the image bytes' hash (immutable, read-only
arrays) and a cache of data URLs keyed by example id.
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from engine.data.preprocess import ImagePreprocessError, preprocess_image

THUMB_SIDE = 128
"""Side (px) of the stored copy of the original image (shown at 64 CSS px: sharp on HiDPI)."""
MAX_CACHED_URLS = 20_000

Source = Literal["drawing", "upload", "omniglot"]


@dataclass(frozen=True, eq=False)
class Example:
    """One image as the user gave it and as the network sees it (immutable, so it can be shared
    between reruns and compared by identity)."""

    id: str
    source: Source
    name: str
    pixels: np.ndarray  # float32 [28, 28] in [0, 1], ink high, read-only
    original_png: bytes  # small greyscale copy of what the user gave (dark ink on white)
    network_png: bytes  # the 28x28 network input itself (ink bright on black), shown enlarged
    frames: int = 1  # frames in the file given (an animated GIF's first frame is what is used)

    @property
    def original_url(self) -> str:
        """``original_png`` as a data URL: shown without any server-side decoding."""
        return _data_url(self, "original_png")

    @property
    def network_url(self) -> str:
        return _data_url(self, "network_png")


_url_cache: dict[tuple[str, str], str] = {}


def _data_url(example: Example, field_name: str) -> str:
    key = (example.id, field_name)
    url = _url_cache.get(key)
    if url is None:
        url = "data:image/png;base64," + base64.b64encode(getattr(example, field_name)).decode("ascii")
        if len(_url_cache) > MAX_CACHED_URLS:
            _url_cache.clear()
        _url_cache[key] = url
    return url


_CACHE_SIZE = 512
_preprocess_cache: OrderedDict[str, np.ndarray | ImagePreprocessError] = OrderedDict()
_cache_lock = Lock()


def preprocess_cached(data: bytes) -> np.ndarray:
    """:func:`preprocess_image` on encoded bytes, memoised by content hash (errors too)."""
    digest = hashlib.sha256(data).hexdigest()
    with _cache_lock:
        hit = _preprocess_cache.get(digest)
        if hit is not None:
            _preprocess_cache.move_to_end(digest)
    if hit is None:
        try:
            pixels = np.asarray(preprocess_image(data), dtype=np.float32)
            if pixels.shape != (28, 28) or not np.isfinite(pixels).all():
                raise ImagePreprocessError("The image could not be turned into a 28x28 character.")
            pixels = pixels.copy()
            pixels.setflags(write=False)
            hit = pixels
        except ImagePreprocessError as error:
            hit = error
        with _cache_lock:
            _preprocess_cache[digest] = hit
            while len(_preprocess_cache) > _CACHE_SIZE:
                _preprocess_cache.popitem(last=False)
    if isinstance(hit, ImagePreprocessError):
        raise hit
    return hit


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def network_png(pixels: np.ndarray) -> bytes:
    """The network's 28x28 input as a greyscale PNG, ink bright on black (the page enlarges it with
    visible pixels)."""
    grey = np.clip(np.rint(np.asarray(pixels, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return _png(Image.fromarray(grey))


def original_png(data: bytes) -> bytes:
    """A small display copy of an uploaded/drawn image (transparency flattened onto white).

    Only called after :func:`preprocess_cached` accepted the bytes, so size and format are sane.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
        image = ImageOps.exif_transpose(image) or image
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        if image.mode in ("RGBA", "LA", "PA", "P"):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        colours = image.convert("RGB")
        grey = colours.convert("L")
        # Keep colour only when there is some: greyscale PNGs are a third of the size.
        spread = np.asarray(colours, dtype=np.int16)
        if spread.size and int(np.abs(spread - spread.mean(axis=-1, keepdims=True)).max()) > 12:
            return _png(colours)
        return _png(grey)


def inverted_png(pixels: np.ndarray) -> bytes:
    """Display copy of a dataset image: dark ink on white, smoothly enlarged."""
    grey = np.clip(np.rint((1.0 - np.asarray(pixels, dtype=np.float32)) * 255.0), 0, 255).astype(np.uint8)
    return _png(Image.fromarray(grey).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BICUBIC))


def frame_count(data: bytes) -> int:
    """Frames in an encoded image (animated GIF, APNG, multi-page TIFF); 1 when unknown."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return max(1, int(getattr(image, "n_frames", 1)))
    except Exception:  # noqa: BLE001 - only a note depends on it; the image itself was accepted
        return 1


def example_from_bytes(data: bytes, source: Source, name: str) -> Example:
    """Preprocess an encoded image; raises :class:`ImagePreprocessError` with a user-facing message."""
    pixels = preprocess_cached(data)
    try:
        original = original_png(data)
    except Exception:  # noqa: BLE001 - the network view is what matters; show it instead
        original = inverted_png(pixels)
    return Example(id=uuid.uuid4().hex, source=source, name=name, pixels=pixels, original_png=original,
                   network_png=network_png(pixels), frames=frame_count(data) if source == "upload" else 1)


def example_from_pixels(pixels: np.ndarray, source: Source, name: str) -> Example:
    """A dataset image that is already a 28x28 network input."""
    array = np.asarray(pixels, dtype=np.float32).reshape(28, 28).copy()
    array.setflags(write=False)
    return Example(id=uuid.uuid4().hex, source=source, name=name, pixels=array, original_png=inverted_png(array),
                   network_png=network_png(array))
