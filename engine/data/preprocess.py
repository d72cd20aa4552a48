"""Turn any user image (canvas drawing, upload, phone photo) into an Omniglot-like 28x28.

Models only ever saw Omniglot: 105x105 binary drawings made with a ~5 px round pen,
characters about 67 px across, sitting slightly up-left of centre, then resized to
28x28 by :func:`engine.data.frames.omniglot_to_28`. User images differ in almost
every respect (colour, polarity, transparency, lighting, resolution, pen width,
size and position), so :func:`preprocess_image` normalises all of them:

1. decode safely (size checked *before* the raster is decoded), EXIF-rotate,
   shrink to at most ``WORK_MAX_SIDE`` pixels;
2. compute an "ink signal" in [0, 1]: alpha when strokes live in the alpha channel,
   otherwise colour divided by a local paper estimate (a grey-level closing a few
   strokes wide: removes gradients and shadows), with the polarity chosen so the ink
   is the minority;
3. threshold (Otsu), drop specks (and, in photos, whatever touches the image edge),
   crop to the ink;
4. thin the strokes to a 1-px skeleton and re-draw it with Omniglot's pen into a
   105x105 frame at Omniglot's typical size and position;
5. resize with :func:`omniglot_to_28` and quantise to uint8 levels.

The dataset goes through this same function (``engine.data.omniglot``'s ``canonical`` pipeline), so
training, evaluation and the app give the network one distribution.

The constants below were measured on 3,000 random Omniglot drawings (see
``tests/test_preprocess.py`` for the checks against the real data).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from engine.data.frames import SOURCE_SIZE, from_uint8, omniglot_to_28, to_uint8

MAX_PIXELS = 50_000_000
"""Largest accepted image (width x height), checked before decoding the raster."""
WORK_MAX_SIDE = 1024
"""Images are shrunk to at most this side first: plenty for a 105 px target, and fast."""

FRAME = SOURCE_SIZE
"""Side of the Omniglot-like frame the character is drawn into (105)."""
TARGET_MAX_SIDE = 67.0
"""Median of max(bbox height, bbox width) of Omniglot ink in the 105 frame (p5-p95: 43-88)."""
TARGET_CENTRE = (50.0, 51.0)
"""Median bbox centre (row, col) of Omniglot ink in the 105 frame (frame centre is 52)."""
PEN_RADIUS = 2.5
"""Omniglot's pen: horizontal/vertical stroke cross-sections are 5 px (45% of runs)."""

MIN_CONTRAST = 0.15
"""Ink must differ from the background by at least this fraction, else it is noise."""
MIN_THRESHOLD = 0.12
"""Lower bound on the Otsu threshold of the ink signal (guards near-blank images)."""
MIN_INK_PIXELS = 4
"""Fewer ink pixels than this (after removing specks) means there is no character."""
SPECK_AREA_FRACTION = 2e-5
"""Components smaller than this fraction of the image are noise specks."""

_MIN_BACKGROUND = 0.2
"""Background levels below this are treated as this when normalising contrast."""
_NOISE_LEVEL = 0.004
"""Background noise above this (about 1/255) marks a photo/scan rather than a canvas."""
_MAX_INK_FRACTION = 0.5
"""Ink is the minority: a mask covering more than this means the separation failed."""
_BG_SIDE = 64
"""Resolution of the background (illumination) estimate."""
_THIN_STROKE_PX = 4.0
"""Strokes are resampled to about this width before thinning (fast and robust)."""
_THIN_MIN_SIDE, _THIN_MAX_SIDE = 134, 512
"""Range of the crop's longer side while thinning: enough detail, bounded cost."""
_BLOB_WIDTH_RATIO = 0.33
"""Ink whose stroke width (2A/P) is this fraction of its extent is a dot (disk: 0.39, dash: 0.25)."""
_MAX_BLOB_GROWTH = 1.5
"""The redrawn character may exceed ``TARGET_MAX_SIDE`` / (input ink extent) by at most this."""


class ImagePreprocessError(ValueError):
    """Base class: the image cannot be turned into a character (message is user-facing)."""


class NoInkError(ImagePreprocessError):
    """The image is blank, uniform, or holds only a few noise pixels."""


class UnreadableImageError(ImagePreprocessError):
    """The bytes are not an image, or the image is truncated/corrupt."""


class ImageTooLargeError(ImagePreprocessError):
    """The image has more pixels than :data:`MAX_PIXELS`."""


# --------------------------------------------------------------------------- decoding


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableImageError("The image is empty (zero width or height).")
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(
            f"The image is too large ({width}x{height} pixels); "
            f"please use one under {MAX_PIXELS // 1_000_000} megapixels."
        )


def _open_bytes(data: bytes) -> Image.Image:
    """Lazily open encoded bytes; only the header is read, so the size check is cheap."""
    try:
        im = Image.open(io.BytesIO(data))  # header only; Pillow refuses > 2x MAX_IMAGE_PIXELS here
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"The image is too large; please use one under {MAX_PIXELS // 1_000_000} megapixels."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImageError("This file is not a readable image (PNG, JPEG, ...).") from exc
    _check_size(*im.size)
    if im.format == "JPEG":
        im.draft(None, (WORK_MAX_SIDE, WORK_MAX_SIDE))  # decode at reduced scale: much faster
    return im


def _load_pil(im: Image.Image) -> Image.Image:
    """Force decoding (errors become user-facing) and apply EXIF orientation."""
    _check_size(*im.size)
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError("The image is too large.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        raise UnreadableImageError("The image is truncated or corrupt.") from exc
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not reject a good image
        pass
    return im


_TO_RGB = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_TO_RGBA = {"P", "PA", "RGBa"}
_TO_F = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def _pil_to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """PIL image -> (channels [H, W, C] float32 in [0, 1], alpha [H, W] or None), shrunk."""
    mode = im.mode
    if mode == "1":
        im = im.convert("L")
    elif mode in _TO_RGBA:
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in _TO_RGB:
        im = im.convert("RGB")
    elif mode in _TO_F:
        im = im.convert("F")
    elif mode not in {"L", "LA", "RGB", "RGBA"}:
        im = im.convert("RGBA")
    factor = math.ceil(max(im.size) / WORK_MAX_SIDE)
    if factor > 1:
        im = im.reduce(factor)  # box average; premultiplies alpha for LA/RGBA
    arr = np.asarray(im, dtype=np.float32)
    if im.mode == "F":
        return _normalise_range(arr)[..., None], None
    arr = arr / np.float32(255.0)
    if arr.ndim == 2:
        return arr[..., None], None
    if im.mode in {"LA", "RGBA"}:
        return arr[..., :-1], arr[..., -1]
    return arr, None


def _normalise_range(arr: np.ndarray) -> np.ndarray:
    """Map integer/float intensities of unknown range (16-bit, float) into [0, 1]."""
    arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(arr.max()) if arr.size else 0.0
    lo = float(arr.min()) if arr.size else 0.0
    if lo >= 0.0 and hi <= 1.0:
        return arr
    if lo >= 0.0 and hi <= 255.0:
        return arr / np.float32(255.0)
    if lo >= 0.0 and hi <= 65535.0:
        return arr / np.float32(65535.0)
    return (arr - lo) / np.float32(max(hi - lo, 1e-12))


def _array_to_arrays(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """NumPy image ([H, W], [H, W, 1-4] or [1, H, W]) -> (channels, alpha), shrunk."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] == 1 and a.shape[-1] not in (1, 2, 3, 4):
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise UnreadableImageError(f"Unsupported image array shape {tuple(np.shape(arr))}.")
    _check_size(a.shape[1], a.shape[0])
    if a.dtype == bool:
        f = a.astype(np.float32)
    elif a.dtype == np.uint8:
        f = a.astype(np.float32) / np.float32(255.0)
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / np.float32(65535.0)
    elif np.issubdtype(a.dtype, np.number):
        f = _normalise_range(a)
    else:
        raise UnreadableImageError(f"Unsupported image array dtype {a.dtype}.")
    f = np.clip(f, 0.0, 1.0)
    factor = math.ceil(max(f.shape[:2]) / WORK_MAX_SIDE)
    if factor > 1:
        if f.shape[-1] in (2, 4):  # premultiply so transparent colour does not bleed in
            f = np.concatenate([f[..., :-1] * f[..., -1:], f[..., -1:]], axis=-1)
        f = np.stack([_box_reduce(f[..., c], factor) for c in range(f.shape[-1])], axis=-1)
        if f.shape[-1] in (2, 4):
            f[..., :-1] /= np.maximum(f[..., -1:], 1e-6)
            f = np.clip(f, 0.0, 1.0)
    if f.shape[-1] in (2, 4):
        return f[..., :-1], f[..., -1]
    return f, None


def _box_reduce(channel: np.ndarray, factor: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).reduce(factor))


def load_image_arrays(
    image: Image.Image | bytes | bytearray | memoryview | np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Any supported input -> (colour/grey channels [H, W, C], alpha [H, W] or None) in [0, 1]."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _pil_to_arrays(_load_pil(_open_bytes(bytes(image))))
    if isinstance(image, Image.Image):
        return _pil_to_arrays(_load_pil(image))
    if isinstance(image, np.ndarray):
        return _array_to_arrays(image)
    raise UnreadableImageError(f"Unsupported image type {type(image).__name__}.")


# --------------------------------------------------------------------------- ink signal


def _resize_float(channel: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a float 2-D array to (width, height) with Pillow's float ('F') path."""
    im = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
    return np.asarray(im.resize(size, resample), dtype=np.float32)


def _low_res(channel: np.ndarray) -> np.ndarray:
    """Box-shrink so the longer side is at most ``_BG_SIDE`` (never enlarges)."""
    h, w = channel.shape
    scale = min(1.0, _BG_SIDE / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return channel if size == (w, h) else _resize_float(channel, size, Image.Resampling.BOX)


def _rank_filter(small: np.ndarray, quantile: float) -> np.ndarray:
    """Local quantile over a window ~23% of the image side (ink-robust background)."""
    size = max(3, int(round(0.23 * max(small.shape))) | 1)
    rank = min(size * size - 1, int(quantile * size * size))
    im = Image.fromarray(np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8))
    out = im.filter(ImageFilter.RankFilter(size, rank))
    out = out.filter(ImageFilter.GaussianBlur(radius=size / 4.0))
    return np.asarray(out, dtype=np.float32) / np.float32(255.0)


def _upsample(small: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if small.shape == shape:
        return small
    return _resize_float(small, (shape[1], shape[0]), Image.Resampling.BILINEAR)


def _ink_is_dark(grey: np.ndarray) -> bool:
    """Polarity: ink is the minority, so it deviates strongly from the *local median*."""
    small = _low_res(grey)
    median = _upsample(_rank_filter(small, 0.5), grey.shape)
    resid = grey - median
    dark = float(np.clip(-resid - 0.1, 0.0, None).sum())
    light = float(np.clip(resid - 0.1, 0.0, None).sum())
    return dark >= light


def _alpha_holds_ink(alpha: np.ndarray | None) -> bool:
    """Strokes on a transparent canvas: both kinds present, opaque pixels the minority."""
    if alpha is None or alpha.min() > 0.5 or alpha.max() < 0.5:
        return False
    return float((alpha > 0.5).mean()) < 0.5


def _composite(channels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Transparent = background: fill with the median colour of the opaque pixels."""
    opaque = alpha > 0.5
    fill = np.median(channels[opaque], axis=0) if opaque.any() else np.ones(channels.shape[-1])
    a = alpha[..., None]
    return channels * a + fill.astype(np.float32) * (1.0 - a)


def _running_max(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Max over a centred window of odd length ``k`` along ``axis`` (van Herk / Gil-Werman, O(1)/px)."""
    if k <= 1:
        return a
    # filtered axis first, so each accumulate step is one long vectorised row operation
    moved = np.ascontiguousarray(np.moveaxis(a, axis, 0))
    n, r = moved.shape[0], k // 2
    total = -(-(n + k - 1) // k) * k
    widths = [(r, total - n - r)] + [(0, 0)] * (moved.ndim - 1)
    padded = np.pad(moved, widths, mode="edge")
    blocks = padded.reshape(total // k, k, *padded.shape[1:])
    prefix = np.maximum.accumulate(blocks, axis=1).reshape(padded.shape)
    suffix = np.maximum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(padded.shape)
    out = np.maximum(suffix[:n], prefix[k - 1 : k - 1 + n])
    return np.moveaxis(out, 0, axis)


def closing(image: np.ndarray, k: int) -> np.ndarray:
    """Grey-level closing with a k x k square: removes dark features narrower than k.

    Used as the paper estimate: ink strokes vanish, while large dark regions (a hard
    shadow, the table around the sheet) are kept, so they do not turn into "ink".
    """
    dilated = _running_max(_running_max(image, k, 0), k, 1)
    return -_running_max(_running_max(-dilated, k, 0), k, 1)


def _smooth3(image: np.ndarray) -> np.ndarray:
    """3x3 mean (edge-padded), to keep sensor/JPEG noise out of the background estimate."""
    p = np.pad(image, 1, mode="edge")
    rows = (p[:-2] + p[1:-1] + p[2:]) / 3.0
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) / 3.0


def _wide_background(channel: np.ndarray) -> np.ndarray:
    """Smooth paper estimate: 90th percentile over ~23% of the image (first pass)."""
    return _upsample(_rank_filter(_low_res(channel), 0.9), channel.shape)


def _contrast(work: np.ndarray, backgrounds: list[np.ndarray]) -> np.ndarray:
    """Max over channels of (paper - pixel) / paper, clipped to [0, 1] (dark-ink form)."""
    signal = np.zeros(work.shape[:2], dtype=np.float32)
    for c, bg in enumerate(backgrounds):
        # the floor stops a channel that is ~0 everywhere (green in pure red) from
        # turning noise into "ink"
        sig = (bg - work[..., c]) / np.maximum(bg, _MIN_BACKGROUND)
        np.maximum(signal, np.clip(sig, 0.0, 1.0), out=signal)
    return signal


def typical_stroke_width(mask: np.ndarray) -> float | None:
    """Median horizontal/vertical run length of ink not touching the image border.

    Border-touching components (shadows, the table around a sheet) are ignored when
    possible; None when there is no ink at all.
    """
    (rows, starts, ends), roots = label_runs(mask)
    if len(rows) == 0:
        return None
    h, w = mask.shape
    touches = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    on_border = np.bincount(roots, weights=touches, minlength=len(rows))[roots] > 0
    if not on_border.all():
        rows, starts, ends = rows[~on_border], starts[~on_border], ends[~on_border]
    inner = _paint_runs(mask.shape, rows, starts, ends)
    _, v_starts, v_ends = _runs(inner.T)
    lengths = np.concatenate([ends - starts, v_ends - v_starts])
    return float(np.median(lengths))


def _noise_level(signal: np.ndarray, threshold: float) -> float:
    """Median |pixel - 3x3 mean| over the background: 0 for canvases, > 0 for photos/scans."""
    paper = signal < threshold
    if not paper.any():
        return 0.0
    return float(np.median(np.abs(signal - _smooth3(signal))[paper]))


def _ink_signal(channels: np.ndarray, alpha: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """(ink signal, whether the image is noisy, i.e. a photo or scan rather than a canvas)."""
    if _alpha_holds_ink(alpha):
        return np.clip(alpha, 0.0, 1.0).astype(np.float32), False
    if alpha is not None and alpha.min() < 0.5:
        channels = _composite(channels, alpha)
    dark = _ink_is_dark(channels.mean(axis=-1))
    work = channels if dark else 1.0 - channels
    n_ch = work.shape[-1]
    rough = _contrast(work, [_wide_background(work[..., c]) for c in range(n_ch)])
    if float(rough.max()) < MIN_CONTRAST:
        return rough, False
    threshold = max(otsu_threshold(rough), MIN_THRESHOLD)
    noisy = _noise_level(rough, threshold) > _NOISE_LEVEL
    width = typical_stroke_width(rough > threshold)
    if width is None:
        return rough, noisy
    k = 2 * int(round(1.5 * width)) + 3  # odd, about 3 stroke widths
    return _contrast(work, [closing(_smooth3(work[..., c]), k) for c in range(n_ch)]), noisy


def ink_signal(channels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Per-pixel ink strength in [0, 1]: 0 = background, 1 = full-contrast ink.

    Strokes on a transparent canvas come straight from alpha. Otherwise colour is
    divided by a paper estimate (removes gradients, vignetting and shadows in photos):
    a first pass with a wide percentile filter measures the stroke width, then a
    grey-level closing a few strokes wide gives a paper estimate that follows shadow
    edges. The channel with the strongest contrast wins, so yellow-on-white or
    red-on-black still work.
    """
    return _ink_signal(channels, alpha)[0]


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


# --------------------------------------------------------------------------- mask ops


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: (row, start, end exclusive), row-major."""
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    d = np.diff(padded, axis=1)
    starts = np.argwhere(d == 1)
    ends = np.argwhere(d == -1)
    return starts[:, 0], starts[:, 1], ends[:, 1]


def label_runs(mask: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """8-connected components via run-length union-find: (runs, component root of each run)."""
    rows, starts, ends = _runs(mask)
    n = len(rows)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(mask.shape[0] - 1):
        a, a_end = int(row_first[r]), int(row_first[r + 1])
        b, b_end = a_end, int(row_first[r + 2])
        while a < a_end and b < b_end:
            if starts[a] <= ends[b] and starts[b] <= ends[a]:  # 8-connected overlap
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    roots = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    return (rows, starts, ends), roots


def _paint_runs(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    diff = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(diff, (rows, starts), 1)
    np.add.at(diff, (rows, ends), -1)
    return np.cumsum(diff, axis=1)[:, :-1] > 0


def remove_specks(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels."""
    (rows, starts, ends), roots = label_runs(mask)
    areas = np.bincount(roots, weights=ends - starts, minlength=len(rows))[roots]
    keep = areas >= min_area
    return _paint_runs(mask.shape, rows[keep], starts[keep], ends[keep])


def drop_border_components(mask: np.ndarray) -> np.ndarray:
    """Remove components touching the image border, unless that would remove all ink."""
    (rows, starts, ends), roots = label_runs(mask)
    h, w = mask.shape
    touches = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    on_border = np.bincount(roots, weights=touches, minlength=len(rows))[roots] > 0
    if on_border.all():
        return mask
    keep = ~on_border
    return _paint_runs(mask.shape, rows[keep], starts[keep], ends[keep])


def stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width ~ 2 * area / perimeter (exact for long straight strokes)."""
    m = mask.astype(bool)
    area = float(m.sum())
    if area == 0:
        return 0.0
    perim = float(
        (m[:, 1:] != m[:, :-1]).sum() + (m[1:, :] != m[:-1, :]).sum()
        + m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum()
    )
    return 2.0 * area / max(perim, 1.0)


def thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning to a 1-px, 8-connected skeleton (vectorised NumPy)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:]
            p5, p6, p7 = img[2:, 2:], img[2:, 1:-1], img[2:, :-2]
            p8, p9 = img[1:-1, :-2], img[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            count = p2 + p3 + p4 + p5 + p6 + p7 + p8 + p9
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.uint8) for i in range(8))
            if step == 0:
                cond = ((p2 * p4 * p6) == 0) & ((p4 * p6 * p8) == 0)
            else:
                cond = ((p2 * p4 * p8) == 0) & ((p2 * p6 * p8) == 0)
            remove = (img[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & cond
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def _resample_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """Rescale a binary mask; low coverage threshold on shrinking keeps thin lines."""
    h, w = mask.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return mask
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    out = _resize_float(mask.astype(np.float32), size, resample)
    return out >= (0.25 if scale < 1 else 0.5)


def _pen_offsets(radius: float = PEN_RADIUS) -> np.ndarray:
    r = int(math.floor(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dy**2 + dx**2 <= radius**2
    return np.stack([dy[keep], dx[keep]], axis=1)


def _skeleton_points(skel: np.ndarray, step_px: float) -> np.ndarray:
    """Skeleton pixels plus points along each 8-neighbour link, spaced <= ``step_px``."""
    ys, xs = np.nonzero(skel)
    pts = [np.stack([ys, xs], axis=1).astype(np.float64)]
    n = int(math.ceil(math.sqrt(2.0) / max(step_px, 1e-6)))
    if n > 1:
        t = np.linspace(0.0, 1.0, n + 1)[1:-1]
        padded = np.pad(skel, 1)
        h, w = skel.shape
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            neighbour = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            ay, ax = np.nonzero(skel & neighbour)
            seg = np.stack([ay[:, None] + dy * t[None, :], ax[:, None] + dx * t[None, :]], axis=-1)
            pts.append(seg.reshape(-1, 2))
    return np.concatenate(pts, axis=0)


def render_frame(mask: np.ndarray) -> np.ndarray:
    """Binary ink mask (any size, cleaned) -> boolean 105x105 Omniglot-style frame.

    Crops to the ink, thins it, then redraws the skeleton with Omniglot's round pen,
    scaled so the result's bounding box is ``TARGET_MAX_SIDE`` and centred on
    ``TARGET_CENTRE``: pen width, size and position no longer depend on the input.
    """
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    side = max(crop.shape)
    width = max(stroke_width(crop), 1.0)
    if width >= _BLOB_WIDTH_RATIO * side:  # one compact blob, i.e. a dot: Omniglot draws a pen dot
        return _stamp(np.rint(np.array([TARGET_CENTRE])).astype(np.int64))
    scale = min(max(_THIN_STROKE_PX / width, _THIN_MIN_SIDE / side), _THIN_MAX_SIDE / side)
    resampled = _resample_mask(crop, scale)
    work = np.pad(resampled, 2)
    skel = thin(work)
    if not skel.any():
        skel = work
    sy, sx = np.nonzero(skel)
    extent = float(max(sy.max() - sy.min(), sx.max() - sx.min()))
    pen_extent = 2 * math.floor(PEN_RADIUS)
    factor = (TARGET_MAX_SIDE - 1 - pen_extent) / extent if extent > 0 else 1.0
    # blobs (a dot, a filled shape) thin to a few pixels: do not blow those up to full size
    factor = min(factor, _MAX_BLOB_GROWTH * TARGET_MAX_SIDE / max(resampled.shape))
    pts = _skeleton_points(skel, step_px=0.5 / factor)
    centre = np.array([(sy.min() + sy.max()) / 2.0, (sx.min() + sx.max()) / 2.0])
    frame_pts = np.rint((pts - centre) * factor + np.array(TARGET_CENTRE)).astype(np.int64)
    return _stamp(np.unique(frame_pts, axis=0))


def _stamp(points: np.ndarray) -> np.ndarray:
    """Draw Omniglot's round pen at integer (row, col) points of a 105x105 frame."""
    frame = np.zeros((FRAME, FRAME), dtype=bool)
    for dy, dx in _pen_offsets():
        py, px = points[:, 0] + dy, points[:, 1] + dx
        ok = (py >= 0) & (py < FRAME) & (px >= 0) & (px < FRAME)
        frame[py[ok], px[ok]] = True
    return frame


# --------------------------------------------------------------------------- public API


def ink_mask(image: Image.Image | bytes | np.ndarray) -> np.ndarray:
    """Boolean ink mask at working resolution, specks removed; raises the user-facing errors."""
    channels, alpha = load_image_arrays(image)
    signal, noisy = _ink_signal(channels, alpha)
    if signal.size == 0 or float(signal.max()) < MIN_CONTRAST:
        raise NoInkError("No drawing found: the image looks blank.")
    threshold = max(otsu_threshold(signal), MIN_THRESHOLD)
    mask = signal > threshold
    if float(mask.mean()) > _MAX_INK_FRACTION:
        raise NoInkError("Could not tell the drawing from the background; try a plainer background.")
    h, w = mask.shape
    min_area = max(3.0, SPECK_AREA_FRACTION * h * w, 0.25 * stroke_width(mask) ** 2)
    mask = remove_specks(mask, min_area)
    if noisy:  # photos: things touching the edge are the table, shadows, paper edges
        mask = drop_border_components(mask)
    if int(mask.sum()) < max(MIN_INK_PIXELS, 1e-4 * h * w):
        raise NoInkError("No drawing found: only a few specks of ink.")
    return mask


def preprocess_frame(image: Image.Image | bytes | np.ndarray) -> np.ndarray:
    """Any image -> boolean 105x105 frame drawn like an Omniglot character (ink True)."""
    return render_frame(ink_mask(image))


def preprocess_image(image: Image.Image | bytes | np.ndarray) -> np.ndarray:
    """Any user image -> float32 [28, 28] in [0, 1], ink high, like :func:`load_split` data.

    Quantised to the uint8 levels the dataset cache stores, so an Omniglot PNG uploaded by a user
    reaches the network as exactly the tensor its dataset copy does (the canonical pipeline decodes
    the dataset with this very function).

    Raises :class:`NoInkError`, :class:`UnreadableImageError` or :class:`ImageTooLargeError`
    (all :class:`ImagePreprocessError`, a ``ValueError``) with short user-facing messages.
    """
    return from_uint8(to_uint8(omniglot_to_28(preprocess_frame(image).astype(np.float32))))


def preprocess_many(images: Iterable[Image.Image | bytes | np.ndarray]) -> np.ndarray:
    """Preprocess several images -> float32 [n, 28, 28]."""
    out = [preprocess_image(im) for im in images]
    if not out:
        return np.zeros((0, 28, 28), dtype=np.float32)
    return np.stack(out, axis=0)
