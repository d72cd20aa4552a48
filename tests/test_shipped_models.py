"""Every checkpoint shipped in models/ loads and still classifies evaluation-split tasks well above
chance, so a broken or untrained checkpoint cannot land silently; and the results tooling works."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from engine import results
from engine.checkpoint import build_learner, load_learner, read_metadata
from engine.data.download import file_digest
from engine.data.omniglot import load_split
from engine.data.tasks import task_stream
from engine.evaluate import score, task_accuracies
from engine.learners.gradient import META_PREFIX
from engine.paths import REPO_ROOT

MODELS = REPO_ROOT / "models"
SHIPPED = results.shipped_algorithms(MODELS)
# A few dozen 5-way 1-shot tasks: enough to separate a working model (> 90%) from a broken one (20%).
TASKS = 30
MIN_ACCURACY = 0.7


def test_at_least_one_checkpoint_is_shipped() -> None:
    assert SHIPPED, "models/ holds no checkpoint"


@pytest.mark.parametrize("name", SHIPPED)
def test_checkpoint_is_small_and_documented(name: str) -> None:
    run = MODELS / name
    assert (run / "model.safetensors").stat().st_size < 5 * 2**20
    metadata = read_metadata(run / "model")
    assert metadata["algorithm"] == name
    assert metadata["meta_step"] > 0, "an untrained checkpoint"
    assert "seed" in metadata["train"] and metadata["pieces"], "seed and training pieces must be recorded"
    for piece in metadata["pieces"]:
        assert piece["hardware"] and piece["seconds"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_well_above_chance(name: str, omniglot_dir: Path) -> None:
    learner = load_learner(MODELS / name / "model")
    chars = load_split(omniglot_dir, "evaluation", progress=False)
    tasks = itertools.islice(task_stream(chars, 5, 1, 5, seed=123), TASKS)
    result = score(task_accuracies(learner, tasks))
    assert result.accuracy >= MIN_ACCURACY, f"{name}: {result.accuracy:.3f} on {TASKS} 5-way 1-shot tasks"


ONE_STEP_LEARNED = [name for name in ("metasgd", "mc1", "mc2") if name in SHIPPED]


@pytest.mark.parametrize("name", ONE_STEP_LEARNED)
def test_one_step_checkpoints_learned_only_their_heads_entries(name: str) -> None:
    """What RESULTS.md's metasgd and mc2 notes say of the shipped 1-step runs: every backbone learning
    rate or curvature matrix is still exactly its initial value; only the head's entries moved. A
    retrained checkpoint that learns them fails here, so the notes cannot go stale silently."""
    path = MODELS / name / "model"
    metadata = read_metadata(path)
    if metadata["config"]["inner_steps"] != 1:
        pytest.skip(f"{name} now trains with {metadata['config']['inner_steps']} inner steps")
    trained, initial = load_learner(path).params, build_learner(metadata).params
    meta = [key for key in trained if key.startswith(META_PREFIX)]
    moved = [key for key in meta if not torch.equal(trained[key], initial[key])]
    assert moved and all(".head." in key for key in moved), moved


def test_results_table_from_stored_evaluations(tmp_path: Path) -> None:
    """RESULTS.md is rendered from evaluation JSON; a changed checkpoint invalidates its evaluation."""
    run = tmp_path / "maml"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "model.json").write_text(json.dumps({"algorithm": "maml", "meta_step": 10, "val_accuracy": 0.9,
                                                "train": {"meta_steps": 40}, "pieces": [],
                                                "wall_clock_seconds": 20.0}))
    (run / "curve.jsonl").write_text("".join(json.dumps({"step": s, "seconds": 2.0 * s, "val_accuracy": 0.5 + s / 100})
                                             + "\n" for s in (5, 10)))
    stored = {"algorithm": "maml", "ways": 5, "shots": 1, "tasks": 7, "accuracy": 0.91, "ci95": 0.02,
              "inner_steps": 10, "checkpoint_sha256": file_digest(run / "model.safetensors", "sha256")}
    path = results.evaluation_path(tmp_path, "maml", 5, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stored))
    # Matching checkpoint and task count: the stored result is used, no evaluation runs.
    assert results.evaluate_checkpoint(tmp_path, "maml", 5, 1, 7, None, "cpu") == stored

    # MAML's paper normalised with the query batch: a transductive evaluation gets its own row.
    transductive = results.evaluation_path(tmp_path, "maml", 5, 1, transductive=True)
    transductive.write_text(json.dumps({**stored, "accuracy": 0.95, "transductive": True}))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert "| **maml** (ours) | 91.00 ± 2.00 | not evaluated |" in table
    assert "| maml (ours), transductive batch norm | 95.00 ± 2.00 | not evaluated |" in table
    assert "MAML (Finn et al. 2017) | 98.70 |" in table
    assert "5w1s missed by 7.7 pt" in table  # MAML must meet its figure: 98.7 - 91.0
    assert "30 steps ≈ 0.0 h" in table  # 40-step schedule, 10 done at 2 s each
    assert "unfinished schedule: the CPU budget stopped it" in table
    assert (run / "curve.png").stat().st_size > 0

    # A checkpoint whose configuration now adapts with other test-time settings: the stored
    # evaluation (10 steps) no longer describes it either.
    metadata = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**metadata, "config": {"test_inner_steps": 3}}))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    assert "**maml** (ours)" not in (tmp_path / "RESULTS.md").read_text()
    (run / "model.json").write_text(json.dumps(metadata))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    assert "**maml** (ours)" in (tmp_path / "RESULTS.md").read_text()

    # A retrained checkpoint: the stored evaluation no longer describes it and leaves the table.
    (run / "model.safetensors").write_bytes(b"other weights")
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert "**maml** (ours)" not in table and "| maml | not evaluated yet |" in table


def test_time_per_step_is_the_latest_pieces() -> None:
    """A run whose code got faster is estimated at its latest piece's speed; pieces too short to
    time fall back to the run's average."""
    pieces = [{"start_step": 0, "end_step": 1000, "seconds": 2000.0},
              {"start_step": 1000, "end_step": 1400, "seconds": 400.0},
              {"start_step": 1400, "end_step": 1410, "seconds": 50.0}]
    assert results.recent_seconds_per_step(pieces, 1.75) == pytest.approx(1.0)
    assert results.recent_seconds_per_step(pieces[2:], 1.75) == pytest.approx(1.75)
    assert results.recent_seconds_per_step([], 1.75) == pytest.approx(1.75)


def test_target_extrapolation_follows_a_power_law_curve() -> None:
    """error = 0.5 * step^-0.5 reaches 1% error at step 2500; a flat curve gives no estimate."""
    falling = [(step, step / 3600, 1 - 0.5 * step ** -0.5) for step in range(100, 1100, 100)]
    assert results.power_law_steps(falling, 0.99) == pytest.approx(2500, rel=1e-6)
    flat = [(step, step / 3600, 0.9) for step in range(100, 1100, 100)]
    assert results.power_law_steps(flat, 0.99) is None
    assert results.power_law_steps(falling[:3], 0.99) is None  # too few points to fit
    slower = [(step, step / 3600, 1 - 2.0 * step ** -0.5) for step in range(100, 1100, 100)]  # 93.7% at 1000
    status = {"val_accuracy": slower[-1][2] + 0.01, "trained": 1000, "schedule": 50000, "seconds_per_step": 3.6}
    evaluated = {(5, 1): {"accuracy": slower[-1][2]}}  # evaluation 1 point below validation
    needed = results.PUBLISHED["fomaml"].accuracy[(5, 1)] - results.TOLERANCE[(5, 1)] + 1.0  # on validation
    text = results.target_time("fomaml", evaluated, status, slower)
    steps = (2.0 / (1 - needed / 100)) ** 2
    assert f"≈ {steps:,.0f} steps" in text and f"{(steps - 1000) * 3.6 / 3600:.1f} h more" in text, text
    assert results.target_time("fomaml", {(5, 1): {"accuracy": 0.999}}, status, slower) == "met"
    assert "beyond 100x" in results.target_time("fomaml", evaluated, {**status, "schedule": 50}, slower)


def fake_run(models: Path, algorithm: str, step: int, schedule: int, folder: str | None = None) -> Path:
    """``models/<algorithm>-characters`` (or ``folder``) with placeholder weights and the metadata the table reads
    (not the split scheme: the folder's name says which table a run belongs to)."""
    run = models / (folder or f"{algorithm}-characters")
    run.mkdir()
    (run / "model.safetensors").write_bytes(f"{algorithm} weights".encode())
    (run / "model.json").write_text(json.dumps({"algorithm": algorithm, "meta_step": step, "val_accuracy": 0.9,
                                                "train": {"meta_steps": schedule},
                                                "pieces": [], "wall_clock_seconds": 2.0}))
    return run


def test_runs_on_the_papers_split_get_their_own_table(tmp_path: Path) -> None:
    """A run on the papers' character split is shown apart from the shipped rows, beside its paper."""
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    assert "On the papers' split" not in (tmp_path / "RESULTS.md").read_text()
    run = fake_run(tmp_path, "protonet", 10, 40)
    stored = {"algorithm": "protonet", "ways": 20, "shots": 1, "tasks": 7, "accuracy": 0.962, "ci95": 0.003,
              "inner_steps": 0, "optimizer": None, "checkpoint_sha256": file_digest(run / "model.safetensors", "sha256")}
    path = results.evaluation_path(tmp_path, "protonet-characters", 20, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stored))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    section = table[table.index("## On the papers' split"):]
    assert ("| **protonet-characters** (protonet, ours) | not evaluated | not evaluated | 96.20 ± 0.30 | not evaluated "
            "| 0 | 10 / 40 |") in section
    # With a learning curve, the run gets its figure, linked from its row.
    (run / "curve.jsonl").write_text("\n".join(json.dumps({"step": step, "seconds": step, "val_accuracy": 0.9})
                                               for step in (5, 10)))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    assert (run / "curve.png").stat().st_size > 0
    assert "| **protonet-characters** (protonet, ours) ([curve](protonet-characters/curve.png)) |" in (
        tmp_path / "RESULTS.md").read_text()

    # A MAML-family run gets a transductive row too, as in the main table.
    run = fake_run(tmp_path, "maml", 4, 8)
    steps, optimizer = results.test_settings(run / "model")
    for transductive, accuracy in ((False, 0.955), (True, 0.97)):
        path = results.evaluation_path(tmp_path, "maml-characters", 5, 1, transductive)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**stored, "algorithm": "maml", "ways": 5, "accuracy": accuracy,
                                    "inner_steps": steps, "optimizer": optimizer, "transductive": transductive,
                                    "checkpoint_sha256": file_digest(run / "model.safetensors", "sha256")}))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    section = table[table.index("## On the papers' split"):]
    rest = f"| not evaluated | not evaluated | not evaluated | {steps} | 4 / 8 |"
    assert f"| **maml-characters** (maml, ours) | 95.50 ± 0.30 {rest}" in section
    assert f"| maml-characters (maml, ours), transductive batch norm | 97.00 ± 0.30 {rest}" in section
    assert "maml-characters" not in table[:table.index("## On the papers' split")]
    assert "| Prototypical Networks (Snell et al. 2017) | 98.80 | 99.70 | 96.00 | 98.90 |" in section
    assert "**protonet-characters**" not in table[:table.index("## On the papers' split")]

    # With the shipped maml evaluated too, the split's worth at the targets' settings, and the verdicts.
    assert "What the split is worth" not in section
    shipped = fake_run(tmp_path, "maml", 4, 8, folder="maml")
    path = results.evaluation_path(tmp_path, "maml", 5, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**stored, "algorithm": "maml", "ways": 5, "accuracy": 0.93, "inner_steps": steps,
                                "optimizer": optimizer,
                                "checkpoint_sha256": file_digest(shipped / "model.safetensors", "sha256")}))
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    section = (tmp_path / "RESULTS.md").read_text().split("## On the papers' split")[1]
    assert ("| maml-characters | +2.50 | — | 5w1s missed by 3.2 pt | 5w1s missed by 5.7 pt |") in section
    assert "| protonet-characters |" not in section  # no shipped protonet to compare with


def evaluated_run(models: Path, folder: str, algorithm: str, accuracy: float) -> None:
    """A fake run in ``models/<folder>`` with a stored 5-way 1-shot evaluation of ``accuracy``."""
    run = fake_run(models, algorithm, 10, 40, folder=folder)
    steps, optimizer = results.test_settings(run / "model")
    path = results.evaluation_path(models, folder, 5, 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"algorithm": algorithm, "ways": 5, "shots": 1, "tasks": 7, "accuracy": accuracy,
                                "ci95": 0.003, "inner_steps": steps, "optimizer": optimizer,
                                "checkpoint_sha256": file_digest(run / "model.safetensors", "sha256")}))


def test_runs_on_all_background_alphabets_are_compared_with_the_shipped_run(tmp_path: Path) -> None:
    """A run trained on the validation alphabets too (``<algorithm>-background``) gets its own section,
    not the papers' split's, with what those alphabets are worth against the shipped run."""
    evaluated_run(tmp_path, "protonet-background", "protonet", 0.989)
    evaluated_run(tmp_path, "protonet", "protonet", 0.983)
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    assert "## On the papers' split" not in table
    section = table.split("## On all 30 background alphabets")[1]
    assert "| **protonet-background** (protonet, ours) | 98.90 ± 0.30 | not evaluated |" in section
    assert "| Prototypical Networks (Snell et al. 2017) | 98.80 |" in section
    assert "| protonet-background | +0.60 | — | 5w1s met | 5w1s missed by 0.5 pt |" in section
    assert "5w1s: all background alphabets − ours" in section


def test_runs_that_change_one_setting_are_compared_with_the_shipped_run(tmp_path: Path) -> None:
    """Candidates that change one setting (``mc2-2steps``, ``mc2-ways5to20``: several suffixes, one section)
    are listed apart from the shipped rows, each against the shipped run of its algorithm."""
    evaluated_run(tmp_path, "mc2-2steps", "mc2", 0.97)
    evaluated_run(tmp_path, "mc2-ways5to20", "mc2", 0.95)
    evaluated_run(tmp_path, "mc2", "mc2", 0.96)
    assert results.main(["--models", str(tmp_path), "--table-only", "--tasks", "7"]) == 0
    table = (tmp_path / "RESULTS.md").read_text()
    shipped, section = table.split("## Candidate settings")
    assert "| **mc2** (ours) | 96.00 ± 0.30 |" in shipped and "mc2-" not in shipped
    assert "| **mc2-2steps** (mc2, ours) | 97.00 ± 0.30 | not evaluated |" in section
    assert "| **mc2-ways5to20** (mc2, ours) | 95.00 ± 0.30 | not evaluated |" in section
    assert "| mc2-2steps | +1.00 | — | 5w1s missed by 1.8 pt | 5w1s missed by 2.8 pt |" in section
    assert "| mc2-ways5to20 | -1.00 | — | 5w1s missed by 3.8 pt | 5w1s missed by 2.8 pt |" in section
