"""The inner-loop optimizer interface and its registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from engine import kernels
from engine.kernels import SupportPass
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

    def has_extra_terms(self) -> bool:
        """Whether ``objective`` adds terms to the support cross-entropy (iMAML's penalty)."""
        return type(self).objective is not InnerProblem.objective

    def evaluate(self, params: Params, with_grads: bool = True, frozen: frozenset[str] = frozenset(),
                 frozen_backbone: kernels.FrozenBackbone | None = None,
                 last_pass: kernels.LastBackbonePass | None = None) -> SupportPass:
        """The objective at ``params``, its logits and (if ``with_grads``) its gradient w.r.t. every
        entry of ``params``: what one inner step needs. Without ``with_grads`` the gradient can still
        be had later from the same evaluation (``SupportPass.gradient``) at the cost of the backward
        pass alone.

        Without ``create_graph`` and for the plain Conv-4, the fused kernels compute the
        cross-entropy's gradient without building a graph (they also return the support set's
        batch-norm statistics, for predictions); extra objective terms are added by autograd on
        those terms alone. Otherwise (a differentiable step, or another network) plain autograd.
        ``frozen`` / ``frozen_backbone``: entries whose gradient the caller does not use, see
        ``kernels.support_pass`` (only the fused path makes use of them), as of ``last_pass``.
        """
        if not self.create_graph and kernels.applies(params, self.backbone):
            result = kernels.support_pass(params, self.inputs, self.labels, self.backbone, with_grads, frozen,
                                          frozen_backbone, last_pass)
            return self._add_extra_terms(params, result) if self.has_extra_terms() else result
        with torch.enable_grad():
            if not self.create_graph:  # the gradient's value is all that is needed: fresh leaves
                params = {name: value.detach().requires_grad_(True) for name, value in params.items()}
            logits = self.logits(params)
            loss = self.objective(params, logits)

        def gradient() -> Params:
            with torch.enable_grad():
                values = torch.autograd.grad(loss, list(params.values()), create_graph=self.create_graph)
            return dict(zip(params, values))

        if with_grads:
            return SupportPass(loss, logits, gradient(), None)
        return SupportPass(loss, logits, None, None, gradient)

    def extra_terms(self, params: Params, logits: Tensor) -> tuple[Tensor, Params]:
        """The value of ``objective``'s terms beyond the cross-entropy at ``params`` and their
        gradient w.r.t. every entry (no graph). By autograd here; a subclass whose terms have a
        closed-form gradient overrides this, since the fused inner loop calls it at every step."""
        leaves = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        logits = logits.detach()
        with torch.enable_grad():
            extra = self.objective(leaves, logits) - F.cross_entropy(logits, self.labels)
            if not extra.requires_grad:
                return extra.detach(), {name: torch.zeros_like(value) for name, value in leaves.items()}
            grads = torch.autograd.grad(extra, list(leaves.values()), allow_unused=True)
        return extra.detach(), {name: torch.zeros_like(leaves[name]) if grad is None else grad
                                for name, grad in zip(leaves, grads)}

    def _add_extra_terms(self, params: Params, result: SupportPass) -> SupportPass:
        """``result`` (the cross-entropy alone) plus the objective's other terms and their gradient."""
        value, extra_grads = self.extra_terms(params, result.logits)

        def total(grads: Params) -> Params:
            return {name: grads[name] + extra_grads[name] for name in grads}

        if result.grads is not None:
            return SupportPass(result.loss + value, result.logits, total(result.grads), result.stats)
        return SupportPass(result.loss + value, result.logits, None, result.stats,
                           lambda: total(result.gradient()))


class InnerOptimizer(ABC):
    """One inner loop's optimizer; a fresh instance per adaptation, so it may keep state.

    ``messages`` collects notes for the user about this inner loop (e.g. a second-order step that
    fell back to a gradient step), each recorded once, in order.
    """

    name: ClassVar[str]
    # The step size to use when this optimizer is picked without one, for optimizers whose step
    # size lives on another scale than gradient descent's (Adam moves each weight by about it);
    # None: the learner's own.
    default_lr: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.messages: list[str] = []

    def note(self, message: str) -> None:
        """Record ``message`` for the user unless the same text was already recorded."""
        if message not in self.messages:
            self.messages.append(message)

    def reuse(self, params: Params) -> SupportPass | None:
        """The evaluation of the inner objective at exactly ``params`` (the weights the last step
        returned) if this optimizer already made it while stepping, for the inner loop to use
        instead of evaluating again; None otherwise (the default)."""
        return None

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
