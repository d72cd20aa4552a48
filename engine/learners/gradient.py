"""What every gradient-based learner shares: the inner loop and test-time adaptation.

An algorithm in this family only says how it turns inner loops into a meta-loss; MAML, first-order
MAML and Reptile differ only there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine import kernels
from engine.config import TrainConfig
from engine.data.augment import augmented_support
from engine.data.tasks import Task
from engine.learners.base import (
    AdaptSettings, Adapted, Learner, LearnerConfig, ResolvedSettings, StepRecord, Stopwatch, accuracy,
)
from engine.nets import BackboneConfig, Params, classify, embed, zero_head
from engine.optim import INNER_OPTIMIZERS, InnerOptimizer, InnerProblem, LearningRate, make_inner_optimizer

# Meta-parameters that are not network weights (e.g. Meta-SGD's learning rates) carry this prefix;
# they shape the inner loop but are not adapted by it.
META_PREFIX = "meta."

# A support loss this many times the initial one, at any step, counts as divergence.
DIVERGENCE_FACTOR = 2.0
# Support logits further apart than this (within one image) mean saturated probabilities: past ~88
# exp(-gap) underflows in float32, so another class's probability is exactly 0. Only a blown-up step
# gets there (lr 1000: gaps of 10^4 and more); the shipped checkpoints' default adaptations were
# measured under 45 on 200 5-way 5-shot Omniglot and digit tasks each (tests/test_divergence.py
# checks they never reach this).
SATURATED_LOGIT_GAP = 100.0
# Each step the undo guard takes back halves the step size; this many halvings (the step size cut to
# 1/32 of the one asked for) say that the step size asked for diverges.
DIVERGED_HALVINGS = 5
# AdaptSettings.head_init's values: the zero head, or Proto-MAML's prototype head (``prototype_head``).
HEAD_INITS = ("zero", "prototypes")


@dataclass
class GradientConfig(LearnerConfig):
    inner_steps: int = 5
    inner_lr: float = 0.4
    # Defaults for adaptation at test time (the app and evaluation); the app can override them.
    test_inner_steps: int = 10
    test_inner_lr: float | None = None  # None: the training inner_lr
    # Each meta-step's tasks have a number of classes drawn from min_train_ways..--ways (None: always
    # --ways), so one checkpoint practises the app's range of N; the zero head fits any N. One shape per
    # meta-step keeps the batch's one forward pass (MAML.one_pass_query_logits).
    min_train_ways: int | None = None


GradientTransform = Callable[[Params], Params]


def inner_loop(params: Params, problem: InnerProblem, steps: int, lr: LearningRate, optimizer: InnerOptimizer,
               transform: GradientTransform | None = None) -> Params:
    """``steps`` optimizer steps on the support loss, each gradient first passed through
    ``transform`` if given (Meta-Curvature). With ``problem.create_graph`` the result stays a
    differentiable function of the starting ``params`` (second-order MAML)."""
    for _ in range(steps):
        evaluation = optimizer.reuse(params) or problem.evaluate(params)
        grads = evaluation.gradient()
        if transform is not None:
            grads = transform(grads)
        params = optimizer.step(params, grads, evaluation.loss, lr, problem)
    return params


def query_logits(learner: "GradientLearner", fast: Params, task: Task) -> Tensor:
    """A task's query logits at fast weights ``fast``, batch norm normalised by the support set's
    statistics: how every gradient learner scores its queries in meta-training."""
    num_support = task.support_x.shape[0]
    both = torch.cat([task.support_x, task.query_x])
    return classify(fast, both, learner.backbone, stats_count=num_support)[num_support:]


def straight_through(meta_params: Params, adapted: Params) -> Params:
    """``adapted``'s values, with an identity Jacobian to ``meta_params``: a query loss on the result
    back-propagates its gradient at the adapted weights straight onto the meta-parameters
    (the first-order MAML approximation). Entries without a meta-parameter (the head) stay constant."""
    return {
        name: meta_params[name] + (value.detach() - meta_params[name].detach()) if name in meta_params else value.detach()
        for name, value in adapted.items()
    }


def frozen_entries(lr: LearningRate, optimizer: str, transform: GradientTransform | None) -> frozenset[str]:
    """Entries that plain SGD leaves exactly where they are (step size 0, no gradient transform):
    their gradient is never used, so the inner loop need not compute it."""
    if optimizer != "sgd" or transform is not None or not isinstance(lr, dict):
        return frozenset()
    return frozenset(name for name, rate in lr.items() if not torch.as_tensor(rate).any())


def divergence_warning(trace: list[StepRecord]) -> str | None:
    """A warning when the support loss rose far above its start at any step. Checked over the whole
    loop, not only its end: a step that blows the weights up can leave a collapsed network (dead
    ReLUs, uniform predictions) whose final loss looks harmless."""
    if len(trace) < 2:
        return None
    start = trace[0].loss
    peak = max(trace[1:], key=lambda record: record.loss)
    if peak.loss <= DIVERGENCE_FACTOR * max(start, 1e-3):
        return None
    return (f"The inner loop is diverging: support loss rose from {start:.3g} to {peak.loss:.3g} at step "
            f"{peak.step} (final {trace[-1].loss:.3g}). Lower the learning rate.")


def logit_gap(logits: Tensor) -> float:
    """The largest gap between two classes' logits for one image: how saturated the probabilities are."""
    if logits.numel() == 0:
        return 0.0
    return float((logits.max(dim=-1).values - logits.min(dim=-1).values).max())


def saturation_warning(gap: float) -> str | None:
    """A warning when the adapted weights' support logits are saturated (``SATURATED_LOGIT_GAP``)."""
    if gap <= SATURATED_LOGIT_GAP:
        return None
    return (f"The inner loop diverged: a step blew the weights up, so the probabilities are saturated (logits "
            f"{gap:.3g} apart) and the confidences mean nothing. Lower the learning rate.")


def stalled_warning(trace: list[StepRecord]) -> str | None:
    """A warning when steps were taken but none lowered the support loss (every one overshot and was
    refused, by a line search or the undo guard)."""
    if len(trace) < 2 or trace[-1].loss < trace[0].loss:
        return None
    return (f"The inner loop diverged: none of its {trace[-1].step} steps lowered the support loss (each one "
            "overshot and was refused), so the weights are where they started. Lower the learning rate.")


def prototype_head(support_features: Tensor, support_y: Tensor, ways: int) -> Params:
    """Proto-MAML's head (Triantafillou et al. 2020): weights 2*c_k, bias -||c_k||^2 for the mean
    support embedding c_k of class k. Its logits 2 c_k.f - ||c_k||^2 = ||f||^2 - ||f - c_k||^2 differ from
    ProtoNet's -||f - c_k||^2 by a per-image constant: the same probabilities."""
    one_hot = torch.nn.functional.one_hot(support_y, ways).to(support_features.dtype)
    centres = (one_hot.T @ support_features) / one_hot.sum(dim=0).clamp_min(1.0).unsqueeze(1)
    return {"head.weight": 2.0 * centres, "head.bias": -centres.pow(2).sum(dim=1)}


def scaled(lr: LearningRate, factor: float) -> LearningRate:
    """``lr`` times ``factor``, per entry for per-weight rates."""
    if factor == 1.0:
        return lr
    if isinstance(lr, dict):
        return {name: rate * factor for name, rate in lr.items()}
    return lr * factor


def finished_adaptation(kept: Params, kept_pass: kernels.SupportPass | None, trace: list[StepRecord], ways: int,
                        support_x: Tensor, backbone: BackboneConfig, adapt_ms: float, notes: list[str],
                        halvings: int = 0, warning: str | None = None) -> Adapted:
    """The :class:`Adapted` model of an inner loop that ended at ``kept`` (its last evaluation
    ``kept_pass``), with the notes and divergence warnings ``GradientLearner.adapt`` documents: one
    place, so that the batched inner loop (``engine.batched``) reports exactly what it reports."""
    notes = list(notes)
    if halvings:
        notes.append(f"{halvings} step{'s' if halvings > 1 else ''} raised the support loss and "
                     f"{'were' if halvings > 1 else 'was'} taken back, halving the step size each time "
                     f"(to 1/{2 ** halvings} of the one set).")
    if warning is None:
        warning = divergence_warning(trace)
    if warning is None and kept_pass is not None:
        warning = saturation_warning(logit_gap(kept_pass.logits.detach()))
    if warning is None and halvings >= DIVERGED_HALVINGS:
        warning = (f"The inner loop diverged at this step size: {halvings} steps raised the support loss and "
                   f"were taken back (the step size cut to 1/{2 ** halvings}). Lower the learning rate.")
    if warning is None:
        warning = stalled_warning(trace)
    final = {k: v.detach() for k, v in kept.items()}
    kept_stats = kept_pass.stats if kept_pass is not None else None
    num_support = support_x.shape[0]

    def predict_logits(query_x: Tensor, transductive: bool) -> Tensor:
        if transductive:
            return classify(final, query_x, backbone)
        if kept_stats is not None:  # the support set's statistics at these weights are known
            return kernels.logits_with_stats(final, query_x, backbone, kept_stats)
        return classify(final, torch.cat([support_x, query_x]), backbone, stats_count=num_support)[num_support:]

    return Adapted(ways=ways, trace=trace, predict_logits=predict_logits, warning=warning, adapt_ms=adapt_ms,
                   notes=notes, diverged=warning is not None)


class GradientLearner(Learner):
    """Base for learners that adapt by gradient steps from meta-learned weights plus a zero head."""

    config: GradientConfig
    config_class = GradientConfig

    def training_ways(self, train: TrainConfig, rng: np.random.Generator) -> int:
        low = self.config.min_train_ways
        if low is None:
            return train.ways
        if not 2 <= low <= train.ways:
            raise ValueError(f"min_train_ways ({low}) must lie in 2..--ways ({train.ways})")
        return int(rng.integers(low, train.ways + 1))

    def requested_lr(self, settings: AdaptSettings | None) -> float | None:
        """The step size ``settings`` ask for: theirs, else the default of an inner optimizer they
        name in place of this learner's own (Adam's 1e-3: this learner's gradient-descent step size
        would throw it off), else None."""
        if settings is None:
            return None
        if settings.lr is not None:
            return settings.lr
        if settings.optimizer is not None and settings.optimizer != self.default_optimizer():
            return INNER_OPTIMIZERS.lookup(settings.optimizer).default_lr
        return None

    def inner_lr(self, settings: AdaptSettings | None = None) -> LearningRate:
        """Step size of the inner loop (Meta-SGD overrides this with learned per-weight rates)."""
        requested = self.requested_lr(settings)
        if requested is not None:
            return requested
        if settings is not None and self.config.test_inner_lr is not None:
            return self.config.test_inner_lr
        return self.config.inner_lr

    def default_test_steps(self) -> int:
        """Inner steps adaptation takes when the settings give none (``test_inner_steps``)."""
        return self.config.test_inner_steps

    def default_optimizer(self) -> str:
        """The inner optimizer adaptation uses when the settings name none: the one meta-training used."""
        return "sgd"

    def adapt_step_sizes(self, settings: AdaptSettings | None = None) -> LearningRate:
        """The step sizes ``adapt`` uses: ``inner_lr`` unless a learner spreads it over its weights
        differently at test time (pretrain: zero or a smaller rate for the backbone)."""
        return self.inner_lr(settings)

    def resolve_settings(self, settings: AdaptSettings | None = None) -> ResolvedSettings:
        settings = settings or AdaptSettings()
        if settings.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {settings.head_init!r}")
        if settings.support_augment < 0:
            raise ValueError(f"support_augment must be >= 0, got {settings.support_augment}")
        shown = self.inner_lr(settings)
        lr: float | str
        if isinstance(shown, dict):
            lr = "learned"
        else:
            lr = float(shown)
        step_sizes = self.adapt_step_sizes(settings)
        if isinstance(step_sizes, dict):  # learned rates: adaptation needs their values, not their graph
            step_sizes = {name: rate.detach() for name, rate in step_sizes.items()}
        return ResolvedSettings(steps=self.default_test_steps() if settings.steps is None else settings.steps,
                                lr=lr, step_sizes=step_sizes, optimizer=settings.optimizer or self.default_optimizer(),
                                finetune=self.finetune_mode(settings), undo_rising_steps=settings.undo_rising_steps,
                                head_init=settings.head_init, support_augment=settings.support_augment)

    def gradient_transform(self, meta_params: Params) -> GradientTransform | None:
        """A meta-learned map applied to every inner-loop gradient (None: the gradient as it is)."""
        return None

    def inner_problem(self, support_x: Tensor, support_y: Tensor, start: Params,
                      create_graph: bool = False) -> InnerProblem:
        """The problem the inner loop solves from ``start`` (iMAML adds a proximal term to it)."""
        return InnerProblem(support_x, support_y, self.backbone, create_graph)

    def initial_weights(self, meta_params: Params, ways: int) -> Params:
        """The network part of ``meta_params`` plus a fresh zero head for ``ways`` classes."""
        network = {k: v for k, v in meta_params.items() if not k.startswith(META_PREFIX)}
        head = {k: v.requires_grad_(True) for k, v in zero_head(ways, self.backbone, next(iter(network.values()))).items()}
        return {**network, **head}

    def detached_start(self, ways: int) -> Params:
        """Starting fast weights cut from the meta-graph (inner loops that need no meta-gradient
        through them): the meta-parameters' values plus a zero head, all requiring grad."""
        return self.initial_weights({k: v.requires_grad_(True) for k, v in self.detached_params().items()}, ways)

    def prototype_start(self, start: Params, support_x: Tensor, support_y: Tensor, ways: int) -> Params:
        """``start`` with its zero head replaced by ``prototype_head`` of the support embedding at
        ``start``'s backbone (batch statistics of the support set, as the inner loop's support pass)."""
        network = {k: v.detach() for k, v in start.items() if not k.startswith("head.")}
        with torch.no_grad():
            if kernels.applies(network, self.backbone, head=False):
                features, _ = kernels.support_embedding(network, support_x, self.backbone)
            else:
                features = embed(network, support_x, self.backbone)
        head = {k: v.requires_grad_(True) for k, v in prototype_head(features, support_y, ways).items()}
        return {**{k: v for k, v in start.items() if not k.startswith("head.")}, **head}

    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int, settings: AdaptSettings | None = None) -> Adapted:
        """``steps`` optimizer steps on the support loss from the meta-learned weights and a zero head
        (or, with ``head_init="prototypes"``, Proto-MAML's prototype head), on the support set extended
        by ``support_augment`` augmented copies of each image (the trace is on that extended set).

        With ``undo_rising_steps`` (the default) a step that raises the support loss (or makes it
        non-finite) is taken back and the step size halved for the steps after it, so the loop keeps
        the best weights it found; ``Adapted.notes`` says how often. Divergence is reported in
        ``Adapted.warning`` (and ``diverged``): a non-finite or rising loss (without the guard), no
        step lowering the loss, probabilities saturated by a blown-up step, or the guard having to cut
        the step size ``DIVERGED_HALVINGS`` times.
        """
        resolved = self.resolve_settings(settings)
        steps, lr, optimizer_name = resolved.steps, resolved.step_sizes, resolved.optimizer
        assert steps is not None and lr is not None and optimizer_name is not None
        assert resolved.support_augment is not None
        support_x, support_y = augmented_support(support_x, support_y, resolved.support_augment)
        optimizer = make_inner_optimizer(optimizer_name)
        transform = self.gradient_transform(self.detached_params())
        watch = Stopwatch(self.device)
        trace: list[StepRecord] = []
        warning: str | None = None
        frozen = frozen_entries(lr, optimizer_name, transform)
        frozen_backbone = kernels.FrozenBackbone() if frozen else None
        last_pass = kernels.LastBackbonePass()
        halvings = 0  # steps the guard took back
        with torch.enable_grad():
            fast = self.detached_start(ways)
            if resolved.head_init == "prototypes":
                # Not the zero head: the fused kernels' zero-head shortcut (no step-0 backbone backward)
                # tests the head's gradient itself, so it is not taken here.
                fast = self.prototype_start(fast, support_x, support_y, ways)
            problem = self.inner_problem(support_x, support_y, fast)
            kept: Params = fast
            kept_pass: kernels.SupportPass | None = None
            kept_loss = math.inf
            for step in range(steps + 1):
                # The last evaluation is only for the trace: no gradient.
                evaluation = optimizer.reuse(fast) or problem.evaluate(
                    fast, with_grads=step < steps, frozen=frozen, frozen_backbone=frozen_backbone,
                    last_pass=last_pass)
                loss_value = evaluation.loss.item()
                rose = not math.isfinite(loss_value) or loss_value > kept_loss
                if rose and kept_pass is not None and resolved.undo_rising_steps:
                    # Back to the weights before this step; smaller steps from here on.
                    halvings += 1
                    fast, evaluation, loss_value = kept, kept_pass, kept_loss
                elif not math.isfinite(loss_value):
                    warning = (f"The inner loop diverged at step {step} (loss is {loss_value}); predictions use "
                               f"the weights after step {step - 1}. Lower the learning rate or the number of steps.")
                    break
                kept, kept_pass, kept_loss = fast, evaluation, loss_value
                trace.append(StepRecord(step, loss_value, accuracy(evaluation.logits, support_y), watch.ms()))
                if step == steps:
                    break
                grads = evaluation.gradient()
                if transform is not None:
                    grads = transform(grads)
                fast = optimizer.step(fast, grads, evaluation.loss.detach(), scaled(lr, 0.5 ** halvings), problem)
                fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        return finished_adaptation(kept, kept_pass, trace, ways, support_x, self.backbone, watch.ms(),
                                   list(optimizer.messages), halvings, warning)
