"""How long the app's image preprocessing takes per drawing, upload and photo, against its budgets.

    python -m benchmarks.bench_preprocess [--repeats 20]

Times ``engine.data.preprocess.preprocess_image`` (what every drawing and upload goes through before it
reaches a network) on synthetic inputs of each kind the app receives: a 280x280 canvas drawing (transparent
RGBA, as the drawing pad sends it), the same drawing uploaded as a PNG, a phone photo of a character on paper
(JPEG, 1600x1200 and 4000x3000) and a PNG whose header claims 20000x20000 pixels, which must be refused
before anything is decoded. Prints the median and the best of ``--repeats`` calls (the best is what the
machine can do; the median what a busy one gave) and whether the median is within its budget.
"""

from __future__ import annotations

import argparse
import io
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.data.preprocess import ImageTooLargeError, preprocess_image

# A character of three strokes in unit coordinates: the same shape for every input kind.
STROKES = (((0.2, 0.95), (0.5, 0.05), (0.8, 0.95)), ((0.32, 0.6), (0.68, 0.6)), ((0.5, 0.6), (0.55, 0.9)))


@dataclass(frozen=True)
class Case:
    name: str
    budget_ms: float  # a person drawing waits on it: the median must stay under this
    image: Callable[[], Image.Image | bytes]  # made once, outside the timing


def ink_mask(size: tuple[int, int], side_fraction: float, pen: int) -> Image.Image:
    """The character's strokes (255) on black, centred in a square box of ``side_fraction`` of the short side."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    side = side_fraction * min(size)
    left, top = (size[0] - side) / 2, (size[1] - side) / 2
    for stroke in STROKES:
        draw.line([(left + side * x, top + side * y) for x, y in stroke], fill=255, width=pen, joint="curve")
    return mask


def canvas_drawing() -> Image.Image:
    """White strokes on a transparent 280x280 canvas, as the drawing pad returns them."""
    canvas = Image.new("RGBA", (280, 280), (255, 255, 255, 0))
    canvas.putalpha(ink_mask(canvas.size, 0.8, 15))
    return canvas


def encoded(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def phone_photo(size: tuple[int, int]) -> bytes:
    """Dark, slightly blurred ink on unevenly lit grey paper with sensor noise, as a JPEG."""
    ink = np.asarray(ink_mask(size, 0.5, max(4, min(size) // 70)).filter(ImageFilter.GaussianBlur(1.5)),
                     np.float32) / 255
    columns = np.linspace(0, 1, size[0], dtype=np.float32)[None, :]
    paper = 0.55 + 0.4 * columns + np.random.default_rng(0).normal(0, 0.03, ink.shape).astype(np.float32)
    grey = np.clip(paper * (0.9 - 0.7 * ink), 0, 1)
    rgb = (np.stack([grey, grey * 0.96, grey * 0.88], axis=-1) * 255).astype(np.uint8)
    return encoded(Image.fromarray(rgb), "JPEG", quality=70)


def header_only_png(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG claiming ``width`` x ``height`` pixels with almost no data behind it (costs no memory to build;
    tests/test_preprocess.py's oversized uploads too)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


CASES = (
    Case("canvas drawing, 280x280 RGBA", 100.0, canvas_drawing),
    Case("uploaded PNG of it", 100.0, lambda: encoded(canvas_drawing(), "PNG")),
    Case("phone photo, 1600x1200 JPEG", 1000.0, lambda: phone_photo((1600, 1200))),
    Case("phone photo, 4000x3000 JPEG", 2000.0, lambda: phone_photo((4000, 3000))),
    Case("PNG claiming 20000x20000: refused", 100.0, lambda: header_only_png(20000, 20000)),
)


def preprocess_ms(image: Image.Image | bytes) -> float:
    start = time.perf_counter()
    try:
        preprocess_image(image)
    except ImageTooLargeError:
        pass  # the refusal is what is timed
    return (time.perf_counter() - start) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_preprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per input (after one untimed)")
    args = parser.parse_args(argv)
    print(f"{'input':<38} {'median':>10} {'best':>10} {'budget':>10}  within")
    over = 0
    for case in CASES:
        image = case.image()
        preprocess_ms(image)  # warm-up: first-call imports and caches
        samples = [preprocess_ms(image) for _ in range(max(1, args.repeats))]
        median = statistics.median(samples)
        over += median > case.budget_ms
        print(f"{case.name:<38} {median:>8.1f}ms {min(samples):>8.1f}ms {case.budget_ms:>8.0f}ms  "
              f"{'yes' if median <= case.budget_ms else 'NO'}")
    print(f"{len(CASES) - over} of {len(CASES)} inputs within budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
