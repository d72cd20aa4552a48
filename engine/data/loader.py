"""Meta-training batches, drawn ahead of the training step in ``DataLoader`` worker processes.

Each step's global batch is defined by the run's seed alone, whatever the number of processes:

    ways of step s        from the stream seeded by (seed, s, 0)       (``Learner.training_ways``)
    item i of step s      from the stream seeded by (seed, s, i + 1)   (``Learner.training_item``, then
                          the handwriting augmentation of its images, ``engine.data.augment``)

A process of a distributed run draws only its own contiguous slice of the items (``shard``), so no two
processes draw the same task, together they draw exactly the batch one process would, and which worker
process draws a step changes nothing. Resuming needs no sampler state beyond the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch.utils.data

from engine.data.augment import augment_task
from engine.data.omniglot import CharacterSet
from engine.data.tasks import Task

if TYPE_CHECKING:
    from engine.learners.base import Learner
    from engine.config import TrainConfig

# What ``resume.safetensors`` records as its sampler; states without it were saved by the trainer's
# former single generator, whose tasks resumed runs can no longer reproduce.
SAMPLING = "keyed by (seed, step, item)"


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The stream of step ``step``'s draws shared by its whole batch (its number of ways)."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, 0]))


def item_generator(seed: int, step: int, index: int) -> np.random.Generator:
    """The stream of item ``index`` of step ``step``'s batch."""
    return np.random.default_rng(np.random.SeedSequence([seed, step, index + 1]))


def shard(items: int, rank: int, world_size: int) -> range:
    """The items of a batch of ``items`` that process ``rank`` of ``world_size`` takes: a contiguous
    slice, the slices as even as they can be (sizes differ by at most one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if items < world_size:
        raise ValueError(f"a batch of {items} items cannot give each of {world_size} processes one")
    return range(rank * items // world_size, (rank + 1) * items // world_size)


@dataclass(frozen=True, eq=False)
class StepBatch:
    """One process's share of one meta-step's batch."""

    step: int  # 0-based: the step the trainer's counter reaches one past
    tasks: list[Task]  # this process's items, in the batch's order
    items: int  # the whole batch's number of items, over every process


def sampling_copy(learner: "Learner") -> "Learner":
    """The learner without its weights: what worker processes need to draw batches (its configuration),
    without sending them its tensors, which may live on a GPU."""
    return type(learner)(config=learner.config, backbone=learner.backbone, params={})


class StepBatches(torch.utils.data.Dataset[StepBatch]):
    """Step index -> this process's ``StepBatch``; map-style, so any worker can draw any step."""

    def __init__(self, learner: "Learner", chars: CharacterSet, train: "TrainConfig", rank: int = 0,
                 world_size: int = 1) -> None:
        self.sampler = sampling_copy(learner)
        self.chars = chars
        self.train = train
        self.items = self.sampler.batch_items(train)
        self.indices = shard(self.items, rank, world_size)
        if not 0.0 <= train.within_alphabet <= 1.0:
            raise ValueError(f"--within-alphabet is a fraction of the episodes, in 0..1; got {train.within_alphabet}")
        if train.within_alphabet:
            # Raises ValueError here, before training, rather than in a worker process at the first step.
            self.sampler.training_item(chars, dataclasses.replace(train, within_alphabet=1.0), train.ways,
                                       np.random.default_rng(0))

    def augmented_item(self, ways: int, rng: np.random.Generator) -> Task:
        """One item, then the handwriting augmentation of its images from the same stream."""
        item = self.sampler.training_item(self.chars, self.train, ways, rng)
        return augment_task(item, rng, self.train.augment)

    def __getitem__(self, step: int) -> StepBatch:
        seed = self.train.seed
        ways = self.sampler.training_ways(self.train, step_generator(seed, step))
        tasks = [self.augmented_item(ways, item_generator(seed, step, index)) for index in self.indices]
        return StepBatch(step=step, tasks=tasks, items=self.items)


def keep(batch: StepBatch) -> StepBatch:
    """The collate function: a batch is already what the trainer takes (module-level: workers pickle it)."""
    return batch


def step_batches(dataset: StepBatches, start: int, stop: int, workers: int) -> Iterator[StepBatch]:
    """Steps ``start`` to ``stop - 1`` in order, drawn by ``workers`` processes ahead of use (0: drawn in
    this process when asked for). Workers need no seeding of their own: every draw is keyed by its step."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                         collate_fn=keep, prefetch_factor=2 if workers else None)
    return iter(loader)
