"""The batched inner loop (engine.batched) gives what each learner's own ``adapt`` gives, and the
comparison falls back to the per-learner path whenever the batched loop would not do the same."""

from __future__ import annotations

import pytest
import torch

import engine.compare
from engine import batched, kernels
from engine.compare import adapt_batched, compare, run_one
from engine.learners import LEARNERS, AdaptSettings, Adapted, Learner
from engine.learners.metacurvature import MC_PREFIX
from engine.learners.metasgd import LR_PREFIX
from engine.nets import BackboneConfig
from engine.paths import REPO_ROOT

BATCHABLE = ("maml", "fomaml", "reptile", "metasgd", "mc1", "mc2")


def distinct_learners(backbone: BackboneConfig) -> dict[str, Learner]:
    """The batchable algorithms, each on its own random weights; Meta-SGD's rates and
    Meta-Curvature's matrices moved off their initial values, so each network's step differs."""
    generator = torch.Generator().manual_seed(7)
    built: dict[str, Learner] = {}
    for seed, name in enumerate(BATCHABLE):
        learner = LEARNERS[name](backbone=backbone, seed=seed)
        with torch.no_grad():
            for key, value in learner.params.items():
                if key.startswith(LR_PREFIX):
                    value.mul_(0.5 + torch.rand(value.shape, generator=generator))
                elif key.startswith(MC_PREFIX):
                    value.add_(0.05 * torch.randn(value.shape, generator=generator))
        built[name] = learner
    return built


def task(ways: int, shots: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.rand(ways, 1, 28, 28, generator=generator) > 0.8).float()
    support = (centres.repeat_interleave(shots, 0) + 0.3 * torch.rand(ways * shots, 1, 28, 28,
                                                                        generator=generator)).clamp(0, 1)
    queries = (centres + 0.3 * torch.rand(ways, 1, 28, 28, generator=generator)).clamp(0, 1)
    return support, torch.arange(ways).repeat_interleave(shots), queries


def assert_same(batched_result: Adapted, own: Adapted, queries: torch.Tensor) -> None:
    assert [record.step for record in batched_result.trace] == [record.step for record in own.trace]
    for ours, theirs in zip(batched_result.trace, own.trace):
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-5, abs=1e-6)
        assert ours.accuracy == theirs.accuracy
    assert torch.allclose(batched_result.predict_proba(queries), own.predict_proba(queries), atol=1e-5)
    assert (batched_result.warning, batched_result.diverged, batched_result.notes) == (
        own.warning, own.diverged, own.notes)


@pytest.mark.parametrize(("shots", "downsample"), [(1, "stride"), (2, "stride"), (1, "maxpool")])
def test_batched_loop_matches_each_learners_own_adapt(shots: int, downsample: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 images: NCHW; 10: channels-last (engine.kernels.layout_for); max-pooling too.
    learners = distinct_learners(BackboneConfig(channels=8, downsample=downsample))  # type: ignore[arg-type]
    support_x, support_y, queries = task(5, shots)
    settings = AdaptSettings(steps=4)
    plans = [batched.batch_plan(learner, 5, settings) for learner in learners.values()]
    assert all(plan is not None for plan in plans)
    passes: list[int] = []
    full_pass = batched._forward
    monkeypatch.setattr(batched, "_forward", lambda *args: passes.append(1) or full_pass(*args))
    together = batched.adapt_together(plans, support_x, support_y, 5)  # type: ignore[arg-type]
    # 5 evaluations, the second on the backbones of the first (the step from zero heads moves only them).
    assert len(passes) == 4
    for (name, learner), result in zip(learners.items(), together):
        own = learner.adapt(support_x, support_y, 5, settings)
        if result is None:  # it left the batch: its own adapt's undo guard took a step back
            assert any("taken back" in note for note in own.notes), name
            continue
        assert_same(result, own, queries)
        # It moved: the networks really were adapted, each its own way.
        assert result.trace[-1].loss < result.trace[0].loss
    assert sum(result is not None for result in together) >= len(together) - 1


def test_batched_loop_matches_on_the_shipped_checkpoints() -> None:
    from engine.checkpoint import load_learner

    names = [name for name in BATCHABLE if (REPO_ROOT / "models" / name / "model.json").exists()]
    if len(names) < 2:
        pytest.skip("fewer than two shipped checkpoints of batchable algorithms")
    learners = {name: load_learner(REPO_ROOT / "models" / name / "model") for name in names}
    support_x, support_y, queries = task(5, 1, seed=3)
    # Each with its own test-time steps (the app's default): groups by step count.
    outcomes = adapt_batched(learners, support_x, support_y, 5, dict.fromkeys(learners, AdaptSettings()))
    for name, learner in learners.items():
        outcome = outcomes[name]
        assert outcome.adapted is not None, outcome.result.error
        assert_same(outcome.adapted, learner.adapt(support_x, support_y, 5, AdaptSettings()), queries)


def test_what_the_batched_loop_does_not_do_exactly_adapts_on_its_own() -> None:
    backbone = BackboneConfig(channels=4)
    maml = LEARNERS["maml"](backbone=backbone)
    assert batched.batch_plan(maml, 3, AdaptSettings()) is not None
    for settings in (AdaptSettings(optimizer="adam"), AdaptSettings(head_init="prototypes"),
                     AdaptSettings(support_augment=1)):
        assert batched.batch_plan(maml, 3, settings) is None, settings
    with kernels.fused(False):
        assert batched.batch_plan(maml, 3, AdaptSettings()) is None
    with batched.batching(False):
        assert batched.batch_plan(maml, 3, AdaptSettings()) is None
    assert batched.batch_plan(maml, 3, AdaptSettings()) is not None
    for name in ("imaml", "protonet"):  # a proximal problem (and armijo); no inner loop
        assert batched.batch_plan(LEARNERS[name](backbone=backbone), 3, AdaptSettings()) is None, name
    # Pretrain's default linear probe freezes the backbone (its own path embeds once); fine-tuning all joins.
    pretrain = LEARNERS["pretrain"](config=LEARNERS["pretrain"].config_class(num_classes=5), backbone=backbone)
    assert batched.batch_plan(pretrain, 3, AdaptSettings()) is None
    assert batched.batch_plan(pretrain, 3, AdaptSettings(finetune="all")) is not None
    # Plans group by what must be equal: steps (and backbone, ways); a lone plan is no group.
    plans = {"a": batched.batch_plan(maml, 3, AdaptSettings(steps=2)),
             "b": batched.batch_plan(LEARNERS["fomaml"](backbone=backbone), 3, AdaptSettings(steps=2)),
             "c": batched.batch_plan(LEARNERS["reptile"](backbone=backbone), 3, AdaptSettings(steps=3)),
             "d": None}
    assert batched.batchable_groups(plans) == [["a", "b"]]


def test_a_network_whose_loss_rises_leaves_the_batch_and_adapts_on_its_own() -> None:
    learners = distinct_learners(BackboneConfig(channels=8))
    support_x, support_y, queries = task(5, 1)
    # A step size that blows one network up: the undo guard acts in its own adapt.
    settings = {name: AdaptSettings(steps=4, lr=1000.0 if name == "fomaml" else None) for name in learners}
    plans = [batched.batch_plan(learner, 5, settings[name]) for name, learner in learners.items()]
    together = dict(zip(learners, batched.adapt_together(plans, support_x, support_y, 5)))  # type: ignore[arg-type]
    assert together["fomaml"] is None and all(result is not None for name, result in together.items()
                                              if name != "fomaml")
    outcomes = adapt_batched(learners, support_x, support_y, 5, settings)
    own = learners["fomaml"].adapt(support_x, support_y, 5, settings["fomaml"])
    assert own.notes and "taken back" in own.notes[0]  # the guard did act
    assert outcomes["fomaml"].adapted is not None
    assert_same(outcomes["fomaml"].adapted, own, queries)


def test_compare_uses_the_batched_loop_and_reports_what_each_learner_would(monkeypatch: pytest.MonkeyPatch) -> None:
    learners = distinct_learners(BackboneConfig(channels=8))
    learners["protonet"] = LEARNERS["protonet"](backbone=BackboneConfig(channels=8))
    support_x, support_y, queries = task(5, 1)
    calls: list[int] = []
    original = batched.adapt_together

    def counting(plans, *args):  # type: ignore[no-untyped-def]
        calls.append(len(plans))
        return original(plans, *args)

    monkeypatch.setattr(engine.compare.batched, "adapt_together", counting)
    settings = {name: AdaptSettings(steps=1 if name.startswith(("mc", "metasgd")) else 3) for name in learners}
    for workers in (1, 2):
        calls.clear()
        results = compare(learners, support_x, support_y, 5, queries, settings, workers=workers)
        assert sorted(calls) == [3, 3]  # maml + fomaml + reptile at 3 steps, metasgd + mc1 + mc2 at 1
        assert [result.name for result in results] == list(learners)
        for result in results:
            own = run_one(result.name, learners[result.name], support_x, support_y, 5, queries, settings[result.name])
            assert result.ok and own.ok
            assert [r.loss for r in result.trace] == pytest.approx([r.loss for r in own.trace], rel=1e-5, abs=1e-6)
            assert result.probabilities is not None and own.probabilities is not None
            assert abs(result.probabilities - own.probabilities).max() < 1e-5
            assert (result.steps, result.lr, result.optimizer, result.warning, result.notes) == (
                own.steps, own.lr, own.optimizer, own.warning, own.notes)


def test_the_cache_adapts_what_it_does_not_keep_in_one_batched_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.compare import AdaptedCache, prepare_task, support_fingerprint

    learners = distinct_learners(BackboneConfig(channels=4))
    support_x, support_y, _ = task(5, 1)
    prepared = prepare_task(support_x, support_y, 5)
    fingerprint = support_fingerprint(prepared.support_x, prepared.support_y, 5)
    cache = AdaptedCache(max_entries=16)
    calls: list[int] = []
    original = batched.adapt_together
    monkeypatch.setattr(engine.compare.batched, "adapt_together",
                        lambda plans, *args: calls.append(len(plans)) or original(plans, *args))
    settings = AdaptSettings(steps=2)
    kept = cache.get_or_adapt("maml", learners["maml"], prepared, fingerprint, settings)
    outcomes = cache.get_or_adapt_all(learners, prepared, fingerprint, settings)
    assert set(outcomes) == set(learners) and outcomes["maml"] is kept
    assert calls == [len(learners) - 1] and cache.adaptations == len(learners)
    assert cache.get_or_adapt_all(learners, prepared, fingerprint, settings) == outcomes  # all kept now
    assert calls == [len(learners) - 1] and cache.adaptations == len(learners)


def test_the_caches_jobs_share_one_batched_job_and_keep_every_outcome() -> None:
    """What the app's shared queue runs: the batchable learners as one job, every other learner as its
    own, the costliest first; running them keeps every outcome (adding a query then adapts nothing)."""
    from engine.compare import AdaptedCache, prepare_task, support_fingerprint

    backbone = BackboneConfig(channels=4)
    learners = {**distinct_learners(backbone), "imaml": LEARNERS["imaml"](backbone=backbone, seed=9),
                "protonet": LEARNERS["protonet"](backbone=backbone, seed=10)}
    support_x, support_y, _ = task(5, 1)
    prepared = prepare_task(support_x, support_y, 5)
    fingerprint = support_fingerprint(prepared.support_x, prepared.support_y, 5)
    cache = AdaptedCache(max_entries=16)
    settings = AdaptSettings(steps=3)
    jobs = cache.adaptation_jobs(learners, prepared, fingerprint, settings)
    assert sorted(sorted(names) for names, _ in jobs) == [["fomaml", "maml", "mc1", "mc2", "metasgd", "reptile"],
                                                          ["imaml"], ["protonet"]]
    assert jobs[0][0][0] in BATCHABLE  # six 3-step loops cost more than one
    outcomes = {name: outcome for _, job in jobs for name, outcome in job().items()}
    assert set(outcomes) == set(learners) and cache.adaptations == len(learners)
    assert all(cache.get(cache.key(name, learner, fingerprint, settings), learner) is outcomes[name]
               for name, learner in learners.items())
