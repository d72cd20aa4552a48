"""Bounded first-order steps: gradient descent that never steps past the linearised loss's zero."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size


def scaled_squared_norm(grads: Params, lr: LearningRate) -> Tensor:
    """``g^T A g`` over all entries jointly, ``A`` the (diagonal) step sizes: ``alpha ||g||^2`` for
    a scalar ``alpha``."""
    return torch.stack([(step_size(lr, name) * grad * grad).sum() for name, grad in grads.items()]).sum()


def clipping_factor(loss: Tensor, curvature: Tensor) -> Tensor:
    """``min(1, L / (g^T A g))``: the fraction of the full step that brings the linearised loss
    ``L - t g^T A g`` to zero, or 1 when it stays positive (also when ``g = 0``)."""
    loss = torch.as_tensor(loss, dtype=curvature.dtype, device=curvature.device)
    positive = curvature > 0
    safe = torch.where(positive, curvature, torch.ones_like(curvature))  # no inf in either branch
    return torch.where(positive, torch.clamp(loss.clamp_min(0) / safe, max=1.0), torch.ones_like(curvature))


@register_inner_optimizer
class BoundedGradient(InnerOptimizer):
    """The bounded first-order step, argmin_delta max(L + g.delta, 0) + ||delta||^2 / (2 alpha):

        theta <- theta - min(alpha, L / ||g||^2) * g        (||g|| over all parameters jointly)

    A gradient step of at most ``alpha`` = lr that stops where the linearised loss reaches zero,
    so it never aims below zero loss. For a per-parameter lr A = diag(alpha_i) (Meta-SGD) it solves
    the same problem in the metric ||delta||_A^-1: delta = -min(1, L / g^T A g) * A g, i.e. the
    per-tensor rates times one clipping factor shared by all parameters.
    """

    name = "bounded"

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        factor = clipping_factor(loss, scaled_squared_norm(grads, lr))
        return {name: value - factor * step_size(lr, name) * grads[name] for name, value in params.items()}
