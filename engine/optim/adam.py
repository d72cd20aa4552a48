"""Adam over one inner loop: its moments start at zero for every adaptation, as in Reptile's code."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from engine.nets import Params
from engine.optim.base import InnerOptimizer, InnerProblem, LearningRate, register_inner_optimizer, step_size


@register_inner_optimizer
class Adam(InnerOptimizer):
    """Adam (Kingma & Ba 2015), its state reset for every inner loop:

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        theta <- theta - alpha * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    b1 = 0.9, b2 = 0.999, eps = 1e-8. Every weight moves by about alpha a step whatever its
    gradient's scale, so alpha is much smaller than gradient descent's: 1e-3 (the papers') unless
    a step size is given. A per-parameter ``lr`` scales each entry's step."""

    name = "adam"
    default_lr = 1e-3
    beta1: ClassVar[float] = 0.9
    beta2: ClassVar[float] = 0.999
    eps: ClassVar[float] = 1e-8

    def __init__(self) -> None:
        super().__init__()
        self.steps_taken = 0
        self.first_moment: Params = {}
        self.second_moment: Params = {}

    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        self.steps_taken += 1
        first_correction = 1.0 - self.beta1 ** self.steps_taken
        second_correction = 1.0 - self.beta2 ** self.steps_taken
        updated: Params = {}
        for name, value in params.items():
            grad = grads[name] if problem.create_graph else grads[name].detach()
            first = (1.0 - self.beta1) * grad
            second = (1.0 - self.beta2) * grad * grad
            if name in self.first_moment:
                first = first + self.beta1 * self.first_moment[name]
                second = second + self.beta2 * self.second_moment[name]
            self.first_moment[name], self.second_moment[name] = first, second
            if problem.create_graph:
                # sqrt's derivative at 0 is infinite (0 * inf = NaN where a gradient is exactly 0,
                # e.g. the backbone's at the zero head): eps moves inside the root for a graph.
                denominator = (second / second_correction + self.eps ** 2).sqrt()
                updated[name] = value - step_size(lr, name) * (first / first_correction) / denominator
            else:
                with torch.no_grad():
                    denominator = (second / second_correction).sqrt_().add_(self.eps)
                    updated[name] = value.detach() - step_size(lr, name) * (first / first_correction) / denominator
        return updated


@register_inner_optimizer
class AdamWithoutMomentum(Adam):
    """Adam with b1 = 0, each step along its own gradient, scaled by the running second moment:

        v <- b2 v + (1 - b2) g^2        theta <- theta - alpha * g / (sqrt(v / (1 - b2^t)) + eps)

    Reptile's inner optimizer on Omniglot (Nichol et al. 2018, learning rate 1e-3)."""

    name = "adam-no-momentum"
    beta1 = 0.0
