"""engine.compare: every learner on the same task, failures isolated, inputs validated once."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import engine.compare
from engine import kernels
from engine.compare import (
    AlgorithmResult, QueryScore, TaskInputError, as_images, compare, compare_task, effective_settings, ranked,
    rescored, score_queries,
)
from engine.data.tasks import Task
from engine.learners import LEARNERS, AdaptSettings, Learner, ResolvedSettings
from engine.nets import BackboneConfig

TINY = BackboneConfig(channels=4)


def learners() -> dict[str, Learner]:
    return {name: LEARNERS[name](backbone=TINY, seed=1) for name in sorted(LEARNERS)}


def blobs(ways: int, shots: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent random images [ways*shots, 28, 28] in [0, 1] and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.random((ways, 28, 28)) > 0.8
    images = np.clip(centres.repeat(shots, axis=0) + 0.2 * rng.random((ways * shots, 28, 28)), 0, 1)
    return images.astype(np.float32), np.repeat(np.arange(ways), shots)


def test_every_learner_runs_on_the_same_task_in_order() -> None:
    support_x, support_y = blobs(3, 2)
    query_x, query_y = blobs(3, 1, seed=0)
    models = learners()
    results = compare(models, support_x, support_y, 3, query_x, AdaptSettings(steps=3), query_labels=query_y)
    assert [r.name for r in results] == list(models)
    for result in results:
        assert result.ok, result.error
        assert result.probabilities is not None and result.probabilities.shape == (3, 3)
        np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert result.predictions is not None and result.predictions.shape == (3,)
        assert result.labelled == 3 and 0 <= result.correct <= 3
        assert result.query_accuracy == pytest.approx(result.correct / 3)
        assert result.adapt_ms > 0
        if result.has_inner_loop:
            assert [record.step for record in result.trace] == [0, 1, 2, 3]
            # No optimizer named: each learner's own (what it was meta-trained with).
            assert (result.steps, result.optimizer) == (3, "armijo" if result.name == "imaml" else "sgd")
            assert result.trace[0].loss == pytest.approx(np.log(3), rel=1e-4)  # zero head: uniform start
        else:
            assert len(result.trace) == 1 and result.steps is None and result.lr is None


def test_one_failing_algorithm_does_not_stop_the_others() -> None:
    class Broken(LEARNERS["maml"]):  # type: ignore[misc, valid-type]
        def adapt(self, *args: object, **kwargs: object):  # type: ignore[override]
            raise RuntimeError("boom")

    models = {"broken": Broken(backbone=TINY), **learners()}
    support_x, support_y = blobs(2, 1)
    results = compare(models, support_x, support_y, 2, support_x)
    assert results[0].error == "RuntimeError: boom" and results[0].probabilities is None
    assert all(r.ok for r in results[1:])


def test_task_problems_raise_before_anything_runs() -> None:
    support_x, support_y = blobs(3, 1)
    with pytest.raises(TaskInputError, match="Class 3 has no support examples"):
        compare(learners(), support_x[:2], support_y[:2], 3)
    with pytest.raises(TaskInputError, match="28x28"):
        compare(learners(), np.zeros((3, 32, 32), np.float32), support_y, 3)
    with pytest.raises(TaskInputError, match="labels"):
        compare(learners(), support_x, support_y[:2], 3)
    with pytest.raises(TaskInputError, match="empty"):
        compare(learners(), np.zeros((0, 28, 28), np.float32), np.zeros(0, np.int64), 3)


def test_diverging_inner_loop_is_a_warning_not_an_error() -> None:
    support_x, support_y = blobs(3, 2)
    results = compare(learners(), support_x, support_y, 3, support_x[:2], AdaptSettings(steps=10, lr=1e4, optimizer="sgd"))
    for result in results:
        assert result.ok
        if result.has_inner_loop:
            assert result.warning and "diverg" in result.warning
            assert result.probabilities is not None and np.isfinite(result.probabilities).all()
        else:
            assert result.warning is None


def test_compare_never_writes_meta_parameters() -> None:
    models = learners()
    before = {name: {k: v.detach().clone() for k, v in m.params.items()} for name, m in models.items()}
    support_x, support_y = blobs(3, 2)
    compare(models, support_x, support_y, 3, support_x, AdaptSettings(steps=5, lr=0.5))
    for name, model in models.items():
        for key, value in model.params.items():
            assert torch.equal(value.detach(), before[name][key]), (name, key)


def test_inputs_in_any_reasonable_layout() -> None:
    support_x, support_y = blobs(2, 2)
    as_arrays = compare(learners(), support_x, support_y, 2, support_x[:1])
    as_tensors = compare(learners(), torch.from_numpy(support_x).unsqueeze(1), torch.from_numpy(support_y), 2,
                         [support_x[0]])
    for a, b in zip(as_arrays, as_tensors):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert as_images([np.zeros((1, 28, 28))]).shape == (1, 1, 28, 28)
    assert as_images(None).shape == (0, 1, 28, 28)


def test_uneven_shots_and_unlabelled_queries() -> None:
    support_x, support_y = blobs(3, 2)
    keep = np.array([0, 1, 2, 4])  # class 2 has one example, the others two or one
    query_x, _ = blobs(3, 1)
    results = compare(learners(), support_x[keep], support_y[keep], 3, query_x, query_labels=[0, -1, -1])
    for result in results:
        assert result.ok and result.labelled == 1 and result.query_accuracy in (0.0, 1.0)
    no_labels = compare(learners(), support_x, support_y, 3, query_x)
    assert all(r.query_accuracy is None and r.labelled == 0 for r in no_labels)


def test_resolved_settings_follow_the_learner_defaults() -> None:
    models = learners()
    maml, reptile, protonet = models["maml"], models["reptile"], models["protonet"]
    assert maml.resolve_settings(None).summary() == (maml.config.test_inner_steps, maml.config.inner_lr, "sgd")
    assert reptile.resolve_settings(AdaptSettings()).summary() == (
        reptile.config.test_inner_steps, reptile.config.inner_lr, "sgd")
    assert maml.resolve_settings(AdaptSettings(steps=2, lr=0.05)).summary() == (2, 0.05, "sgd")
    assert protonet.resolve_settings(AdaptSettings(steps=2, lr=0.05)) == ResolvedSettings()
    # The older name reports the same resolution.
    assert effective_settings(maml, AdaptSettings(steps=2)) == maml.resolve_settings(AdaptSettings(steps=2)).summary()
    # Learned step sizes / curvature: as many steps as meta-training took (not test_inner_steps).
    support_x, support_y = blobs(3, 2)
    for name in ("metasgd", "mc1", "mc2"):
        learner = models[name]
        assert learner.config.inner_steps != learner.config.test_inner_steps
        assert learner.resolve_settings(AdaptSettings()).steps == learner.config.inner_steps
        trace = learner.adapt(torch.as_tensor(support_x).unsqueeze(1), torch.as_tensor(support_y), 3).trace
        assert len(trace) == learner.config.inner_steps + 1
        assert learner.resolve_settings(AdaptSettings(steps=4)).steps == 4
    assert models["imaml"].resolve_settings(AdaptSettings()).optimizer == "armijo"
    learned = models["metasgd"].resolve_settings(AdaptSettings())
    assert learned.lr == "learned" and isinstance(learned.step_sizes, dict)
    assert not any(rate.requires_grad for rate in learned.step_sizes.values())  # values, not the meta-graph


def test_pretrain_shows_its_head_rate_and_adapts_with_per_weight_rates() -> None:
    pretrain = learners()["pretrain"]
    head_only = pretrain.resolve_settings(AdaptSettings(lr=0.3, finetune="head"))
    assert head_only.lr == 0.3 and head_only.finetune == "head"
    assert isinstance(head_only.step_sizes, dict)
    assert float(head_only.step_sizes["head.weight"]) == pytest.approx(0.3)
    assert float(head_only.step_sizes["conv0.weight"]) == 0.0  # a linear probe: the backbone stays
    everything = pretrain.resolve_settings(AdaptSettings(lr=0.3, finetune="all"))
    assert isinstance(everything.step_sizes, dict) and float(everything.step_sizes["conv0.weight"]) > 0


def test_adapt_runs_exactly_what_resolve_settings_says(monkeypatch: pytest.MonkeyPatch) -> None:
    """``adapt`` takes its steps, step sizes and optimizer from ``resolve_settings`` and nowhere else."""
    support_x, support_y = blobs(3, 1)
    images, labels = torch.as_tensor(support_x).unsqueeze(1), torch.as_tensor(support_y)
    for name, learner in learners().items():
        if not learner.has_inner_loop:
            continue
        resolved = learner.resolve_settings(AdaptSettings())
        forced = dataclasses.replace(resolved, steps=2, step_sizes=0.0, optimizer="sgd")
        monkeypatch.setattr(learner, "resolve_settings", lambda settings=None, forced=forced: forced)
        trace = learner.adapt(images, labels, 3, AdaptSettings(steps=7, lr=0.5)).trace
        assert [record.step for record in trace] == [0, 1, 2], name
        # Step size 0: nothing moves, whatever the settings asked for.
        assert trace[-1].loss == pytest.approx(trace[0].loss, abs=1e-6), name


def test_query_scoring_counts_only_labelled_queries() -> None:
    assert score_queries(np.array([0, 1, 2]), [0, None, 1]) == QueryScore(correct=1, labelled=2)
    assert score_queries(np.array([0, 1, 2]), torch.tensor([0, 1, -1])).accuracy == 1.0
    assert score_queries(np.array([0, 1]), None).accuracy is None
    assert score_queries(None, [0, 1]) == QueryScore()
    with pytest.raises(ValueError):
        score_queries(np.array([0, 1]), [0, 1, 2])
    run = AlgorithmResult("a", predictions=np.array([1, 1]))
    assert (rescored(run, [1, 0]).correct, rescored(run, [1, 0]).labelled) == (1, 2)
    failed = AlgorithmResult("b", predictions=np.array([1, 1]), error="x")
    assert rescored(failed, [1, 1]).query_accuracy is None and rescored(failed, [1, 1]).labelled == 0


def test_the_fused_switch_holds_for_its_own_thread_only() -> None:
    inside, other = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def switched_off() -> None:
        with kernels.fused(False):
            seen["switched"] = kernels.enabled()
            inside.set()
            other.wait(timeout=10)

    def looking() -> None:
        inside.wait(timeout=10)
        seen["other"] = kernels.enabled()
        other.set()

    threads = [threading.Thread(target=switched_off), threading.Thread(target=looking)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"switched": False, "other": True}
    assert kernels.enabled()


def test_comparison_workers_run_in_the_callers_fused_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    models = {name: learner for name, learner in learners().items() if name in ("maml", "fomaml", "protonet")}
    seen: dict[str, bool] = {}
    for name, model in models.items():
        original = model.adapt

        def recording(*args: object, name: str = name, original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            seen[name] = kernels.enabled()
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "adapt", recording)
    support_x, support_y = blobs(2, 1)
    with kernels.fused(False):
        compare(models, support_x, support_y, 2, settings=AdaptSettings(steps=1), workers=2)
    assert seen == dict.fromkeys(models, False)
    compare(models, support_x, support_y, 2, settings=AdaptSettings(steps=1), workers=2)
    assert seen == dict.fromkeys(models, True)


def test_ranked_puts_accuracy_first_and_failures_last() -> None:
    results = [AlgorithmResult("a", query_accuracy=0.5, adapt_ms=1), AlgorithmResult("b", error="x"),
               AlgorithmResult("c", query_accuracy=0.9, adapt_ms=9),
               AlgorithmResult("d", query_accuracy=0.9, adapt_ms=2)]
    assert [r.name for r in ranked(results)] == ["d", "c", "a", "b"]


def test_compare_task_uses_the_tasks_labels() -> None:
    support_x, support_y = blobs(2, 2)
    task = Task(support_x=torch.from_numpy(support_x).unsqueeze(1), support_y=torch.from_numpy(support_y),
                query_x=torch.from_numpy(support_x).unsqueeze(1), query_y=torch.from_numpy(support_y),
                ways=2, shots=2, class_names=("a", "b"))
    results = compare_task(learners(), task, AdaptSettings(steps=5))
    assert all(r.labelled == 4 for r in results)


def test_workers_start_the_longest_inner_loops_first_and_keep_the_result_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With workers, a free worker takes the next learner in order of expected cost (inner steps),
    so the quick ones fill the tail; results still come back in the order given."""
    models = learners()
    started: list[str] = []
    for name, model in models.items():
        original = model.adapt

        def recording(*args: object, name: str = name, original=original, **kwargs: object):  # type: ignore[no-untyped-def]
            started.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "adapt", recording)
    support_x, support_y = blobs(2, 1)
    settings = {**{name: AdaptSettings(steps=2) for name in models},
                "maml": AdaptSettings(steps=6), "reptile": AdaptSettings(steps=4)}
    results = compare(models, support_x, support_y, 2, settings=settings, workers=1)
    assert started == list(models)  # one worker: the order given
    # The queue the workers take from, in order (what starts when also depends on thread timing).
    queued: list[str] = []

    class RecordingPool(ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            queued.append(args[1] if fn is not None and len(args) > 1 else "?")
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(engine.compare, "ThreadPoolExecutor", RecordingPool)
    started.clear()
    results = compare(models, support_x, support_y, 2, settings=settings, workers=2)
    assert [result.name for result in results] == list(models)
    assert sorted(started) == sorted(models)
    assert queued[:2] == ["maml", "reptile"], queued  # the most steps first
    quick = [name for name, model in models.items() if not model.has_inner_loop]
    assert quick and set(queued[-len(quick):]) == set(quick), queued
