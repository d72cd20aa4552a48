"""Training-time augmentation that imitates how people draw: a slightly rotated, scaled, sheared
and shifted character, drawn with a thinner or thicker pen.

Applied by the trainer to every image of every meta-training episode (support and queries), with
parameters drawn per image from the trainer's NumPy generator, so a run is reproducible and a resumed
run continues the same sequence. Evaluation and the app augment only when asked to (test-time augmentation: ``augmented_support``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.data.tasks import Task

ROTATION_DEGREES = 10.0
"""Largest rotation at strength 1 (uniform in +-)."""
SCALE = 0.15
"""Largest relative size change at strength 1 (log-uniform in [1/(1+s), 1+s])."""
SHEAR_DEGREES = 10.0
"""Largest horizontal shear at strength 1 (slanted handwriting)."""
TRANSLATE = 0.06
"""Largest shift at strength 1, as a fraction of the image side (~1.7 px of 28)."""
PEN = 0.3
"""Largest pen-width change at strength 1: the image moves this fraction of the way towards its
3x3 dilation (thicker pen, > 0) or erosion (thinner pen, < 0). A 28x28 pixel is ~3.75 of Omniglot's
105-px drawing, so a whole pixel of dilation would triple its 5-px pen, and the strokes of the
canonical pipeline are ~1.3 px wide here: beyond ~0.3 erosion fades them out."""


def _uniform(rng: np.random.Generator, limit: float, count: int) -> np.ndarray:
    return rng.uniform(-limit, limit, count) if limit > 0 else np.zeros(count)


def augment_images(images: Tensor, rng: np.random.Generator, strength: float = 1.0) -> Tensor:
    """Augmented copies of ``images`` ``[n, 1, H, W]`` (ink high, in [0, 1]); ``strength`` scales
    every range (0: the images unchanged, and no random numbers drawn)."""
    if strength <= 0 or images.shape[0] == 0:
        return images
    count = images.shape[0]
    rotation = np.deg2rad(_uniform(rng, ROTATION_DEGREES * strength, count))
    shear = np.tan(np.deg2rad(_uniform(rng, SHEAR_DEGREES * strength, count)))
    scale = np.exp(_uniform(rng, math.log1p(SCALE * strength), count))
    shift = _uniform(rng, 2 * TRANSLATE * strength, 2 * count).reshape(count, 2)  # grid units span 2
    pen = _uniform(rng, min(PEN * strength, 1.0), count)

    as_images = lambda values: torch.as_tensor(values, dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)
    thicker = F.max_pool2d(images, 3, stride=1, padding=1)
    thinner = -F.max_pool2d(-images, 3, stride=1, padding=1)
    drawn = (images + as_images(np.clip(pen, 0, None)) * (thicker - images)
             + as_images(np.clip(-pen, 0, None)) * (thinner - images))

    # affine_grid maps output to input coordinates: the transform below is the inverse of the one the
    # image undergoes, and since every range is symmetric (scale log-symmetric) so is the distribution.
    cos, sin = np.cos(rotation), np.sin(rotation)
    linear = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    shear_matrix = np.zeros((count, 2, 2))
    shear_matrix[:, 0, 0] = shear_matrix[:, 1, 1] = 1.0
    shear_matrix[:, 0, 1] = shear
    linear = linear @ shear_matrix * scale[:, None, None]
    theta = torch.as_tensor(np.concatenate([linear, shift[:, :, None]], axis=2), dtype=images.dtype,
                            device=images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    warped = F.grid_sample(drawn, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.clamp_(0.0, 1.0)


def augment_task(task: Task, rng: np.random.Generator, strength: float = 1.0) -> Task:
    """``task`` with every support and query image augmented (labels unchanged)."""
    if strength <= 0:
        return task
    both = torch.cat([task.support_x, task.query_x])
    augmented = augment_images(both, rng, strength)
    support = task.support_x.shape[0]
    return dataclasses.replace(task, support_x=augmented[:support], query_x=augmented[support:])


def augmented_support(support_x: Tensor, support_y: Tensor, copies: int,
                      strength: float = 1.0) -> tuple[Tensor, Tensor]:
    """Test-time augmentation: the support set followed by ``copies`` augmented copies of each image
    (labels repeated). Seeded by the support set's own bytes, so the same support set always gets the
    same copies, whatever was adapted before it. ``copies`` 0: the support set itself."""
    if copies < 0:
        raise ValueError(f"support augmentation copies must be >= 0, got {copies}")
    if copies == 0:
        return support_x, support_y
    digest = hashlib.blake2b(support_x.detach().cpu().numpy().tobytes()
                             + support_y.detach().cpu().numpy().tobytes(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    extra = augment_images(support_x.repeat(copies, 1, 1, 1), rng, strength)
    return torch.cat([support_x, extra]), torch.cat([support_y, support_y.repeat(copies)])
