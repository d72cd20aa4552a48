"""Gradient descent with a backtracking line search: plain steps that never raise the objective."""

from __future__ import annotations

from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size
from engine.optim.linesearch import searched_step

# Halvings tried before giving up on a step (down to 2^-8 of the gradient step).
MAX_HALVINGS = 8


@register_inner_optimizer
class ArmijoGradient(InnerOptimizer):
    """theta <- theta - t * alpha * g with the largest t in 1, 1/2, 1/4, ... that decreases the
    objective enough (Armijo's rule), so a step size too large for the local curvature is cut
    instead of diverging. A full step costs one extra forward pass to check. Solvers that assume
    a converged inner loop (iMAML's implicit gradient) need this: as meta-training sharpens the
    network, a fixed step size starts to oscillate and their gradient turns to noise."""

    name = "armijo"

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        directions = {name: step_size(lr, name) * grads[name] for name in params}
        return searched_step(self, params, grads, directions, loss, problem, line_search=True,
                             max_halvings=MAX_HALVINGS)
