"""Synthetic handwritten-like digits for tests: 0-9 rendered with the system's fonts (Debian's
DejaVu and Liberation families under /usr/share/fonts), each drawing with its own font, size,
stroke weight and random affine distortion (rotation, shear, squeeze), then passed through the
app's own preprocessing (``engine.data.preprocess.preprocess_image``), as a user's drawing is.
No downloads: the fonts are part of the test machine's system packages."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from engine.data.preprocess import preprocess_image
from engine.data.tasks import Task

FONT_DIR = Path("/usr/share/fonts/truetype")
DIGITS = 10
CANVAS = 160  # the rendering's side in pixels, before preprocessing reduces it to 28x28


def digit_fonts() -> list[Path]:
    """The TrueType text fonts of the DejaVu and Liberation families installed here (not the maths font)."""
    fonts = sorted(path for family in ("dejavu", "liberation") for path in (FONT_DIR / family).glob("*.ttf"))
    return [path for path in fonts if "Math" not in path.name]


def render_digit(digit: int, rng: np.random.Generator, fonts: list[Path]) -> np.ndarray:
    """One drawing of ``digit`` as a float32 [28, 28] image in [0, 1], ink high."""
    font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), size=int(rng.integers(70, 110)))
    canvas = Image.new("L", (CANVAS, CANVAS), 255)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 5))  # thin to heavy pens
    draw.text((CANVAS / 2, CANVAS / 2), str(digit), font=font, fill=0, anchor="mm", stroke_width=stroke, stroke_fill=0)
    angle = math.radians(rng.uniform(-15.0, 15.0))
    shear = rng.uniform(-0.3, 0.3)
    scale_x, scale_y = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    # Inverse affine map (output -> input pixel), about the canvas centre.
    cos, sin = math.cos(angle), math.sin(angle)
    a, b = cos / scale_x, (sin + shear * cos) / scale_x
    d, e = -sin / scale_y, (cos - shear * sin) / scale_y
    centre = CANVAS / 2
    c = centre - a * centre - b * centre + rng.uniform(-8, 8)
    f = centre - d * centre - e * centre + rng.uniform(-8, 8)
    warped = canvas.transform(canvas.size, Image.Transform.AFFINE, (a, b, c, d, e, f),
                              resample=Image.Resampling.BILINEAR, fillcolor=255)
    return preprocess_image(warped)


@lru_cache(maxsize=4)
def digit_drawings(per_digit: int = 20, seed: int = 0) -> torch.Tensor:
    """``per_digit`` drawings of each digit: float32 [10, per_digit, 1, 28, 28] (cached: rendering and
    preprocessing take tens of milliseconds a drawing)."""
    rng = np.random.default_rng(seed)
    fonts = digit_fonts()
    images = np.stack([np.stack([render_digit(digit, rng, fonts) for _ in range(per_digit)]) for digit in range(DIGITS)])
    return torch.from_numpy(images).unsqueeze(2)


def digit_task(drawings: torch.Tensor, ways: int, shots: int, queries: int, rng: np.random.Generator) -> Task:
    """A ``ways``-way ``shots``-shot task of distinct digits drawn from ``drawings`` (as from
    :func:`digit_drawings`), ``queries`` further drawings per class; class-major like the engine's tasks."""
    digits = rng.choice(drawings.shape[0], size=ways, replace=False)
    support, query = [], []
    for digit in digits:
        chosen = rng.choice(drawings.shape[1], size=shots + queries, replace=False)
        support.append(drawings[digit, chosen[:shots]])
        query.append(drawings[digit, chosen[shots:]])
    labels = torch.arange(ways)
    return Task(support_x=torch.cat(support), support_y=labels.repeat_interleave(shots),
                query_x=torch.cat(query), query_y=labels.repeat_interleave(queries), ways=ways, shots=shots,
                class_names=tuple(str(int(digit)) for digit in digits))
