"""engine.train and engine.evaluate end to end on real Omniglot, including --resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import evaluate, train
from engine.checkpoint import load_learner, load_tensors, read_metadata, read_tensor_metadata, save_tensors
from engine.data.omniglot import load_splits
from engine.learners import LEARNERS
from engine.paths import REPO_ROOT

# Small but real: Conv-4 at 8 channels, a handful of meta-steps.
SMALL = ["--channels", "8", "--meta-batch", "2", "--val-every", "4", "--val-tasks", "8", "--no-progress",
         "--inner-steps", "1"]


def test_help_names_every_algorithm(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in LEARNERS:
        assert name in text
    with pytest.raises(SystemExit):
        train.main(["--algorithm", "maml", "--help"])
    assert "--inner-lr" in capsys.readouterr().out


def run_train(*args: str, data_dir: Path) -> None:
    assert train.main(["--data-dir", str(data_dir), *args]) == 0


def test_train_then_evaluate(tmp_path: Path, omniglot_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run_train("--algorithm", "fomaml", "--out", str(out), "--meta-steps", "8", *SMALL, data_dir=omniglot_dir)
    metadata = read_metadata(out / "model")
    assert metadata["algorithm"] == "fomaml" and metadata["backbone"]["channels"] == 8
    assert metadata["train"]["meta_steps"] == 8 and metadata["config"]["inner_steps"] == 1
    assert 0.0 <= metadata["val_accuracy"] <= 1.0
    assert set(metadata["dataset"]) == {"images_background.zip", "images_evaluation.zip"}
    assert metadata["pieces"][0]["hardware"].startswith("cpu")
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == list(range(1, 9))
    assert [r["step"] for r in curve if "val_accuracy" in r] == [4, 8]

    # Refuses to silently overwrite a run.
    assert train.main(["--data-dir", str(omniglot_dir), "--algorithm", "fomaml", "--out", str(out), *SMALL]) == 2

    result_path = tmp_path / "result.json"
    assert evaluate.main(["--checkpoint", str(out / "model"), "--ways", "3", "--shots", "2", "--tasks", "5",
                          "--seed", "1", "--data-dir", str(omniglot_dir), "--json", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert {"algorithm", "ways", "shots", "tasks", "accuracy", "ci95", "inner_steps"} <= result.keys()
    assert result["algorithm"] == "fomaml" and result["ways"] == 3 and result["shots"] == 2 and result["tasks"] == 5
    assert 0.0 <= result["accuracy"] <= 1.0 and result["ci95"] >= 0.0 and result["inner_steps"] == 10
    assert "95% CI over 5 tasks" in capsys.readouterr().out
    # Same seed, same tasks, same number.
    again = tmp_path / "again.json"
    evaluate.main(["--checkpoint", str(out / "model"), "--ways", "3", "--shots", "2", "--tasks", "5",
                   "--seed", "1", "--data-dir", str(omniglot_dir), "--json", str(again)])
    assert json.loads(again.read_text())["accuracy"] == result["accuracy"]


def test_evaluate_reports_a_broken_checkpoint(tmp_path: Path, omniglot_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.json").write_text('{"algorithm": "maml"}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    assert evaluate.main(["--checkpoint", str(tmp_path / "model"), "--data-dir", str(omniglot_dir)]) == 2
    assert "corrupt" in capsys.readouterr().err


def small_protonet_run(out: Path, data_dir: Path, steps: int) -> list[str]:
    """engine.train's arguments for a run of ``steps`` episodes small enough to train in seconds."""
    return ["--algorithm", "protonet", "--out", str(out), "--data-dir", str(data_dir), "--meta-steps", str(steps),
            "--ways", "5", "--channels", "8", "--val-every", "5", "--val-tasks", "4", "--no-progress"]


def train_command(out: Path, data_dir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "engine.train", *small_protonet_run(out, data_dir, steps)]


def assert_same_weights(run: Path, reference: Path) -> None:
    """``run`` ended bit-identical to ``reference`` (their latest weights)."""
    final, expected = load_tensors(run / "last.safetensors"), load_tensors(reference / "last.safetensors")
    for name in expected:
        assert torch.equal(final[name], expected[name]), name


def test_resume_after_kill_continues_exactly(tmp_path: Path, omniglot_dir: Path) -> None:
    """A run killed mid-way and resumed ends bit-identical to an uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    steps = 30
    straight = tmp_path / "straight"
    subprocess.run(train_command(straight, omniglot_dir, steps), env=env, check=True, capture_output=True,
                   cwd=REPO_ROOT, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(killed, omniglot_dir, steps), env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = killed / "resume.json"
        if state.exists() and json.loads(state.read_text())["step"] >= 10:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    # The step --resume starts from (resume.json, a copy written after it, can lag by one save).
    interrupted_at = json.loads(read_tensor_metadata(killed / "resume.safetensors")["state"])["step"]
    assert 10 <= interrupted_at < steps, "the run finished before it could be interrupted"

    subprocess.run(train_command(killed, omniglot_dir, steps) + ["--resume"], env=env, check=True,
                   capture_output=True, cwd=REPO_ROOT, timeout=600)
    assert_same_weights(killed, straight)
    metadata = read_metadata(killed / "last")
    assert metadata["meta_step"] == steps and len(metadata["pieces"]) == 2
    assert metadata["pieces"][1]["start_step"] == interrupted_at
    assert read_metadata(straight / "model")["val_accuracy"] == read_metadata(killed / "model")["val_accuracy"]
    assert load_learner(killed / "model").name == "protonet"


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing catches it."""


def kill_during_save(args: list[str], monkeypatch: pytest.MonkeyPatch, save: int, files_written: int) -> None:
    """Run ``engine.train`` with ``args`` and stop it as SIGKILL would, inside its ``save``-th save of
    the resumable state, after ``files_written`` of that save's files."""
    saves, replaced = 0, 0
    real_save_state, real_replace = train.Trainer.save_state, os.replace

    def save_state(trainer: train.Trainer) -> None:
        nonlocal saves
        saves += 1
        real_save_state(trainer)

    def replace(source: str, destination: Path) -> None:
        nonlocal replaced
        if saves == save:
            if replaced == files_written:
                raise Killed
            replaced += 1
        real_replace(source, destination)

    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "save_state", save_state)
        patch.setattr("engine.checkpoint.os.replace", replace)
        with pytest.raises(Killed):
            train.main(args)


@pytest.mark.parametrize("files_written", [0, 1, 2, 3])
def test_a_kill_part_way_through_a_save_resumes_exactly(tmp_path: Path, omniglot_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch, files_written: int) -> None:
    """A save writes several files; a run killed after any number of them resumes from one consistent
    step and ends bit-identical to an uninterrupted run (CI once caught weights of one step resumed with
    the task sampler of the previous save)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train.main(small_protonet_run(straight, omniglot_dir, 15)) == 0
    kill_during_save(small_protonet_run(killed, omniglot_dir, 15), monkeypatch, save=2, files_written=files_written)
    assert train.main(small_protonet_run(killed, omniglot_dir, 15) + ["--resume"]) == 0
    assert_same_weights(killed, straight)


def test_a_kill_before_the_first_complete_save_leaves_nothing_to_resume(
        tmp_path: Path, omniglot_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Killed after last.* but before resume.safetensors of the first save: --resume says so and
    exits 2 instead of failing with a traceback."""
    args = small_protonet_run(tmp_path, omniglot_dir, 5)
    kill_during_save(args, monkeypatch, save=1, files_written=2)
    assert (tmp_path / "last.safetensors").exists() and not (tmp_path / "resume.safetensors").exists()
    assert train.main([*args, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_reads_a_state_saved_before_the_single_file_format(tmp_path: Path, omniglot_dir: Path) -> None:
    """Runs saved before resume.safetensors held everything (weights in last.*, bare optimizer
    tensors, the rest in resume.json) still resume, to the same result."""
    straight, legacy = tmp_path / "straight", tmp_path / "legacy"
    for run in (straight, legacy):
        assert train.main(small_protonet_run(run, omniglot_dir, 5)) == 0
    tensors = load_tensors(legacy / "resume.safetensors")
    save_tensors(legacy / "resume.safetensors", {key.removeprefix("optimizer."): value for key, value in tensors.items()
                                                 if key.startswith("optimizer.")})
    for run in (straight, legacy):
        assert train.main(small_protonet_run(run, omniglot_dir, 10) + ["--resume"]) == 0
    assert_same_weights(legacy, straight)


# Per algorithm: the training settings of a short run (the rest is TrainConfig's defaults) and
# learner overrides. Validation: 50 fixed 5-way 1-shot tasks from the held-out alphabets.
SHORT_RUNS = {
    "maml": ({"meta_batch": 4, "queries": 5, "meta_steps": 300, "val_every": 300}, {"inner_steps": 1, "meta_lr": 3e-3}),
    # iMAML's own defaults (models/train.sh's configuration); it learns slower early on.
    "imaml": ({"meta_batch": 4, "queries": 5, "meta_steps": 100, "val_every": 50}, {}),
    "mc1": ({"meta_batch": 4, "queries": 5}, {"inner_steps": 1, "meta_lr": 3e-3}),
    "mc2": ({"meta_batch": 4, "queries": 5}, {"inner_steps": 1, "meta_lr": 3e-3}),
    "metasgd": ({"meta_batch": 4, "queries": 5}, {"inner_steps": 1, "meta_lr": 3e-3}),
    "fomaml": ({"meta_batch": 4, "queries": 5}, {"inner_steps": 3, "meta_lr": 3e-3, "test_inner_steps": 3}),
    "reptile": ({"meta_batch": 4, "shots": 5, "queries": 1}, {"meta_lr_final": None}),
    "protonet": ({"meta_batch": 1, "ways": 20}, {}),
    # 1-shot episodes of 2-20 ways, as it trains by default.
    "blackbox": ({"meta_batch": 2, "ways": 20, "shots": 1}, {}),
    # Ordinary classification of 128-image batches; validation fine-tunes a head on each task.
    "pretrain": ({"meta_steps": 600, "val_every": 600}, {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_short_training_lifts_validation_accuracy_well_above_chance(name: str, omniglot_dir: Path,
                                                                    tmp_path: Path) -> None:
    from engine.data.omniglot import load_splits
    from engine.learners import get_learner_class
    from engine.nets import BackboneConfig

    train_overrides, learner_overrides = SHORT_RUNS.get(name, ({}, {}))
    # Without augmentation: 100 steps are meant to show learning, not to fit the harder, augmented task.
    config = train.TrainConfig(**{"meta_steps": 100, "val_every": 100, "val_tasks": 50, "augment": 0.0,
                                  **train_overrides})
    cls = get_learner_class(name)
    splits = load_splits(omniglot_dir, progress=False)
    learner_config = cls.config_for_data(cls.config_class(**learner_overrides), splits.train, config)
    learner = cls(config=learner_config, backbone=BackboneConfig(channels=32), seed=0)
    trainer = train.Trainer(learner, config, splits, tmp_path, torch.device("cpu"), provenance={}, progress=False)
    before = trainer.validate()
    after = trainer.run()
    chance = 1 / config.val_ways
    assert after >= 0.5 > 2 * chance, f"{name}: {before:.3f} -> {after:.3f}"
    assert after >= before + 0.1, f"{name}: {before:.3f} -> {after:.3f}"


def test_max_minutes_pauses_with_the_state_saved(omniglot_dir: Path, tmp_path: Path) -> None:
    """``--max-minutes``: the piece stops after its time (here: after the first step), saves a
    resumable state, and a later piece carries on from there to the end of the schedule."""
    args = ["--algorithm", "protonet", "--out", str(tmp_path), "--meta-steps", "3", "--ways", "5", "--channels", "8",
            "--val-every", "3", "--val-tasks", "2", "--no-progress"]
    assert train.main(["--data-dir", str(omniglot_dir), *args, "--max-minutes", "1e-9"]) == 0
    assert json.loads((tmp_path / "resume.json").read_text())["step"] == 1
    assert train.main(["--data-dir", str(omniglot_dir), *args, "--resume"]) == 0
    metadata = read_metadata(tmp_path / "last")
    assert metadata["meta_step"] == 3 and [p["start_step"] for p in metadata["pieces"]] == [0, 1]


def test_the_split_scheme_is_the_runs_own_through_resume_and_evaluation(tmp_path: Path, omniglot_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on the papers' character split keeps it when resumed without the flag, and evaluation
    draws its tasks from that split's test characters unless told otherwise."""
    schemes: list[str] = []
    real_load_splits = train.load_splits
    monkeypatch.setattr(train, "load_splits", lambda data_dir, scheme, pipeline: schemes.append(scheme) or
                        real_load_splits(data_dir, scheme=scheme, pipeline=pipeline, progress=False))
    out = tmp_path / "run"
    common = ["--algorithm", "fomaml", "--out", str(out), *SMALL]
    run_train(*common, "--meta-steps", "2", "--split-scheme", "characters", data_dir=omniglot_dir)
    run_train(*common, "--meta-steps", "4", "--resume", data_dir=omniglot_dir)
    assert schemes == ["characters", "characters"]
    assert read_metadata(out / "model")["train"]["split_scheme"] == "characters"
    assert read_metadata(out / "model")["val_setting"].endswith("from the character split's 172 validation characters")

    drawn_from: list[tuple[str, ...]] = []
    real_stream = evaluate.task_stream
    monkeypatch.setattr(evaluate, "task_stream", lambda chars, *args: drawn_from.append(chars.characters) or
                        real_stream(chars, *args))
    base = ["--checkpoint", str(out / "model"), "--ways", "3", "--tasks", "2", "--data-dir", str(omniglot_dir)]
    assert evaluate.main(base) == 0
    assert evaluate.main([*base, "--split", "validation"]) == 0
    assert evaluate.main([*base, "--split-scheme", "alphabets"]) == 0
    papers = load_splits(omniglot_dir, scheme="characters", progress=False)
    assert drawn_from == [papers.test.characters, papers.val.characters,
                          load_splits(omniglot_dir, progress=False).test.characters]


def test_training_on_the_validation_characters_keeps_the_latest_checkpoint(tmp_path: Path, omniglot_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``--split-scheme background`` training sees the validation alphabets, so their accuracy cannot
    pick a checkpoint: model.* is the latest validated step even when an earlier one validated better.
    Under the default scheme the better one stays."""
    scores = iter([0.9, 0.5, 0.9, 0.5])  # each run validates at steps 4 and 8
    monkeypatch.setattr(train.Trainer, "validate", lambda self: next(scores))
    steps = {}
    for scheme in ("alphabets", "background"):
        out = tmp_path / scheme
        run_train("--algorithm", "fomaml", "--out", str(out), "--meta-steps", "8", "--split-scheme", scheme, *SMALL,
                  data_dir=omniglot_dir)
        metadata = read_metadata(out / "model")
        steps[scheme] = (metadata["meta_step"], metadata["val_accuracy"])
    assert steps == {"alphabets": (4, 0.9), "background": (8, 0.5)}
    assert read_metadata(tmp_path / "background" / "model")["val_setting"].endswith("not model selection)")
