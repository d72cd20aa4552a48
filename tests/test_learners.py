"""The maths of each algorithm, pinned on tiny models and synthetic tasks (no dataset needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.data.omniglot import load_splits
from engine.data.tasks import Task
from engine.learners import LEARNERS, AdaptSettings, Learner, get_learner_class
from engine.learners.gradient import GradientConfig
from engine.learners.gradient import query_logits
from engine.learners.protonet import prototype_logits, prototypes
from engine.learners.reptile import ReptileConfig
from engine.nets import BackboneConfig, classify, embed, zero_head
from engine.optim import INNER_OPTIMIZERS, make_inner_optimizer
from engine.config import TrainConfig
from engine.train import build_parser

TINY = BackboneConfig(channels=4)


def synthetic_task(ways: int, shots: int, queries: int, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32) -> Task:
    """Class-dependent blobs, so there is something to learn."""
    centres = torch.rand(ways, 1, 28, 28, generator=generator, dtype=dtype)

    def draw(count: int) -> torch.Tensor:
        noise = 0.3 * torch.rand(ways * count, 1, 28, 28, generator=generator, dtype=dtype)
        return centres.repeat_interleave(count, dim=0) + noise

    labels = lambda count: torch.arange(ways).repeat_interleave(count)  # noqa: E731
    return Task(support_x=draw(shots), support_y=labels(shots), query_x=draw(queries), query_y=labels(queries),
                ways=ways, shots=shots, class_names=tuple(f"class{i}" for i in range(ways)))


def tasks(count: int, ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0,
          dtype: torch.dtype = torch.float32) -> list[Task]:
    generator = torch.Generator().manual_seed(seed)
    return [synthetic_task(ways, shots, queries, generator, dtype) for _ in range(count)]


def make(name: str, backbone: BackboneConfig = TINY, **config: object) -> Learner:
    cls = get_learner_class(name)
    return cls(config=cls.config_class(**config), backbone=backbone, seed=0)


def to_double(learner: Learner) -> Learner:
    learner.params = {k: v.detach().double().requires_grad_(True) for k, v in learner.params.items()}
    return learner


def meta_gradient(learner: Learner, batch: list[Task]) -> dict[str, torch.Tensor]:
    for p in learner.params.values():
        p.grad = None
    learner.meta_loss(batch).loss.backward()
    return {k: v.grad.detach().clone() for k, v in learner.params.items()}


def take_meta_step(learner: Learner, batch: list[Task]) -> None:
    """One step of the learner's own meta-optimizer on ``batch``."""
    optimizer = learner.meta_optimizer()
    optimizer.zero_grad()
    learner.meta_loss(batch).loss.backward()
    optimizer.step()


def all_learners() -> list[str]:
    return sorted(LEARNERS)


def test_registry_has_the_foundation_algorithms() -> None:
    assert {"maml", "fomaml", "reptile", "protonet"} <= set(LEARNERS)
    with pytest.raises(ValueError, match="unknown algorithm"):
        get_learner_class("nope")
    assert "sgd" in INNER_OPTIMIZERS
    with pytest.raises(ValueError, match="unknown inner optimizer"):
        make_inner_optimizer("nope")


def test_maml_meta_gradient_matches_finite_differences() -> None:
    learner = to_double(make("maml", inner_steps=2, inner_lr=0.5))
    batch = tasks(2, dtype=torch.float64)
    grads = meta_gradient(learner, batch)
    generator = torch.Generator().manual_seed(1)
    eps = 1e-6
    for name in ["conv0.weight", "conv3.weight", "bn1.weight", "bn3.bias"]:
        direction = torch.randn(learner.params[name].shape, generator=generator, dtype=torch.float64)
        base = learner.params[name].detach().clone()
        values = []
        for sign in (1, -1):
            learner.params[name] = (base + sign * eps * direction).requires_grad_(True)
            values.append(learner.meta_loss(batch).loss.item())
        learner.params[name] = base.requires_grad_(True)
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = (grads[name] * direction).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights() -> None:
    batch = tasks(3, dtype=torch.float64)
    second = meta_gradient(to_double(make("maml", inner_steps=2)), batch)
    fomaml = to_double(make("fomaml", inner_steps=2))
    first = meta_gradient(fomaml, batch)
    # Reference: adapt by hand, then differentiate the query loss at the adapted weights only.
    expected = {k: torch.zeros_like(v) for k, v in fomaml.params.items()}
    for task in batch:
        fast = {k: v.detach().clone().requires_grad_(True) for k, v in fomaml.params.items()}
        fast.update({k: v.requires_grad_(True) for k, v in zero_head(task.ways, TINY, task.support_x).items()})
        for _ in range(2):
            loss = F.cross_entropy(classify(fast, task.support_x, TINY), task.support_y)
            g = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: (v - 0.4 * gi).detach().requires_grad_(True) for (k, v), gi in zip(fast.items(), g)}
        query_loss = F.cross_entropy(query_logits(fomaml, fast, task), task.query_y) / len(batch)
        g = torch.autograd.grad(query_loss, [fast[k] for k in expected])
        for k, gi in zip(expected, g):
            expected[k] += gi
    for k in expected:
        torch.testing.assert_close(first[k], expected[k])
    differences = [(second[k] - first[k]).norm() / second[k].norm() for k in first if second[k].norm() > 0]
    assert max(differences) > 1e-3  # second-order terms are really there


@pytest.mark.parametrize("inner_shots", [0, 1])
def test_reptile_update_is_interpolation_toward_adapted_weights(inner_shots: int) -> None:
    """With ``inner_shots`` 1 each inner step sees one example of every class, alternating between
    the two support drawings (step 0: the first of each class); with 0 the whole support set."""
    epsilon = 0.3
    learner = make("reptile", meta_lr=epsilon, meta_lr_final=None, inner_steps=3, inner_lr=0.1,
                   inner_shots=inner_shots)
    batch = tasks(4)
    theta = {k: v.detach().clone() for k, v in learner.params.items()}
    adapted_mean = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:
        adapted = learner.adapt(task.support_x, task.support_y, task.ways, AdaptSettings(steps=3, lr=0.1))
        assert adapted.warning is None
    # Reference inner loop, written independently of the learner's.
    for task in batch:
        fast = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        fast.update({k: v.requires_grad_(True) for k, v in zero_head(task.ways, TINY, task.support_x).items()})
        for step in range(3):
            rows = (torch.arange(task.ways) * task.shots + step % task.shots if inner_shots
                    else torch.arange(len(task.support_y)))
            loss = F.cross_entropy(classify(fast, task.support_x[rows], TINY), task.support_y[rows])
            g = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: (v - 0.1 * gi).detach().requires_grad_(True) for (k, v), gi in zip(fast.items(), g)}
        for k in adapted_mean:
            adapted_mean[k] += fast[k].detach() / len(batch)
    take_meta_step(learner, batch)
    for k, value in learner.params.items():
        torch.testing.assert_close(value.detach(), theta[k] + epsilon * (adapted_mean[k] - theta[k]))


def test_protonet_logits_are_negative_squared_distances_to_prototypes() -> None:
    learner = make("protonet")
    task = tasks(1, ways=4, shots=3, queries=2)[0]
    support_logits, query_logits_ = learner.episode_logits(learner.detached_params(), task)
    features = embed(learner.detached_params(), torch.cat([task.support_x, task.query_x]), TINY,
                     stats_count=task.support_x.shape[0])
    support_features, query_features = features[:12], features[12:]
    protos = torch.stack([support_features[task.support_y == c].mean(0) for c in range(4)])
    manual = -((query_features[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(query_logits_, manual, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prototypes(support_features, task.support_y, 4), protos)
    torch.testing.assert_close(prototype_logits(query_features, protos), manual, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", all_learners())
def test_adaptation_and_meta_loss_leave_meta_parameters_bit_identical(name: str) -> None:
    learner = make(name)
    before = {k: v.detach().clone() for k, v in learner.params.items()}
    task = tasks(1)[0]
    learner.adapt(task.support_x, task.support_y, task.ways).predict_proba(task.query_x)
    learner.meta_loss(tasks(2))  # computing (not applying) a meta-gradient must not write either
    for k, v in learner.params.items():
        assert torch.equal(v.detach(), before[k]), k
        assert v.is_leaf and v.requires_grad


@pytest.mark.parametrize("name", all_learners())
@pytest.mark.parametrize(("ways", "shots"), [(2, 1), (5, 5), (20, 10)])
def test_any_ways_and_shots_from_one_checkpoint(name: str, ways: int, shots: int) -> None:
    learner = make(name)
    task = tasks(1, ways=ways, shots=shots, queries=1)[0]
    adapted = learner.adapt(task.support_x, task.support_y, ways, AdaptSettings(steps=2))
    probabilities = adapted.predict_proba(task.query_x)
    assert probabilities.shape == (ways, ways)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(ways))
    assert adapted.trace and adapted.trace[0].step == 0
    assert all(record.elapsed_ms >= 0 for record in adapted.trace)
    if learner.has_inner_loop:
        assert [r.step for r in adapted.trace] == [0, 1, 2]


@pytest.mark.parametrize("name", all_learners())
def test_one_query_is_predicted_as_in_a_batch(name: str) -> None:
    """Support-set batch-norm statistics: a query's prediction does not depend on the others."""
    learner = make(name)
    task = tasks(1, ways=3, shots=2, queries=3)[0]
    adapted = learner.adapt(task.support_x, task.support_y, 3, AdaptSettings(steps=3))
    together = adapted.predict_proba(task.query_x)
    for index in range(task.query_x.shape[0]):
        alone = adapted.predict_proba(task.query_x[index:index + 1])
        torch.testing.assert_close(alone[0], together[index], rtol=1e-4, atol=1e-5)
        assert alone.max() < 1.0 or together[index].max() == 1.0
    # Transductive statistics are a different, batch-dependent prediction.
    assert not torch.allclose(adapted.predict_proba(task.query_x, transductive=True), together)


def test_gradient_adaptation_reduces_support_loss() -> None:
    learner = make("maml", backbone=BackboneConfig(channels=8))
    task = tasks(1, ways=5, shots=1)[0]
    adapted = learner.adapt(task.support_x, task.support_y, 5, AdaptSettings(steps=10, lr=0.4))
    losses = [record.loss for record in adapted.trace]
    assert losses[-1] < 0.5 * losses[0]
    assert adapted.trace[-1].accuracy == 1.0


@pytest.mark.parametrize("lr", [1e4, 1e30])
def test_diverging_inner_loop_gives_a_warning_and_finite_predictions(lr: float) -> None:
    learner = make("maml")
    task = tasks(1, ways=5, shots=1)[0]
    adapted = learner.adapt(task.support_x, task.support_y, 5, AdaptSettings(steps=10, lr=lr))
    assert adapted.warning is not None and "learning rate" in adapted.warning
    assert torch.isfinite(adapted.predict_proba(task.query_x)).all()
    assert all(torch.isfinite(torch.tensor(r.loss)) for r in adapted.trace)


def test_config_classes() -> None:
    assert isinstance(make("maml").config, GradientConfig)
    assert isinstance(make("reptile").config, ReptileConfig)
    assert make("reptile").config.meta_optimizer == "sgd"


def test_metasgd_with_equal_rates_reproduces_maml() -> None:
    batch = tasks(3, dtype=torch.float64)
    maml = to_double(make("maml", inner_steps=2, inner_lr=0.3))
    metasgd = to_double(make("metasgd", inner_steps=2, inner_lr=0.3))
    rates = [k for k in metasgd.params if k.startswith("meta.lr.")]
    for k in rates:  # exactly 0.3 in float64, as MAML's scalar is
        metasgd.params[k] = torch.full_like(metasgd.params[k], 0.3).requires_grad_(True)
    assert {k.removeprefix("meta.lr.") for k in rates} == set(maml.params) | {"head.weight", "head.bias"}
    assert all(metasgd.params[k].shape == maml.params[k.removeprefix("meta.lr.")].shape
               for k in rates if not k.startswith("meta.lr.head"))
    for k in maml.params:
        assert torch.equal(maml.params[k], metasgd.params[k])
    assert maml.meta_loss(batch).loss.item() == pytest.approx(metasgd.meta_loss(batch).loss.item(), rel=1e-12)
    maml_grads, metasgd_grads = meta_gradient(maml, batch), meta_gradient(metasgd, batch)
    for k in maml_grads:
        torch.testing.assert_close(metasgd_grads[k], maml_grads[k])
    # The rates themselves are meta-learned: they receive a gradient.
    assert all(metasgd_grads[k].abs().sum() > 0 for k in rates)


def test_metasgd_learning_rate_override_rescales_learned_rates() -> None:
    learner = make("metasgd", inner_lr=0.4)
    rates = learner.inner_lr(AdaptSettings(lr=0.2))
    assert isinstance(rates, dict)
    torch.testing.assert_close(rates["conv0.weight"], torch.full_like(learner.params["conv0.weight"], 0.2))


def test_optimizer_messages_reach_the_adapted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.optim import INNER_OPTIMIZERS
    from engine.optim.sgd import SGD

    class Chatty(SGD):
        name = "chatty"

        def step(self, params, grads, loss, lr, problem):  # type: ignore[no-untyped-def]
            self.note("fell back to a gradient step")
            return super().step(params, grads, loss, lr, problem)

    monkeypatch.setitem(INNER_OPTIMIZERS, "chatty", Chatty)
    task = tasks(1)[0]
    adapted = make("maml").adapt(task.support_x, task.support_y, task.ways, AdaptSettings(steps=3, optimizer="chatty"))
    assert adapted.notes == ["fell back to a gradient step"]
    assert make("maml").adapt(task.support_x, task.support_y, task.ways).notes == []


def test_divergence_is_flagged_even_when_the_loss_comes_back() -> None:
    """A step that blows the weights up can end in a collapsed network whose final loss equals the
    start (uniform predictions): the spike itself is what must be reported."""
    from engine.learners.base import StepRecord
    from engine.learners.gradient import divergence_warning

    def trace(losses: list[float]) -> list[StepRecord]:
        return [StepRecord(step, loss, 0.5, float(step)) for step, loss in enumerate(losses)]

    assert divergence_warning(trace([0.69, 0.4, 0.1, 0.05])) is None
    assert divergence_warning(trace([0.69, 1.3, 0.3])) is None  # a bump within the allowed factor (2x)
    assert divergence_warning(trace([0.69, 1.5, 0.3])) is not None  # the loss more than doubled
    warning = divergence_warning(trace([0.69, 393.0, 1e9, 0.69]))
    assert warning is not None and "1e+09 at step 2" in warning and "final 0.69" in warning


def test_reptile_with_adam_starts_each_tasks_inner_loop_from_fresh_moments() -> None:
    """The paper's inner optimizer (Adam, beta1 = 0): the update interpolates toward weights that a
    fresh torch.optim.Adam per task reaches, and ``adapt`` uses that optimizer by default."""
    # Float64: Adam divides each gradient by its own running scale, so float32 rounding in a tiny
    # gradient entry would show up at the step's full size.
    learner = to_double(make("reptile", meta_lr=1.0, meta_lr_final=None, inner_steps=3, inner_lr=0.01,
                             inner_optimizer="adam-no-momentum"))
    assert learner.default_optimizer() == "adam-no-momentum"
    batch = tasks(3, dtype=torch.float64)
    theta = {k: v.detach().clone() for k, v in learner.params.items()}
    adapted_mean = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:
        fast = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        fast.update({k: v.requires_grad_(True) for k, v in zero_head(task.ways, TINY, task.support_x).items()})
        reference = torch.optim.Adam(list(fast.values()), lr=0.01, betas=(0.0, 0.999), eps=1e-8)
        for _ in range(3):
            reference.zero_grad()
            F.cross_entropy(classify(fast, task.support_x, TINY), task.support_y).backward()
            reference.step()
        for k in adapted_mean:
            adapted_mean[k] += fast[k].detach() / len(batch)
    take_meta_step(learner, batch)
    for k, value in learner.params.items():
        torch.testing.assert_close(value.detach(), adapted_mean[k])


@pytest.mark.parametrize("name", ["maml", "mc2"])
def test_gradient_learners_train_on_a_range_of_ways_one_shape_per_meta_step(
        name: str, isolated_cache: Path, tiny_omniglot: Path) -> None:
    chars = load_splits(tiny_omniglot, progress=False).train
    config = TrainConfig(ways=6, shots=1, queries=2, meta_batch=3)
    fixed = get_learner_class(name)(backbone=TINY, seed=0)
    assert {task.ways for task in fixed.training_batch(chars, config, np.random.default_rng(0))} == {6}
    cls = get_learner_class(name)
    mixed = cls(config=cls.config_class(min_train_ways=3, inner_steps=1), backbone=TINY, seed=0)
    rng = np.random.default_rng(0)
    batches = [mixed.training_batch(chars, config, rng) for _ in range(40)]
    assert all(len({task.ways for task in batch}) == 1 for batch in batches)  # one forward pass per batch
    assert {batch[0].ways for batch in batches} == {3, 4, 5, 6}
    # A batch of the drawn shape trains: a finite loss with a gradient on the backbone.
    loss = mixed.meta_loss(batches[0]).loss
    loss.backward()
    assert torch.isfinite(loss) and mixed.params["conv1.weight"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="min_train_ways"):
        mixed.training_batch(chars, TrainConfig(ways=2), rng)


def test_the_training_command_reads_min_train_ways_as_an_int() -> None:
    parser = build_parser("mc2")
    ways = parser.parse_args(["--algorithm", "mc2", "--out", "x", "--min-train-ways", "5"]).min_train_ways
    assert ways == 5 and isinstance(ways, int)
    assert parser.parse_args(["--algorithm", "mc2", "--out", "x"]).min_train_ways is None
    assert parser.parse_args(["--algorithm", "mc2", "--out", "x", "--test-inner-lr", "0.5"]).test_inner_lr == 0.5
