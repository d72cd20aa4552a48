"""Inner loops that do not silently blow up: every gradient learner reports divergence (non-finite or
rising loss, no step lowering it, probabilities saturated by a blown-up step), and the default
settings, which take back a step that raises the support loss, do not diverge on 5-way 5-shot
tasks of either domain: Omniglot's evaluation characters and (synthetic) handwritten digits."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_learner
from engine.compare import AlgorithmResult, compare_task
from engine.data.omniglot import load_split
from engine.data.tasks import Task, task_stream
from engine.learners import LEARNERS, AdaptSettings, Learner, StepRecord
from engine.learners.gradient import (
    DIVERGED_HALVINGS, SATURATED_LOGIT_GAP, logit_gap, saturation_warning, stalled_warning,
)
from engine.nets import BackboneConfig
from engine.paths import REPO_ROOT
from tests.digits import digit_drawings, digit_task

MODELS = REPO_ROOT / "models"
GRADIENT = sorted(name for name in LEARNERS if LEARNERS[name].has_inner_loop)
WITHOUT_INNER_LOOP = sorted(name for name in LEARNERS if not LEARNERS[name].has_inner_loop)
BLOW_UP = AdaptSettings(lr=1000.0, steps=50)


def shipped(name: str) -> Learner:
    path = MODELS / name / "model.safetensors"
    if not path.is_file():
        pytest.skip(f"no shipped checkpoint for {name}")
    return load_learner(MODELS / name / "model")


def digit_tasks(count: int, seed: int, shots: int = 5) -> list[Task]:
    rng = np.random.default_rng(seed)
    drawings = digit_drawings()
    return [digit_task(drawings, 5, shots, 5, rng) for _ in range(count)]


def records(losses: list[float]) -> list[StepRecord]:
    return [StepRecord(step, loss, 0.5, float(step)) for step, loss in enumerate(losses)]


# --------------------------------------------------------------------------- the detectors


def test_saturated_logits_and_refused_steps_are_divergence() -> None:
    assert logit_gap(torch.tensor([[0.0, 3.0, -2.0], [1.0, 1.0, 1.0]])) == 5.0
    assert saturation_warning(SATURATED_LOGIT_GAP / 2) is None
    warning = saturation_warning(2 * SATURATED_LOGIT_GAP)
    assert warning is not None and "diverged" in warning and "saturated" in warning
    assert stalled_warning(records([1.6, 1.2, 0.9])) is None
    assert stalled_warning(records([1.6])) is None  # no step taken: nothing to lower
    stalled = stalled_warning(records([1.6, 1.6, 1.6]))
    assert stalled is not None and "none of its 2 steps" in stalled


@pytest.mark.parametrize("name", GRADIENT)
def test_taken_back_steps_keep_the_loss_from_rising(name: str) -> None:
    """Random weights and a step size large enough to overshoot: with the default guard the trace
    never rises and the notes say which steps were taken back; without it the loss rises."""
    learner = LEARNERS[name](backbone=BackboneConfig(channels=8), seed=3)
    task = digit_tasks(1, seed=1)[0]
    guarded = learner.adapt(task.support_x, task.support_y, 5, AdaptSettings(lr=30.0, steps=8))
    losses = [record.loss for record in guarded.trace]
    assert len(losses) == 9 and all(later <= earlier for earlier, later in zip(losses, losses[1:])), losses
    raw = learner.adapt(task.support_x, task.support_y, 5, AdaptSettings(lr=30.0, steps=8, undo_rising_steps=False))
    raw_losses = [record.loss for record in raw.trace]
    if learner.resolve_settings().optimizer == "armijo":  # a line search never accepts a rising step itself
        assert all(later <= earlier for earlier, later in zip(raw_losses, raw_losses[1:])), raw_losses
        return
    assert raw.diverged and raw.warning is not None and "rose" in raw.warning, raw_losses
    assert any("taken back" in note for note in guarded.notes), guarded.notes


# --------------------------------------------------------------------------- a step size far too large


@pytest.mark.parametrize("undo_rising_steps", [True, False])
@pytest.mark.parametrize("name", GRADIENT)
def test_every_gradient_learner_reports_a_step_size_of_1000_as_divergence(name: str, undo_rising_steps: bool) -> None:
    learner = shipped(name)
    settings = AdaptSettings(lr=BLOW_UP.lr, steps=BLOW_UP.steps, undo_rising_steps=undo_rising_steps)
    for task in digit_tasks(2, seed=5):
        adapted = learner.adapt(task.support_x, task.support_y, task.ways, settings)
        assert adapted.diverged and adapted.warning is not None and "diverg" in adapted.warning, adapted.warning
        assert torch.isfinite(adapted.predict_proba(task.query_x)).all()


def test_a_comparison_shows_the_divergence_as_each_algorithms_status() -> None:
    learners = {name: shipped(name) for name in sorted(LEARNERS)}
    task = digit_tasks(1, seed=9)[0]
    results = {result.name: result for result in compare_task(learners, task, BLOW_UP, workers=2)}
    assert {name: results[name].status for name in GRADIENT} == dict.fromkeys(GRADIENT, "diverged")
    # Nothing to diverge without an inner loop: the settings do not apply.
    assert {name: results[name].status for name in WITHOUT_INNER_LOOP} == dict.fromkeys(WITHOUT_INNER_LOOP, "ok")
    assert AlgorithmResult("x", error="boom").status == "failed"
    assert AlgorithmResult("x", warning="odd").status == "warning"


def test_learners_without_an_inner_loop_warn_about_non_finite_outputs() -> None:
    task = digit_tasks(1, seed=2)[0]
    for name in WITHOUT_INNER_LOOP:
        learner = shipped(name)
        assert learner.adapt(task.support_x, task.support_y, task.ways).warning is None
        broken = load_learner(MODELS / name / "model")
        first = next(iter(broken.params))
        broken.params[first] = torch.full_like(broken.params[first], float("nan")).requires_grad_(True)
        adapted = broken.adapt(task.support_x, task.support_y, task.ways)
        assert adapted.warning is not None and "not finite" in adapted.warning, name
        assert not adapted.diverged


# --------------------------------------------------------------------------- the defaults do not diverge

TASKS = 200


def assert_no_divergence(tasks: list[Task]) -> None:
    for name in GRADIENT:
        learner = shipped(name)
        diverged = []
        for index, task in enumerate(tasks):
            adapted = learner.adapt(task.support_x, task.support_y, task.ways)
            if adapted.diverged:
                diverged.append((index, adapted.warning))
            losses = [record.loss for record in adapted.trace]
            assert all(later <= earlier for earlier, later in zip(losses, losses[1:])), (name, index, losses)
        assert not diverged, f"{name} diverged on {len(diverged)} of {len(tasks)} tasks: {diverged[:3]}"


@pytest.mark.slow
def test_the_defaults_do_not_diverge_on_200_digit_tasks() -> None:
    tasks = digit_tasks(TASKS, seed=7)
    assert_no_divergence(tasks)
    # What the guard prevents: without it, MAML's 10 default steps diverge on some of these tasks.
    maml = shipped("maml")
    raw = [maml.adapt(task.support_x, task.support_y, 5, AdaptSettings(undo_rising_steps=False)) for task in tasks]
    assert any(adapted.diverged for adapted in raw)


@pytest.mark.slow
def test_the_defaults_do_not_diverge_on_200_omniglot_tasks(omniglot_dir: Path) -> None:
    chars = load_split(omniglot_dir, "evaluation", progress=False)
    assert_no_divergence(list(itertools.islice(task_stream(chars, 5, 5, 5, seed=11), TASKS)))


def test_the_guard_gives_up_on_a_step_size_after_enough_halvings() -> None:
    """A step size whose every step raises the loss: the guard cuts it ``DIVERGED_HALVINGS`` times and
    then reports divergence, instead of quietly running at a tiny step size."""
    learner = LEARNERS["maml"](backbone=BackboneConfig(channels=8), seed=0)
    task = digit_tasks(1, seed=4)[0]
    adapted = learner.adapt(task.support_x, task.support_y, 5, AdaptSettings(lr=-1.0, steps=DIVERGED_HALVINGS + 2))
    assert adapted.diverged and adapted.warning is not None and "taken back" in adapted.warning, adapted.warning
    assert any("taken back" in note for note in adapted.notes)


def test_digit_drawings_are_deterministic_preprocessed_images() -> None:
    drawings = digit_drawings(per_digit=3, seed=1)
    assert drawings.shape == (10, 3, 1, 28, 28) and drawings.dtype == torch.float32
    assert float(drawings.min()) >= 0.0 and float(drawings.max()) <= 1.0
    assert bool((drawings.flatten(2).amax(dim=2) > 0.5).all())  # every drawing has ink
    torch.testing.assert_close(digit_drawings.__wrapped__(per_digit=3, seed=1), drawings)
    task = digit_task(drawings, 4, 2, 1, np.random.default_rng(0))
    assert task.support_x.shape == (8, 1, 28, 28) and task.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(set(task.class_names)) == 4
