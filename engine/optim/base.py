"""The inner-loop optimizer interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from torch import Tensor

from engine.nets import Params

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


INNER_OPTIMIZERS: dict[str, type[InnerOptimizer]] = {}

OptimizerClass = TypeVar("OptimizerClass", bound=type[InnerOptimizer])


def register_inner_optimizer(cls: OptimizerClass) -> OptimizerClass:
    """Class decorator: make ``cls`` selectable by ``cls.name``."""
    if cls.name in INNER_OPTIMIZERS:
        raise ValueError(f"inner optimizer {cls.name!r} registered twice")
    INNER_OPTIMIZERS[cls.name] = cls
    return cls


def make_inner_optimizer(name: str) -> InnerOptimizer:
    try:
        return INNER_OPTIMIZERS[name]()
    except KeyError:
        raise ValueError(f"unknown inner optimizer {name!r}; choose from {sorted(INNER_OPTIMIZERS)}") from None


def step_size(lr: LearningRate, name: str) -> float | Tensor:
    """The step size for parameter ``name``: shared, or its own entry when learned per parameter."""
    return lr[name] if isinstance(lr, dict) else lr
