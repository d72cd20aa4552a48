"""The inner-loop optimizer interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from engine.nets import Params
from engine.registry import Registry

# One step size for every tensor, or one per parameter entry (Meta-SGD learns a tensor per weight).
LearningRate = float | Params


@dataclass(frozen=True)
class InnerProblem:
    """What an optimizer may look at beyond the gradient: the support loss as a function of the
    fast weights (second-order optimizers re-evaluate it), and whether the step must stay
    differentiable for a second-order meta-gradient."""

    loss_fn: Callable[[Params], Tensor]
    create_graph: bool


class InnerOptimizer(ABC):
    """One inner loop's optimizer; a fresh instance per adaptation, so it may keep state."""

    name: ClassVar[str]

    @abstractmethod
    def step(self, params: Params, grads: Params, loss: Tensor, lr: LearningRate, problem: InnerProblem) -> Params:
        """Return new fast weights; never modify ``params`` in place (they may be meta-parameters)."""


INNER_OPTIMIZERS: Registry[type[InnerOptimizer]] = Registry("inner optimizer")
# Class decorator: makes an optimizer selectable by its name.
register_inner_optimizer = INNER_OPTIMIZERS.register


def make_inner_optimizer(name: str) -> InnerOptimizer:
    """A fresh optimizer for one inner loop."""
    return INNER_OPTIMIZERS.lookup(name)()


def step_size(lr: LearningRate, name: str) -> float | Tensor:
    """The step size for parameter ``name``: shared, or its own entry when learned per parameter."""
    return lr[name] if isinstance(lr, dict) else lr
