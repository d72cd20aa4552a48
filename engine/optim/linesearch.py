"""Backtracking line search along a descent direction of the support loss (Armijo's rule)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem


def backtracking(objective: Callable[[float], float], base: float, slope: float, max_halvings: int,
                 sufficient: float = 1e-4) -> float | None:
    """The first ``t`` in 1, 1/2, ..., 2^-max_halvings with objective(t) <= base - sufficient * t *
    slope (Armijo's condition; ``slope`` = g . d > 0 for a descent direction d); else the smallest
    ``t`` if it does not increase the objective; else ``None``."""
    t = 1.0
    value = math.inf
    for _ in range(max_halvings + 1):
        value = objective(t)
        if value <= base - sufficient * t * slope:
            return t
        t /= 2
    return 2 * t if value <= base else None


class LossAlong:
    """The support loss at ``params - t * directions`` as a function of ``t`` (no graph kept;
    non-finite values count as +inf)."""

    def __init__(self, params: Params, directions: Params, problem: InnerProblem) -> None:
        self.params = {name: value.detach() for name, value in params.items()}
        self.directions = {name: value.detach() for name, value in directions.items()}
        self.problem = problem

    def __call__(self, t: float) -> float:
        with torch.no_grad():
            trial = {name: value - t * self.directions[name] for name, value in self.params.items()}
            value = float(self.problem.loss(trial))
        return value if math.isfinite(value) else math.inf


def step_length(params: Params, grads: Params, directions: Params, loss: Tensor, problem: InnerProblem,
                max_halvings: int) -> float | None:
    """Backtracking for the step ``params - t * directions`` (``directions`` has every entry of
    ``params``); ``None`` when no tried ``t`` decreases the loss. At t = 1 it costs one forward pass."""
    slope = float(sum((grads[name].detach() * value.detach()).sum() for name, value in directions.items()))
    return backtracking(LossAlong(params, directions, problem), float(loss.detach()), slope, max_halvings)


def searched_step(optimizer: InnerOptimizer, params: Params, grads: Params, directions: Params, loss: Tensor,
                  problem: InnerProblem, line_search: bool, max_halvings: int) -> Params:
    """``params - t * directions`` (entries in the order of ``params``), ``t`` from backtracking, or
    1 without ``line_search``. When no tried ``t`` decreases the loss the weights stay unchanged
    and ``optimizer`` records a message."""
    t = step_length(params, grads, directions, loss, problem, max_halvings) if line_search else 1.0
    if t is None:
        optimizer.note(f"{optimizer.name}: no step along its direction (down to 2^-{max_halvings} of it) decreased "
                       "the support loss, so the weights were left unchanged.")
        t = 0.0
    return {name: value - t * directions[name] for name, value in params.items()}
