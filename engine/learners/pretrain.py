"""The transfer-learning baseline: pre-train, then fine-tune (e.g. Chen et al. 2019, "A Closer Look
at Few-shot Classification"; Tian et al. 2020, "Rethinking Few-Shot Image Classification").

    training:    backbone + one linear head over every training class (all background-split
                 characters but the validation alphabets, each rotation its own class: 788 x 4)
                 trained as an ordinary classifier on minibatches of images with global labels
    adaptation:  the global head is dropped; a fresh zero head of N outputs is fitted to the support
                 set by gradient steps (any registered inner optimizer), either the head alone
                 (``finetune="head"``: a linear probe of the pre-trained features) or every layer
                 with the backbone's step scaled by ``backbone_lr_scale`` (``finetune="all"``)

Nothing is meta-learned: it is the reference point that shows what episodic meta-training adds.
The global head is stored under the ``meta.`` prefix, so the gradient learners' machinery never
treats it as a fast weight, and its size (``num_classes``) is read from the training data when a
run starts and saved in the configuration, so ``load_learner`` rebuilds it. The fine-tuning mode
is the configuration's default and can be chosen per adaptation (``AdaptSettings.finetune``,
``engine.evaluate --finetune``, the app's sidebar) without retraining.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import TrainConfig
from engine.data.tasks import ROTATIONS, Task
from engine.learners.base import (
    About, AdaptSettings, LearnerConfig, MetaLoss, PaperReference, query_meta_loss, register_learner,
)
from engine.learners.gradient import META_PREFIX, GradientConfig, GradientLearner
from engine.nets import Params, embed
from engine.optim import LearningRate

if TYPE_CHECKING:
    from engine.data.omniglot import CharacterSet

GLOBAL_HEAD = META_PREFIX + "classifier."  # the training-time head over all classes
HEAD_NAMES = ("head.weight", "head.bias")  # the fresh head fitted at adaptation
FINETUNE_MODES = ("head", "all")
# Omniglot's training classes: 788 background characters outside the validation alphabets, x 4
# rotations. engine.train sets the real count from the data; this default only sizes learners built
# without data (tests, the app's placeholder checkpoints).
OMNIGLOT_TRAIN_CLASSES = 788 * ROTATIONS


@dataclass
class PretrainConfig(GradientConfig):
    """``meta_lr`` is the classifier's learning rate; ``inner_steps`` and ``min_train_ways`` are unused
    (no inner loop or episodes in training); ``inner_lr`` / ``test_inner_*`` set the fine-tuning steps
    at adaptation."""

    num_classes: int = OMNIGLOT_TRAIN_CLASSES
    batch_size: int = 128  # images per labelled batch
    # Labelled batches per training step, each with its own batch-norm statistics, the loss their mean:
    # the items a distributed run splits across processes (one each is ordinary data-parallel training).
    batches: int = 1
    finetune: str = "head"  # default at adaptation: "head" or "all"
    backbone_lr_scale: float = 0.1  # the backbone's step relative to the head's with "all"
    # Fitting the fresh head only part of the way is what works: on a 64-channel checkpoint (5,000
    # steps), 10 steps at 0.02-0.1 scored 92.5-92.7% on 5-way 1-shot validation tasks, at 0.5 87.2%.
    inner_lr: float = 0.1

    def __post_init__(self) -> None:  # fail at the command line, not at the first validation
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        if self.num_classes < 1 or self.batch_size < 1 or self.batches < 1 or self.backbone_lr_scale < 0:
            raise ValueError("pretrain needs num_classes >= 1, batch_size >= 1, batches >= 1 and "
                             "backbone_lr_scale >= 0")


def class_count(chars: "CharacterSet", rotations: bool) -> int:
    """Global classes in ``chars``: one per character, or per (character, rotation)."""
    return chars.num_classes * (ROTATIONS if rotations else 1)


@functools.lru_cache(maxsize=4)
def class_names(chars: "CharacterSet", rotations: bool) -> tuple[str, ...]:
    """The name of every global class, indexed by global label (as ``sample_task`` names them)."""
    turns = range(ROTATIONS) if rotations else range(1)
    return tuple(name + (f"@{k * 90}" if k else "") for name in chars.characters for k in turns)


def labelled_batch(chars: "CharacterSet", size: int, rng: np.random.Generator, rotations: bool) -> Task:
    """``size`` random images with global labels (label = character x 4 + quarter turns, as in
    ``sample_task``), as a Task with an empty support set: every image is a query of the
    ``class_count``-way classification problem."""
    labels = rng.integers(class_count(chars, rotations), size=size)
    drawings = rng.integers(chars.drawings_per_class, size=size)
    characters, turns = (labels // ROTATIONS, labels % ROTATIONS) if rotations else (labels, np.zeros_like(labels))
    images = chars.images[characters, drawings]  # [size, 28, 28], a copy
    for k in range(1, ROTATIONS):
        turned = turns == k
        if turned.any():
            images[turned] = np.rot90(images[turned], k=k, axes=(1, 2))
    x = torch.from_numpy(images.astype(np.float32) * np.float32(1.0 / 255.0)).unsqueeze(1)
    return Task(support_x=x[:0], support_y=torch.zeros(0, dtype=torch.int64), query_x=x,
                query_y=torch.from_numpy(labels.astype(np.int64)), ways=class_count(chars, rotations), shots=0,
                class_names=class_names(chars, rotations))


def global_logits(params: Params, x: Tensor, learner: "Pretrain") -> Tensor:
    """Logits of the global classifier; batch norm with the whole batch's statistics, as an
    ordinary classifier trains (statistics of smaller groups, closer to a support set's, were no
    better: 0.79-0.81 vs 0.83 validation accuracy after 1500 steps at 32 channels)."""
    return F.linear(embed(params, x, learner.backbone), params[GLOBAL_HEAD + "weight"], params[GLOBAL_HEAD + "bias"])


@register_learner
class Pretrain(GradientLearner):
    name = "pretrain"
    config: PretrainConfig
    config_class = PretrainConfig
    finetune_modes = FINETUNE_MODES
    # Ordinary classification: the episode settings (ways, shots, queries, meta_batch) are unused;
    # validation still adapts on 5-way 1-shot tasks.
    train_defaults = {"meta_steps": 10000, "val_every": 500}
    about = About(
        summary="The transfer-learning baseline, with nothing meta-learned: the network is trained as an ordinary "
                "classifier over every training class, then a new zero head is fitted to each task's support "
                "set by gradient steps, on the frozen features or on every layer. It shows what episodic "
                "meta-training adds.",
        update_rule="w_{k+1} = w_k − α ∇_w L_support(w_k),  w: a zero head on f_θ's features (or all layers)",
        # Its experiments use other backbones and benchmarks, so no figures of it are compared with ours.
        paper=PaperReference(
            citation="Chen et al. 2019", title="A Closer Look at Few-shot Classification",
            url="https://arxiv.org/abs/1904.04232", label="Baseline (Chen et al. 2019)"))

    @classmethod
    def config_for_data(cls, config: LearnerConfig, chars: "CharacterSet", train: TrainConfig) -> LearnerConfig:
        assert isinstance(config, PretrainConfig)
        return replace(config, num_classes=class_count(chars, train.rotations))

    def init_params(self, generator: torch.Generator) -> Params:
        dim = self.backbone.embedding_dim
        bound = 1.0 / math.sqrt(dim)  # nn.Linear's default initialisation
        head = {GLOBAL_HEAD + "weight": (torch.rand(self.config.num_classes, dim, generator=generator) * 2 - 1) * bound,
                GLOBAL_HEAD + "bias": (torch.rand(self.config.num_classes, generator=generator) * 2 - 1) * bound}
        return {**super().init_params(generator), **head}

    # -- training: ordinary classification ---------------------------------------------------
    batch_items_flag = "--batches"

    def batch_items(self, train: "TrainConfig") -> int:
        return self.config.batches

    def training_ways(self, train: "TrainConfig", rng: np.random.Generator) -> int:
        return train.ways  # no episodes: nothing to draw

    def training_item(self, chars: "CharacterSet", train: "TrainConfig", ways: int,
                      rng: np.random.Generator) -> Task:
        """A batch of ``batch_size`` images with global labels (``ways`` is unused)."""
        if train.within_alphabet:
            raise ValueError("pretrain trains on batches of images, not episodes: --within-alphabet does not apply")
        classes = class_count(chars, train.rotations)
        if classes != self.config.num_classes:
            raise ValueError(f"pretrain's head has {self.config.num_classes} outputs but the training data has "
                             f"{classes} classes (rotations={train.rotations}); start a new run on this data")
        return labelled_batch(chars, self.config.batch_size, rng, train.rotations)

    def meta_loss(self, tasks: Sequence[Task]) -> MetaLoss:
        """Cross-entropy of the global classifier on every image of each batch (support and query
        alike), labels read as global class indices."""
        pairs = []
        for task in tasks:
            if task.ways > self.config.num_classes:
                raise ValueError(f"labels up to {task.ways - 1} do not fit the {self.config.num_classes}-class head")
            x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
            pairs.append((global_logits(self.params, x, self), y))
        return query_meta_loss(pairs)

    # -- adaptation: fine-tuning a fresh head ------------------------------------------------
    def finetune_mode(self, settings: AdaptSettings | None) -> str:
        mode = settings.finetune if settings is not None and settings.finetune is not None else self.config.finetune
        if mode not in FINETUNE_MODES:
            raise ValueError(f"pretrain fine-tunes {' or '.join(repr(m) for m in FINETUNE_MODES)}, not {mode!r}")
        return mode

    def adapt_step_sizes(self, settings: AdaptSettings | None = None) -> LearningRate:
        """Per-weight rates: the head's ``lr``, the backbone's 0 ("head": a linear probe, the
        backbone frozen) or ``lr * backbone_lr_scale`` ("all"). Rates rather than a separate
        loop, so every inner optimizer applies (e.g. ``bounded`` then clips the joint step)."""
        lr = self.inner_lr(settings)
        assert not isinstance(lr, dict)
        backbone_lr = 0.0 if self.finetune_mode(settings) == "head" else lr * self.config.backbone_lr_scale
        like = next(iter(self.params.values()))

        def rate(value: float) -> Tensor:
            return torch.tensor(value, dtype=like.dtype, device=like.device)

        rates = {name: rate(backbone_lr) for name in self.params if not name.startswith(META_PREFIX)}
        return rates | {name: rate(lr) for name in HEAD_NAMES}
