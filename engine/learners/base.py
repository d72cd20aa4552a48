"""The one interface every meta-learning algorithm implements, and the registry of algorithms.

A learner holds meta-parameters and offers two things:

* ``meta_loss(tasks)``: a differentiable loss over a batch of tasks whose gradient with respect to
  ``learner.params`` is the algorithm's meta-gradient (the trainer calls ``backward`` and steps
  ``learner.meta_optimizer()``);
* ``adapt(support_x, support_y, ways)``: adapts to one support set and returns an ``Adapted`` model
  with a per-step trace and ``predict_proba(query_x)``.

``adapt`` never writes to ``learner.params``: the app shares one loaded learner between sessions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import TrainConfig
from engine.data.tasks import sample_training_task
from engine.nets import BackboneConfig, Params, init_backbone
from engine.registry import Registry

if TYPE_CHECKING:
    from engine.data.omniglot import CharacterSet
    from engine.data.tasks import Task


@dataclass
class LearnerConfig:
    """Hyper-parameters shared by all learners; subclasses add their own fields.

    Every field becomes a ``--flag`` of ``python -m engine.train`` and is saved in checkpoints.
    """

    meta_lr: float = 1e-3
    # Annealing of the meta learning rate to this value over training (None: constant), along
    # ``meta_lr_schedule`` (engine.schedules: "linear" or "cosine"), after ``meta_lr_warmup`` steps
    # of linear warm-up from near zero.
    meta_lr_final: float | None = None
    meta_lr_schedule: str = "linear"
    meta_lr_warmup: int = 0
    meta_optimizer: str = "adam"


@dataclass(frozen=True)
class AdaptSettings:
    """Test-time inner-loop settings; ``None`` means the learner's own default."""

    steps: int | None = None
    lr: float | None = None
    # An inner optimizer's registered name (engine.optim); None: the learner's own (see
    # ``GradientLearner.default_optimizer``: plain "sgd" unless it trains with another).
    optimizer: str | None = None
    # Which weights adaptation may change, for learners that offer a choice (``finetune_modes``,
    # e.g. pretrain's "head" or "all"); None: the learner's own default. Others ignore it.
    finetune: str | None = None
    # Take back an inner step that raises the support loss (and halve the step size after it), so
    # a step size too large for a task cannot blow the weights up mid-loop; False: every step stands.
    undo_rising_steps: bool = True
    # The gradient learners' starting head: "zero" (every class equal) or "prototypes" (Proto-MAML,
    # Triantafillou et al. 2020: class k's weights 2*c_k and bias -||c_k||^2, c_k its mean support
    # embedding, so step 0 is ProtoNet on the learner's backbone). Others ignore it.
    head_init: str = "zero"
    # Test-time augmentation: the support set extended with this many augmented copies of each
    # image (engine.data.augment.augmented_support, seeded by the support set itself) before adapting.
    support_augment: int = 0


@dataclass(frozen=True)
class ResolvedSettings:
    """What ``adapt`` runs with some :class:`AdaptSettings`: every choice they leave open filled in
    from the learner's defaults (``Learner.resolve_settings``, the one place that does this).

    All None for learners without an inner loop."""

    steps: int | None = None
    # The step size shown to people: one number, "learned" for rates meta-learned per weight
    # (Meta-SGD), None without an inner loop.
    lr: float | str | None = None
    # What the inner optimizer is given: one float, or one (detached) tensor per weight.
    step_sizes: float | Params | None = None
    optimizer: str | None = None
    # Which weights adaptation changes, for learners with a choice (``finetune_modes``); else None.
    finetune: str | None = None
    # Whether a step that raises the support loss is taken back (None without an inner loop).
    undo_rising_steps: bool | None = None
    # The starting head (AdaptSettings.head_init) and augmented copies per support image (None without
    # an inner loop).
    head_init: str | None = None
    support_augment: int | None = None

    def summary(self) -> tuple[int | None, float | str | None, str | None]:
        """(steps, lr, optimizer), as the app and reports show them."""
        return self.steps, self.lr, self.optimizer


@dataclass(frozen=True)
class StepRecord:
    """The support set's loss and accuracy after ``step`` updates, and the time spent so far."""

    step: int
    loss: float
    accuracy: float
    elapsed_ms: float


@dataclass
class Adapted:
    """A model adapted to one support set."""

    ways: int
    trace: list[StepRecord]
    predict_logits: Callable[[Tensor, bool], Tensor]
    # Why the result should not be trusted, for the user: set when the inner loop diverged (then
    # ``diverged``) or the outputs are not finite numbers.
    warning: str | None = None
    adapt_ms: float = 0.0
    # What the inner loop reported (e.g. a Newton step that fell back to a gradient step, or steps
    # taken back because they raised the loss): information, not a failure.
    notes: list[str] = dataclasses.field(default_factory=list)
    # The inner loop diverged (non-finite or rising loss, no step lowering it, or saturated
    # probabilities after a blown-up step); ``warning`` says how.
    diverged: bool = False

    @torch.no_grad()
    def predict_proba(self, query_x: Tensor, transductive: bool = False) -> Tensor:
        """Per-class probabilities [Q, ways] for query images [Q,1,28,28].

        By default batch norm uses the support set's statistics, so each query's prediction is
        independent of the others (and one query works); ``transductive=True`` normalises with
        the query batch's own statistics, as in the MAML paper's evaluation.
        """
        return torch.softmax(self.predict_logits(query_x, transductive), dim=-1)


@dataclass
class MetaLoss:
    """The loss to differentiate, plus the batch's query metrics for logging."""

    loss: Tensor
    query_loss: float
    query_accuracy: float


@dataclass(frozen=True)
class PaperReference:
    """The paper an algorithm comes from, and the Omniglot figures of it that RESULTS.md sets beside ours."""

    citation: str  # "Finn et al. 2017"
    title: str
    url: str
    # How RESULTS.md's row names these figures, e.g. "first-order MAML (Finn et al. 2017)".
    label: str
    # Published Omniglot test accuracy (percent) by (ways, shots); empty where the paper reports none
    # comparable to ours (e.g. another architecture), and then no target is judged.
    figures: Mapping[tuple[int, int], float] = field(default_factory=dict)
    # Meta-training iterations of the paper's Omniglot run, where the paper states them.
    meta_steps: int | None = None
    # The figures normalise batch norm with the query batch, so ours is evaluated that way too.
    transductive: bool = False
    # The project's target for this algorithm: meet or beat the figures, not just come within a tolerance.
    must_match: bool = False


@dataclass(frozen=True)
class About:
    """What the app and RESULTS.md say about an algorithm, kept with its learner class."""

    summary: str  # 2-4 sentences: what it learns and how it adapts
    update_rule: str  # its adaptation (inner-loop) update as one formula, in plain text
    paper: PaperReference | None = None
    # RESULTS.md's note on the shipped run: what its table rows alone cannot say ("" for none).
    notes: str = ""


class Learner(ABC):
    """Base class of every algorithm. Subclasses set ``name``, ``config_class`` and implement
    ``meta_loss`` and ``adapt``."""

    name: ClassVar[str]
    config_class: ClassVar[type[LearnerConfig]] = LearnerConfig
    # Training defaults that differ from the trainer's (e.g. ProtoNet trains on more ways).
    train_defaults: ClassVar[dict[str, Any]] = {}
    # Whether adaptation runs gradient steps (and so honours AdaptSettings).
    has_inner_loop: ClassVar[bool] = True
    # The values ``AdaptSettings.finetune`` may take for this learner (empty: it has no such choice).
    finetune_modes: ClassVar[tuple[str, ...]] = ()
    # Its description, paper and published figures; every registered algorithm sets its own.
    about: ClassVar[About] = About(summary="", update_rule="")

    def __init__(self, config: LearnerConfig | None = None, backbone: BackboneConfig | None = None,
                 params: Params | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else self.config_class()
        self.backbone = backbone if backbone is not None else BackboneConfig()
        if params is None:
            params = self.init_params(torch.Generator().manual_seed(seed))
        self.params: Params = {name: value.detach().clone().requires_grad_(True) for name, value in params.items()}

    # -- parameters -------------------------------------------------------------------------
    def init_params(self, generator: torch.Generator) -> Params:
        """Fresh meta-parameters; learners with extra learned tensors extend this."""
        return init_backbone(self.backbone, generator)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def to(self, device: torch.device | str) -> "Learner":
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in self.params.items()}
        return self

    def meta_optimizer(self) -> torch.optim.Optimizer:
        params = list(self.params.values())
        if self.config.meta_optimizer == "adam":
            return torch.optim.Adam(params, lr=self.config.meta_lr)
        if self.config.meta_optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.config.meta_lr)
        raise ValueError(f"unknown meta optimizer {self.config.meta_optimizer!r}")

    def detached_params(self) -> Params:
        """Meta-parameters cut from the meta-graph: a safe starting point for adaptation (every
        update creates new tensors, so the shared meta-parameters are never written)."""
        return {name: value.detach() for name, value in self.params.items()}

    # -- training data -----------------------------------------------------------------------
    @classmethod
    def config_for_data(cls, config: LearnerConfig, chars: "CharacterSet", train: TrainConfig) -> LearnerConfig:
        """``config`` completed from the training data before a fresh run builds the learner (e.g. the
        number of classes of a global classifier head); the result is what checkpoints save."""
        return config

    def training_batch(self, chars: "CharacterSet", train: "TrainConfig", rng: np.random.Generator) -> list["Task"]:
        """One meta-step's batch for ``meta_loss``, all drawn from ``rng``: ``training_ways`` once, then
        ``batch_items`` items in turn. (The trainer draws the same parts from streams keyed by step and
        item instead, so that processes can each draw their share: ``engine.data.loader``.)"""
        ways = self.training_ways(train, rng)
        return [self.training_item(chars, train, ways, rng) for _ in range(self.batch_items(train))]

    def batch_items(self, train: "TrainConfig") -> int:
        """How many items (tasks, for most learners) one step's batch holds (default: ``meta_batch``).

        ``meta_loss`` must be the mean of independent per-item terms, so that a distributed run can split
        a batch across processes and recover the whole batch's gradient (``engine.distributed``)."""
        return train.meta_batch

    # The command-line flag that sets ``batch_items``, for messages.
    batch_items_flag: ClassVar[str] = "--meta-batch"

    def training_ways(self, train: "TrainConfig", rng: np.random.Generator) -> int:
        """The number of classes of one meta-step's tasks, drawn once a step (default: always ``--ways``)."""
        return train.ways

    def training_item(self, chars: "CharacterSet", train: "TrainConfig", ways: int,
                      rng: np.random.Generator) -> "Task":
        """One item of a step's batch, drawn from ``rng`` (default: a ``ways``-way ``shots``-shot task, from one
        alphabet with probability ``--within-alphabet``)."""
        return sample_training_task(chars, ways, train.shots, train.queries, rng, rotations=train.rotations,
                                    within_alphabet=train.within_alphabet)

    # -- the algorithm -----------------------------------------------------------------------
    @abstractmethod
    def meta_loss(self, tasks: Sequence["Task"]) -> MetaLoss:
        """Loss over a batch of tasks whose gradient w.r.t. ``self.params`` is the meta-gradient."""

    @abstractmethod
    def adapt(self, support_x: Tensor, support_y: Tensor, ways: int,
              settings: AdaptSettings | None = None) -> Adapted:
        """Adapt to a support set (images [N*K,1,28,28], labels 0..ways-1)."""

    # What ``adapt`` runs when ``AdaptSettings`` leave a choice open (None: no inner loop).
    def default_test_steps(self) -> int | None:
        """Inner steps ``adapt`` takes when the settings give none."""
        return None

    def default_optimizer(self) -> str | None:
        """The inner optimizer ``adapt`` uses when the settings name none."""
        return None

    def inner_lr(self, settings: AdaptSettings | None = None) -> float | Params | None:
        """The inner loop's step size with ``settings`` (one float, or one tensor per weight)."""
        return None if settings is None else settings.lr

    def finetune_mode(self, settings: AdaptSettings | None) -> str | None:
        """Which weights adaptation changes with ``settings`` (None: the learner offers no choice)."""
        return None

    def resolve_settings(self, settings: AdaptSettings | None = None) -> ResolvedSettings:
        """What ``adapt(..., settings)`` runs: ``adapt`` itself, comparisons, evaluation and the app
        all read it from here. A learner without an inner loop ignores the settings."""
        return ResolvedSettings()

    def describe(self) -> dict[str, Any]:
        return {"algorithm": self.name, "config": dataclasses.asdict(self.config),
                "backbone": dataclasses.asdict(self.backbone)}


LEARNERS: Registry[type[Learner]] = Registry("algorithm")
# Class decorator: makes a learner available by its name to training, evaluation, benchmarks and the app.
register_learner = LEARNERS.register
get_learner_class = LEARNERS.lookup


class Stopwatch:
    """Milliseconds since construction (synchronising CUDA so GPU timings are honest)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()

    def ms(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - self.start) * 1000.0


def non_finite_warning(trace: Sequence[StepRecord]) -> str | None:
    """For learners without an inner loop (nothing can diverge): a warning when the support set's
    loss is not a finite number, i.e. the network's outputs are not."""
    if all(math.isfinite(record.loss) for record in trace):
        return None
    return "Its outputs on the support set are not finite numbers (NaN/inf): the model cannot be trusted here."


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def query_meta_loss(logits_and_labels: Sequence[tuple[Tensor, Tensor]]) -> MetaLoss:
    """Mean query cross-entropy over a batch of tasks, with the batch's query metrics."""
    losses = [F.cross_entropy(logits, labels) for logits, labels in logits_and_labels]
    accuracies = [accuracy(logits, labels) for logits, labels in logits_and_labels]
    query_loss, query_accuracy = mean_metrics(losses, accuracies)
    return MetaLoss(loss=torch.stack(losses).mean(), query_loss=query_loss, query_accuracy=query_accuracy)


def mean_metrics(losses: list[Tensor], accuracies: list[float]) -> tuple[float, float]:
    return float(torch.stack([l.detach() for l in losses]).mean()), sum(accuracies) / len(accuracies)


__all__ = [
    "About", "AdaptSettings", "Adapted", "LEARNERS", "Learner", "LearnerConfig", "MetaLoss", "PaperReference",
    "ResolvedSettings", "StepRecord", "Stopwatch", "accuracy", "get_learner_class", "mean_metrics", "non_finite_warning",
    "query_meta_loss",
    "register_learner",
]
