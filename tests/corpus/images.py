"""Image cases: every kind of file a user has dropped on the uploaders."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIDE = 160


@dataclass(frozen=True)
class ImageCase:
    name: str
    data: bytes
    added: bool
    says: str = ""
    """Words the message about this file contains (an error when refused, a note when added)."""


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def character(mode: str = "L", ink: object = 0, paper: object = 255, side: int = SIDE) -> Image.Image:
    """A hand-drawn-looking character (a loop and a bar) in any mode."""
    image = Image.new(mode, (side, side), paper)
    draw = ImageDraw.Draw(image)
    width = max(3, side // 20)
    draw.ellipse([(0.25 * side, 0.2 * side), (0.7 * side, 0.65 * side)], outline=ink, width=width)
    draw.line([(0.5 * side, 0.6 * side), (0.5 * side, 0.85 * side)], fill=ink, width=width)
    return image


def sixteen_bit() -> bytes:
    grey = np.asarray(character("L"), dtype=np.uint16) * 257  # full 16-bit range
    return encode(Image.fromarray(grey.astype(np.uint16)), "PNG")


def photo(rng: np.random.Generator) -> bytes:
    """Ink on paper under uneven light, with sensor noise: what a phone photo looks like."""
    ramp = np.linspace(150, 230, SIDE)[None, :] + np.linspace(0, 20, SIDE)[:, None]
    ink = np.asarray(character("L"), dtype=np.float64) < 128
    grey = np.where(ink, 40.0, ramp) + rng.normal(0, 6, (SIDE, SIDE))
    rgb = np.clip(np.stack([grey, grey * 0.97, grey * 0.92], axis=-1), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(rgb), "JPEG", quality=85)


def animated_gif() -> bytes:
    first, second = character("L").convert("P"), Image.new("L", (SIDE, SIDE), 255).convert("P")
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def huge_png() -> bytes:
    return encode(Image.new("1", (20000, 20000), 1), "PNG")


def image_cases(seed: int = 0) -> list[ImageCase]:
    rng = np.random.default_rng(seed)
    good = encode(character("L"), "PNG")
    rgba = character("RGBA", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0))
    return [
        ImageCase("plain.png", good, True),
        ImageCase("sixteen-bit.png", sixteen_bit(), True),
        ImageCase("cmyk.jpg", encode(character("CMYK", ink=(0, 0, 0, 255), paper=(0, 0, 0, 0)), "JPEG"), True),
        ImageCase("transparent.png", encode(rgba, "PNG"), True),
        ImageCase("palette.png", encode(character("L").convert("P"), "PNG"), True),
        ImageCase("photo.jpg", photo(rng), True),
        ImageCase("white-on-black.png", encode(character("L", ink=255, paper=0), "PNG"), True),
        ImageCase("scan.tiff", encode(character("1", ink=0, paper=1), "TIFF"), True),
        ImageCase("animated.gif", animated_gif(), True, "first frame"),
        ImageCase("blank.png", encode(Image.new("RGB", (SIDE, SIDE), "white"), "PNG"), False, "blank"),
        ImageCase("uniform-grey.png", encode(Image.new("L", (SIDE, SIDE), 128), "PNG"), False, "blank"),
        ImageCase("empty.png", b"", False, "not a readable image"),
        ImageCase("notes.txt", b"a shopping list, not an image", False, "not a readable image"),
        ImageCase("truncated.png", good[: len(good) // 2], False, "not added"),
        ImageCase("header-only.png", good[:40], False, "not added"),
        ImageCase("huge.png", huge_png(), False, "too large"),
        ImageCase("zero-height.bmp", b"BM" + bytes(52), False, "not added"),
    ]
