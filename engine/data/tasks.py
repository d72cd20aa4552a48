"""Few-shot task sampling (N-way, K-shot, Q queries) as plain generators.

Follows supervised-reptile: no Dataset/DataLoader machinery, just NumPy fancy
indexing on the in-memory uint8 array and one ``torch.from_numpy`` per task, which
keeps a 20-way 5-shot 15-query task well under a millisecond or two.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.data.frames import from_uint8
from engine.data.omniglot import CharacterSet

ROTATIONS = 4
"""With ``rotations=True`` every character yields 4 classes: 0, 90, 180, 270 degrees."""


@dataclass(frozen=True, eq=False)
class Task:
    """One episode. Images are float32 ``[n, 1, 28, 28]`` in [0, 1], ink high.

    Support and query are class-major (labels 0,0,..,1,1,..); ``class_names[i]`` is
    the character behind label ``i`` ("Alphabet/characterNN", plus "@90" etc. when rotated).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    ways: int
    shots: int
    class_names: tuple[str, ...]

    @property
    def queries(self) -> int:
        """Query drawings per class."""
        return int(self.query_y.shape[0]) // max(self.ways, 1)

    def to(self, device: torch.device | str) -> Task:
        """Copy of the task with all tensors on ``device``."""
        return dataclasses.replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
        )


def _pool_size(chars: CharacterSet, rotations: bool) -> int:
    return chars.num_classes * (ROTATIONS if rotations else 1)


def check_task_args(chars: CharacterSet, ways: int, shots: int, queries: int, rotations: bool = False) -> None:
    """Raise ValueError (with the reason) for requests the data cannot satisfy."""
    if ways < 1 or shots < 1 or queries < 0:
        raise ValueError(f"need ways >= 1, shots >= 1, queries >= 0; got {ways}, {shots}, {queries}")
    drawings = chars.drawings_per_class
    if shots + queries > drawings:
        raise ValueError(
            f"shots + queries = {shots + queries} exceeds the {drawings} drawings per character "
            "(support and query drawings are distinct)"
        )
    pool = _pool_size(chars, rotations)
    if ways > pool:
        kind = "rotated classes" if rotations else "characters"
        raise ValueError(f"{ways}-way tasks need {ways} classes but only {pool} {kind} are available")


def sample_task(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    rng: np.random.Generator,
    rotations: bool = False,
) -> Task:
    """Sample one task: ``ways`` distinct classes, ``shots + queries`` distinct drawings each.

    With ``rotations=True`` the class pool is every (character, k*90 degrees) pair and
    rotated copies count as new classes (the MAML / ProtoNet augmentation); training only.
    """
    check_task_args(chars, ways, shots, queries, rotations)
    per_class = shots + queries
    classes = rng.choice(_pool_size(chars, rotations), size=ways, replace=False)
    char_idx, turns = (classes // ROTATIONS, classes % ROTATIONS) if rotations else (classes, np.zeros_like(classes))
    drawings = np.argsort(rng.random((ways, chars.drawings_per_class)), axis=1)[:, :per_class]
    imgs = chars.images[char_idx[:, None], drawings]  # [ways, shots+queries, 28, 28] copy
    for i, k in enumerate(turns):
        if k:
            imgs[i] = np.rot90(imgs[i], k=int(k), axes=(1, 2))
    side = imgs.shape[-2:]
    stacked = np.concatenate(
        [imgs[:, :shots].reshape(ways * shots, *side), imgs[:, shots:].reshape(ways * queries, *side)]
    )
    x = torch.from_numpy(from_uint8(stacked)).unsqueeze(1)
    labels = np.arange(ways, dtype=np.int64)
    names = tuple(
        chars.characters[c] + (f"@{int(k) * 90}" if k else "") for c, k in zip(char_idx, turns, strict=True)
    )
    return Task(
        support_x=x[: ways * shots],
        support_y=torch.from_numpy(np.repeat(labels, shots)),
        query_x=x[ways * shots :],
        query_y=torch.from_numpy(np.repeat(labels, queries)),
        ways=ways,
        shots=shots,
        class_names=names,
    )


def task_stream(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    rotations: bool = False,
) -> Iterator[Task]:
    """Infinite stream of tasks; the same seed always yields the same sequence.

    Arguments are checked here, eagerly, rather than at the first ``next()``.
    """
    check_task_args(chars, ways, shots, queries, rotations)
    rng = np.random.default_rng(seed)

    def generate() -> Iterator[Task]:
        while True:
            yield sample_task(chars, ways, shots, queries, rng, rotations=rotations)

    return generate()


@functools.lru_cache(maxsize=16)
def alphabet_pools(chars: CharacterSet, ways: int, rotations: bool = False) -> dict[str, CharacterSet]:
    """The alphabets of ``chars`` that can fill a ``ways``-way task on their own (counting rotated copies as
    classes with ``rotations``), each as its own set, in ``chars.alphabet_names`` order. Cached per set (sets
    compare by identity), as training draws from them every step; raises ValueError when none can."""
    by_alphabet = {name: np.flatnonzero(np.asarray(chars.alphabets) == name) for name in chars.alphabet_names}
    per_character = ROTATIONS if rotations else 1
    eligible = [name for name, members in by_alphabet.items() if len(members) * per_character >= ways]
    if not eligible:
        largest = max((len(m) for m in by_alphabet.values()), default=0) * per_character
        kind = "rotated classes" if rotations else "characters"
        raise ValueError(f"{ways}-way within-alphabet tasks need an alphabet of {ways} {kind}; "
                         f"the largest has {largest}")
    return {name: chars.subset(by_alphabet[name]) for name in eligible}


def sample_within_alphabet_task(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    rng: np.random.Generator,
    rotations: bool = False,
) -> Task:
    """One task whose ``ways`` classes all come from one alphabet, drawn uniformly among those that have
    enough, then the task as :func:`sample_task` draws it from that alphabet."""
    pools = alphabet_pools(chars, ways, rotations)
    names = list(pools)
    return sample_task(pools[names[int(rng.integers(len(names)))]], ways, shots, queries, rng, rotations=rotations)


def sample_training_task(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    rng: np.random.Generator,
    rotations: bool = False,
    within_alphabet: float = 0.0,
) -> Task:
    """A training episode: with probability ``within_alphabet`` every class from one alphabet (the hard
    negatives of Lake et al.'s within-alphabet benchmark), otherwise from anywhere. The coin is drawn only
    when ``within_alphabet`` > 0, so a run without it draws exactly the tasks it always did."""
    if within_alphabet > 0 and rng.random() < within_alphabet:
        return sample_within_alphabet_task(chars, ways, shots, queries, rng, rotations=rotations)
    return sample_task(chars, ways, shots, queries, rng, rotations=rotations)


def alphabet_task_stream(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    seed: int,
) -> Iterator[Task]:
    """Infinite stream of tasks whose ``ways`` classes all come from one alphabet (Lake et al. 2015's
    within-alphabet benchmark: how a person confuses characters), the alphabet drawn uniformly among
    those with at least ``ways`` characters, then the task as :func:`sample_task` draws it."""
    pools = alphabet_pools(chars, ways)
    check_task_args(next(iter(pools.values())), ways, shots, queries)
    rng = np.random.default_rng(seed)

    def generate() -> Iterator[Task]:
        while True:
            yield sample_within_alphabet_task(chars, ways, shots, queries, rng)

    return generate()


def fixed_tasks(
    chars: CharacterSet,
    ways: int,
    shots: int,
    queries: int,
    count: int,
    seed: int,
) -> list[Task]:
    """The same ``count`` tasks for a given seed (validation / evaluation sets)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return list(itertools.islice(task_stream(chars, ways, shots, queries, seed), count))
