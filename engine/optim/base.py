"""The inner-loop optimizer interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from engine.nets import BackboneConfig, Params, classify
from engine.registry import Registry

# One step size for every tensor, or one per parameter entry (Meta-SGD learns a tensor per weight).
LearningRate = float | Params


@dataclass(frozen=True)
class InnerProblem:
    """The inner problem an optimizer works on, beyond the gradient it is handed: the support set
    and the network, so second-order optimizers can re-evaluate logits, the loss, curvature or
    layer activations at any fast weights; and whether the step must stay differentiable (for a
    second-order meta-gradient)."""

    inputs: Tensor
    labels: Tensor
    backbone: BackboneConfig
    create_graph: bool = False

    def logits(self, params: Params) -> Tensor:
        return classify(params, self.inputs, self.backbone)

    def objective(self, params: Params, logits: Tensor) -> Tensor:
        """The inner loop's objective given the logits at ``params``: mean support cross-entropy
        (subclasses add terms, e.g. iMAML's proximal penalty)."""
        return F.cross_entropy(logits, self.labels)

    def loss(self, params: Params) -> Tensor:
        return self.objective(params, self.logits(params))


class InnerOptimizer(ABC):
    """One inner loop's optimizer; a fresh instance per adaptation, so it may keep state.

    ``messages`` collects notes for the user about this inner loop (e.g. a second-order step that
    fell back to a gradient step), each recorded once, in order.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self.messages: list[str] = []

    def note(self, message: str) -> None:
        """Record ``message`` for the user unless the same text was already recorded."""
        if message not in self.messages:
            self.messages.append(message)

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
