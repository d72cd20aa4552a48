"""Plain gradient descent."""

from __future__ import annotations

from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size


@register_inner_optimizer
class SGD(InnerOptimizer):
    """theta <- theta - alpha * g (alpha a scalar, or a tensor per parameter as in Meta-SGD)."""

    name = "sgd"

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        return {name: value - step_size(lr, name) * grads[name] for name, value in params.items()}
