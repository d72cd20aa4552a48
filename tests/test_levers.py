"""Test-time levers (docs/training.md, "Test-time levers"): Proto-MAML's prototype head for the
gradient learners, and test-time augmentation of the support set."""

from __future__ import annotations

import math

import pytest
import torch

from engine import kernels
from engine.data.augment import augmented_support
from engine.learners import AdaptSettings, Learner
from engine.learners.protonet import prototype_logits, prototypes
from engine.nets import embed
from tests.test_learners import make, tasks, to_double

GRADIENT_LEARNERS = ["maml", "fomaml", "metasgd", "mc1", "imaml", "reptile", "pretrain"]


def maker(name: str) -> Learner:
    """A small learner of ``name``; pretrain needs its global class count."""
    return make(name, num_classes=7) if name == "pretrain" else make(name)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "autograd"])
@pytest.mark.parametrize("name", GRADIENT_LEARNERS)
def test_prototype_head_step_zero_is_protonet_on_the_backbone(name: str, fused: bool) -> None:
    learner = to_double(maker(name))
    task = tasks(1, ways=4, shots=2, queries=3, seed=3, dtype=torch.float64)[0]
    with kernels.fused(fused):
        adapted = learner.adapt(task.support_x, task.support_y, task.ways,
                                AdaptSettings(steps=0, head_init="prototypes"))
        predicted = adapted.predict_proba(task.query_x)
    # ProtoNet on the same backbone: queries normalised with the support set's statistics.
    network = {k: v.detach() for k, v in learner.params.items() if not k.startswith(("head.", "meta."))}
    count = task.support_x.shape[0]
    features = embed(network, torch.cat([task.support_x, task.query_x]), learner.backbone, stats_count=count)
    protos = prototypes(features[:count], task.support_y, task.ways)
    expected = torch.softmax(prototype_logits(features[count:], protos), dim=-1)
    assert torch.equal(predicted.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(predicted, expected, rtol=1e-9, atol=1e-12)
    support_expected = torch.nn.functional.cross_entropy(prototype_logits(features[:count], protos), task.support_y)
    assert adapted.trace[0].loss == pytest.approx(support_expected.item(), rel=1e-9)


@pytest.mark.parametrize("name", GRADIENT_LEARNERS)
def test_prototype_head_then_steps_lower_the_support_loss(name: str) -> None:
    learner = maker(name)
    task = tasks(1, ways=3, shots=2, queries=2, seed=1)[0]
    adapted = learner.adapt(task.support_x, task.support_y, task.ways,
                            AdaptSettings(steps=3, lr=0.05, head_init="prototypes", undo_rising_steps=False))
    assert len(adapted.trace) == 4
    assert adapted.trace[-1].loss < adapted.trace[0].loss


@pytest.mark.parametrize("name", GRADIENT_LEARNERS)
def test_zero_head_default_is_unchanged(name: str) -> None:
    """The default and an explicit zero head with no augmentation run the same inner loop, bit for
    bit, from uniform predictions (support loss log N at step 0)."""
    learner = maker(name)
    task = tasks(1, ways=4, shots=1, queries=3, seed=2)[0]
    default = learner.adapt(task.support_x, task.support_y, task.ways)
    explicit = learner.adapt(task.support_x, task.support_y, task.ways,
                             AdaptSettings(head_init="zero", support_augment=0))
    assert [record.loss for record in default.trace] == [record.loss for record in explicit.trace]
    assert torch.equal(default.predict_proba(task.query_x), explicit.predict_proba(task.query_x))
    assert default.trace[0].loss == pytest.approx(math.log(task.ways), rel=1e-6)


def test_unknown_head_init_is_refused() -> None:
    task = tasks(1, ways=2, shots=1, queries=1)[0]
    with pytest.raises(ValueError, match="head_init"):
        make("maml").adapt(task.support_x, task.support_y, task.ways, AdaptSettings(head_init="random"))


def test_support_augment_zero_is_the_support_set_itself() -> None:
    task = tasks(1, ways=3, shots=2, queries=1)[0]
    x, y = augmented_support(task.support_x, task.support_y, 0)
    assert x is task.support_x and y is task.support_y
    with pytest.raises(ValueError):
        augmented_support(task.support_x, task.support_y, -1)


@pytest.mark.parametrize("copies", [1, 3])
def test_support_augment_adds_copies_deterministically(copies: int) -> None:
    first, second = tasks(2, ways=3, shots=2, queries=1, seed=4)
    # Ink-like images: augmentation (warps, pen width) changes them visibly.
    images = (first.support_x > 0.7).float()
    n = images.shape[0]
    x, y = augmented_support(images, first.support_y, copies)
    assert x.shape == (n * (copies + 1), *images.shape[1:])
    assert torch.equal(x[:n], images)
    assert torch.equal(y, first.support_y.repeat(copies + 1))
    again_x, _ = augmented_support(images.clone(), first.support_y.clone(), copies)
    assert torch.equal(x, again_x)  # seeded by the support set's content
    for copy in x[n:].split(n):
        assert not torch.equal(copy, images)
    other_x, _ = augmented_support((second.support_x > 0.7).float(), second.support_y, copies)
    other_x[:n] = images  # same originals, but copies drawn from another seed
    assert not torch.equal(other_x[n:], x[n:])


@pytest.mark.parametrize("name", ["maml", "pretrain", "protonet"])
def test_adapt_uses_the_augmented_support_set(name: str) -> None:
    learner = maker(name)
    task = tasks(1, ways=3, shots=1, queries=2, seed=5)[0]
    support_x = (task.support_x > 0.7).float()
    plain = learner.adapt(support_x, task.support_y, task.ways, AdaptSettings(support_augment=0))
    default = learner.adapt(support_x, task.support_y, task.ways)
    assert torch.equal(plain.predict_proba(task.query_x), default.predict_proba(task.query_x))
    augmented = learner.adapt(support_x, task.support_y, task.ways, AdaptSettings(support_augment=2))
    extended_x, extended_y = augmented_support(support_x, task.support_y, 2)
    by_hand = learner.adapt(extended_x, extended_y, task.ways)
    assert torch.equal(augmented.predict_proba(task.query_x), by_hand.predict_proba(task.query_x))
    assert not torch.equal(augmented.predict_proba(task.query_x), plain.predict_proba(task.query_x))
