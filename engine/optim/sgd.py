"""Plain gradient descent."""

from __future__ import annotations

import torch
from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size


@register_inner_optimizer
class SGD(InnerOptimizer):
    """theta <- theta - alpha * g (alpha a scalar, or a tensor per parameter as in Meta-SGD)."""

    name = "sgd"

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        if not problem.create_graph and not isinstance(lr, dict):
            # No graph through the step: one multi-tensor kernel for every entry instead of two
            # small kernels (and two autograd nodes) per entry.
            with torch.no_grad():
                updated = torch._foreach_add([value.detach() for value in params.values()],
                                             [grads[name].detach() for name in params], alpha=-lr)
            return dict(zip(params, updated))
        return {name: value - step_size(lr, name) * grads[name] for name, value in params.items()}
