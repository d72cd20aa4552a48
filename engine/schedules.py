"""The meta learning rate over training: a factor of ``meta_lr`` per meta-step, for ``LambdaLR``."""

from __future__ import annotations

import math

META_LR_SCHEDULES = ("linear", "cosine")
"""How the rate goes from ``meta_lr`` to ``meta_lr_final``: a straight line, or half a cosine (flat at both ends)."""


def meta_lr_factor(step: int, total_steps: int, final_ratio: float, schedule: str = "linear", warmup: int = 0) -> float:
    """The factor of ``meta_lr`` at ``step`` (0-based) of ``total_steps``: a linear warm-up to 1 over the first
    ``warmup`` steps, then ``schedule`` from 1 down to ``final_ratio`` (``meta_lr_final / meta_lr``) at the end,
    and ``final_ratio`` past it."""
    if schedule not in META_LR_SCHEDULES:
        raise ValueError(f"unknown meta learning-rate schedule {schedule!r}; choose from {', '.join(META_LR_SCHEDULES)}")
    if warmup < 0:
        raise ValueError(f"the meta learning-rate warm-up must be 0 or more steps, not {warmup}")
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    if schedule == "cosine":
        progress = (1.0 - math.cos(math.pi * progress)) / 2
    return 1.0 + (final_ratio - 1.0) * progress
