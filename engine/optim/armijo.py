"""Gradient descent with a backtracking line search: plain steps that never raise the objective."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.kernels import SupportPass
from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size
from engine.optim.linesearch import backtracking

# Halvings tried before giving up on a step (down to 2^-8 of the gradient step).
MAX_HALVINGS = 8


@register_inner_optimizer
class ArmijoGradient(InnerOptimizer):
    """theta <- theta - t * alpha * g with the largest t in 1, 1/2, 1/4, ... that decreases the
    objective enough (Armijo's rule), so a step size too large for the local curvature is cut
    instead of diverging. Solvers that assume a converged inner loop (iMAML's implicit gradient)
    need this: as meta-training sharpens the network, a fixed step size starts to oscillate and
    their gradient turns to noise.

    Each trial point is evaluated without its gradient, and the accepted one is handed back through
    ``reuse`` as the next step's evaluation, which completes its gradient from the kept forward pass:
    an accepted full step costs no extra pass, and a halving only a forward pass."""

    name = "armijo"

    def __init__(self) -> None:
        super().__init__()
        self._accepted: tuple[Params, SupportPass] | None = None

    def reuse(self, params: Params) -> SupportPass | None:
        if self._accepted is None:
            return None
        accepted, evaluation = self._accepted
        self._accepted = None
        same = accepted.keys() == params.keys() and all(
            accepted[name].data_ptr() == value.data_ptr() and accepted[name].shape == value.shape
            for name, value in params.items())
        return evaluation if same else None

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        if problem.create_graph or isinstance(lr, dict):
            directions = {name: step_size(lr, name) * grads[name] for name in params}
            slope = float(sum((grads[name].detach() * direction.detach()).sum()
                              for name, direction in directions.items()))

            def along(t: float) -> Params:
                return {name: value - t * directions[name] for name, value in params.items()}
        else:
            # No graph, one step size: multi-tensor kernels instead of a few small ones per entry
            # (slope = g . (lr g) = lr ||g||^2).
            with torch.no_grad():
                values = [value.detach() for value in params.values()]
                gradient = [grads[name].detach() for name in params]
                slope = lr * float(torch.stack(torch._foreach_norm(gradient)).square().sum())

            def along(t: float) -> Params:
                with torch.no_grad():
                    return dict(zip(params, torch._foreach_add(values, gradient, alpha=-t * lr)))
        tried: dict[float, tuple[Params, SupportPass]] = {}

        def objective(t: float) -> float:
            trial = along(t)
            # Loss only: the gradient is computed if this trial is accepted and stepped from again
            # (SupportPass.gradient), so neither a rejected trial nor the loop's last step pays a backward.
            tried[t] = (trial, problem.evaluate(trial, with_grads=False))
            value = float(tried[t][1].loss.detach())
            return value if math.isfinite(value) else math.inf

        t = backtracking(objective, float(loss.detach()), slope, MAX_HALVINGS)
        if t is None:
            self.note(f"{self.name}: no step along the gradient (down to 2^-{MAX_HALVINGS} of it) decreased the "
                      "support loss, so the weights were left unchanged.")
            return dict(params)
        self._accepted = tried[t]
        return tried[t][0]
