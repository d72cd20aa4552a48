"""Few-shot task sampler."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data.omniglot import CharacterSet, load_split, load_splits
from engine.data.tasks import Task, fixed_tasks, sample_task, task_stream

N_CHARS, N_DRAWINGS = 30, 20


@pytest.fixture(scope="module")
def chars() -> CharacterSet:
    """Random, pairwise-distinct images, so every task image can be traced back."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N_CHARS, N_DRAWINGS, 28, 28), dtype=np.uint8)
    images.setflags(write=False)
    names = tuple(f"Alpha{c % 3}/character{c:02d}" for c in range(N_CHARS))
    return CharacterSet(images=images, characters=names, alphabets=tuple(n.split("/")[0] for n in names))


@pytest.fixture(scope="module")
def lookup(chars: CharacterSet) -> dict[bytes, tuple[int, int, int]]:
    """image bytes -> (character, drawing, quarter turns)."""
    table = {}
    for c in range(N_CHARS):
        for d in range(N_DRAWINGS):
            for k in range(4):
                table[np.rot90(chars.images[c, d], k).tobytes()] = (c, d, k)
    return table


def _trace(x: torch.Tensor, lookup: dict[bytes, tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    arr = np.rint(x.squeeze(1).numpy() * 255).astype(np.uint8)
    return [lookup[img.tobytes()] for img in arr]


def _check_task(task: Task, ways: int, shots: int, queries: int) -> None:
    assert task.support_x.shape == (ways * shots, 1, 28, 28)
    assert task.query_x.shape == (ways * queries, 1, 28, 28)
    assert task.support_x.dtype == task.query_x.dtype == torch.float32
    assert task.support_y.dtype == task.query_y.dtype == torch.int64
    assert torch.equal(task.support_y, torch.arange(ways).repeat_interleave(shots))
    assert torch.equal(task.query_y, torch.arange(ways).repeat_interleave(queries))
    assert 0.0 <= float(task.support_x.min()) and float(task.support_x.max()) <= 1.0
    assert (task.ways, task.shots, task.queries) == (ways, shots, queries)
    assert len(task.class_names) == len(set(task.class_names)) == ways


@pytest.mark.parametrize(("ways", "shots", "queries"), [(5, 1, 5), (20, 5, 15), (3, 19, 1), (30, 1, 0)])
def test_shapes_labels_and_disjointness(chars: CharacterSet, lookup: dict, ways: int, shots: int,
                                        queries: int) -> None:
    task = sample_task(chars, ways, shots, queries, np.random.default_rng(1))
    _check_task(task, ways, shots, queries)
    support, query = _trace(task.support_x, lookup), _trace(task.query_x, lookup)
    for label in range(ways):
        s = support[label * shots : (label + 1) * shots]
        q = query[label * queries : (label + 1) * queries]
        assert {c for c, _, _ in s + q} == {s[0][0]}  # one character per label
        assert task.class_names[label] == chars.characters[s[0][0]]
        drawings = [d for _, d, _ in s + q]
        assert len(set(drawings)) == shots + queries  # no drawing reused in a class
        assert all(k == 0 for _, _, k in s + q)
    assert len({s[0] for s in support}) == ways  # classes distinct


def test_determinism_and_seeds(chars: CharacterSet) -> None:
    a = [next(task_stream(chars, 5, 1, 5, seed=7)) for _ in range(2)]
    stream1, stream2 = task_stream(chars, 5, 2, 3, seed=3), task_stream(chars, 5, 2, 3, seed=3)
    for _ in range(5):
        t1, t2 = next(stream1), next(stream2)
        assert torch.equal(t1.support_x, t2.support_x) and torch.equal(t1.query_x, t2.query_x)
        assert t1.class_names == t2.class_names
    assert torch.equal(a[0].support_x, a[1].support_x)
    other = next(task_stream(chars, 5, 2, 3, seed=4))
    first = next(task_stream(chars, 5, 2, 3, seed=3))
    assert not torch.equal(first.support_x, other.support_x)
    # consecutive tasks of one stream differ
    s = task_stream(chars, 5, 2, 3, seed=3)
    assert not torch.equal(next(s).query_x, next(s).query_x)


def test_fixed_tasks(chars: CharacterSet) -> None:
    a = fixed_tasks(chars, 5, 1, 3, count=4, seed=11)
    b = fixed_tasks(chars, 5, 1, 3, count=4, seed=11)
    assert len(a) == 4
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta.support_x, tb.support_x) and ta.class_names == tb.class_names
    assert fixed_tasks(chars, 5, 1, 3, count=0, seed=1) == []
    c = fixed_tasks(chars, 5, 1, 3, count=4, seed=12)
    assert [t.class_names for t in a] != [t.class_names for t in c]


def test_sample_task_matches_rng_state(chars: CharacterSet) -> None:
    t1 = sample_task(chars, 4, 2, 2, np.random.default_rng(5))
    t2 = sample_task(chars, 4, 2, 2, np.random.default_rng(5))
    assert torch.equal(t1.support_x, t2.support_x) and t1.class_names == t2.class_names


def test_rotations(chars: CharacterSet, lookup: dict) -> None:
    rng = np.random.default_rng(2)
    seen_turns: set[int] = set()
    for _ in range(20):
        task = sample_task(chars, 10, 2, 3, rng, rotations=True)
        _check_task(task, 10, 2, 3)
        support = _trace(task.support_x, lookup)
        query = _trace(task.query_x, lookup)
        for label in range(10):
            entries = support[label * 2 : (label + 1) * 2] + query[label * 3 : (label + 1) * 3]
            (c, k), = {(c, k) for c, _, k in entries}
            seen_turns.add(k)
            expected = chars.characters[c] + (f"@{k * 90}" if k else "")
            assert task.class_names[label] == expected
    assert seen_turns == {0, 1, 2, 3}
    # 4 rotations make 4x the classes: 120-way is possible with 30 characters, 121 is not
    big = sample_task(chars, 4 * N_CHARS, 1, 1, rng, rotations=True)
    assert len(set(big.class_names)) == 4 * N_CHARS
    with pytest.raises(ValueError):
        sample_task(chars, 4 * N_CHARS + 1, 1, 1, rng, rotations=True)


def test_rotated_copy_is_rot90(chars: CharacterSet) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        task = sample_task(chars, 1, 1, 0, rng, rotations=True)
        name = task.class_names[0]
        if name.endswith("@90"):
            break
    else:
        pytest.fail("no 90-degree class sampled")
    c = chars.characters.index(name.removesuffix("@90"))
    img = np.rint(task.support_x[0, 0].numpy() * 255).astype(np.uint8)
    matches = [d for d in range(N_DRAWINGS) if np.array_equal(np.rot90(chars.images[c, d]), img)]
    assert len(matches) == 1


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "match"),
    [
        (5, 10, 11, "exceeds the 20 drawings"),
        (N_CHARS + 1, 1, 1, "only 30 characters"),
        (0, 1, 1, "ways >= 1"),
        (5, 0, 1, "shots >= 1"),
        (5, 1, -1, "queries >= 0"),
    ],
)
def test_impossible_requests(chars: CharacterSet, ways: int, shots: int, queries: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_task(chars, ways, shots, queries, np.random.default_rng(0))
    with pytest.raises(ValueError, match=match):
        task_stream(chars, ways, shots, queries, seed=0)  # eager check, before next()
    with pytest.raises(ValueError, match=match):
        fixed_tasks(chars, ways, shots, queries, count=1, seed=0)


def test_task_to_device(chars: CharacterSet) -> None:
    task = sample_task(chars, 3, 1, 2, np.random.default_rng(0))
    moved = task.to("cpu")
    assert isinstance(moved, Task) and moved.class_names == task.class_names
    assert moved.support_x.device.type == "cpu" and torch.equal(moved.query_y, task.query_y)
    moved.support_x.add_(1.0)  # tasks are independent tensors, not views of the data set
    assert float(sample_task(chars, 3, 1, 2, np.random.default_rng(0)).support_x.max()) <= 1.0


def test_sampling_speed(chars: CharacterSet) -> None:
    big = CharacterSet(
        images=np.zeros((800, 20, 28, 28), np.uint8),
        characters=tuple(f"A/character{i:03d}" for i in range(800)),
        alphabets=("A",) * 800,
    )
    rng = np.random.default_rng(0)
    sample_task(big, 20, 5, 15, rng, rotations=True)
    rounds = []
    for _ in range(5):  # best of 5 rounds: robust to other processes sharing the CPU
        start = time.perf_counter()
        for _ in range(40):
            sample_task(big, 20, 5, 15, rng, rotations=True)
        rounds.append((time.perf_counter() - start) / 40)
    assert min(rounds) < 5e-3, f"{min(rounds) * 1e3:.2f} ms per 20-way 5-shot 15-query task"


def test_tiny_dataset_tasks(tiny_omniglot: Path, isolated_cache: Path) -> None:
    splits = load_splits(tiny_omniglot)
    task = sample_task(splits.train, 5, 1, 5, np.random.default_rng(0), rotations=True)
    _check_task(task, 5, 1, 5)
    assert all(name.split("@")[0] in splits.train.characters for name in task.class_names)


def test_real_omniglot_tasks(omniglot_dir: Path) -> None:
    test = load_split(omniglot_dir, "evaluation")
    tasks = fixed_tasks(test, 20, 1, 5, count=3, seed=0)
    for task in tasks:
        _check_task(task, 20, 1, 5)
        assert float(task.support_x.mean()) < 0.25  # ink-high, mostly background
