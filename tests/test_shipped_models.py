"""Every checkpoint shipped in models/ loads and still classifies evaluation-split tasks well above
chance, so a broken or untrained checkpoint cannot land silently; models/ tracks only what the app and
RESULTS.md need; and the results tooling works."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from engine import results
from engine.checkpoint import build_learner, load_learner, read_metadata
from engine.data.download import file_digest
from engine.data.omniglot import load_split
from engine.data.tasks import task_stream
from engine.evaluate import score, task_accuracies
from engine.learners import LEARNERS, About
from engine.learners.gradient import META_PREFIX
from engine.learners.protonet import ProtoNet
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


def tracked_files(folder: str) -> list[str]:
    """Paths git tracks under ``folder`` (skips when this is not a git checkout)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z", folder], cwd=REPO_ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [path for path in listing.stdout.decode().split("\0") if path]


def test_models_tracks_only_shipped_checkpoints_and_evaluations() -> None:
    """models/ holds, per shipped algorithm, its checkpoint, metadata and curve image; the evaluations and
    run summaries in eval/; and its four documents and scripts: no training state, no candidate run folder."""
    tracked = tracked_files("models")
    documents = {"models/README.md", "models/RESULTS.md", "models/train.sh", "models/train_round_robin.sh",
                 "models/eval/levers/run.sh"}  # the command behind the test-time lever evaluations beside it
    checkpoint_file = re.compile(rf"models/({'|'.join(LEARNERS)})/({'|'.join(map(re.escape, results.SHIPPED_FILES))})")
    evaluation_file = re.compile(r"models/eval/[^/]+/[^/]+\.json|models/eval/[^/]+/curve\.png")
    stray = [path for path in tracked
             if path not in documents and not checkpoint_file.fullmatch(path) and not evaluation_file.fullmatch(path)]
    assert not stray, stray
    assert sum((REPO_ROOT / path).stat().st_size for path in tracked) <= 15 * 2**20


def test_results_regenerate_from_the_committed_json(tmp_path: Path) -> None:
    """With no run folder anywhere, RESULTS.md renders byte for byte as committed: every number it shows
    comes from models/ itself (the evaluations and each run's summary in eval/)."""
    models = tmp_path / "models"
    shutil.copytree(MODELS, models)
    assert results.main(["--models", str(models), "--runs", str(tmp_path / "no runs"), "--table-only"]) == 0
    assert (models / "RESULTS.md").read_text() == (MODELS / "RESULTS.md").read_text()
    for name in SHIPPED:  # and the curve images redraw identically from the summaries
        assert (models / name / "curve.png").read_bytes() == (MODELS / name / "curve.png").read_bytes(), name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_summary_describes_the_shipped_checkpoint(name: str) -> None:
    summary = json.loads(results.summary_path(MODELS, name).read_text())
    assert summary["checkpoint_sha256"] == file_digest(MODELS / name / "model.safetensors", "sha256")
    assert summary["metadata"] == read_metadata(MODELS / name / "model")
    assert summary["validation_curve"], "the curve image is drawn from the summary"


@pytest.mark.parametrize("name", list(LEARNERS))
def test_every_algorithm_describes_itself(name: str) -> None:
    """What the app's "About" and RESULTS.md show: each learner sets its own ``about`` (not its parent's)."""
    about = vars(LEARNERS[name]).get("about")
    assert isinstance(about, About), f"{name} inherits its about"
    assert 2 <= len(re.findall(r"[.!?](?:\s|$)", about.summary)) <= 4, about.summary
    assert about.update_rule.strip() and "\n" not in about.update_rule
    assert about.paper is not None and about.paper.url.startswith("https://") and about.paper.title
    assert all(results.Setting(*setting) in results.SETTINGS and 0 < figure <= 100
               for setting, figure in about.paper.figures.items())


def render(models: Path, runs: Path) -> str:
    """RESULTS.md rendered from ``models`` and ``runs`` without evaluating anything."""
    assert results.main(["--models", str(models), "--runs", str(runs), "--table-only", "--tasks", "7"]) == 0
    return (models / "RESULTS.md").read_text()


def fake_run(folder: Path, algorithm: str, step: int, schedule: int, *, config: dict[str, object] | None = None,
             backbone: dict[str, object] | None = None, **train: object) -> Path:
    """A run folder with placeholder weights and the metadata the table reads; ``train`` adds training
    settings (e.g. ``split_scheme``: what puts a candidate in a section, whatever the folder's name),
    ``config`` and ``backbone`` the learner's and the network's."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"{algorithm} {folder.name} weights".encode())
    shape = {**({"config": config} if config else {}), **({"backbone": backbone} if backbone else {})}
    (folder / "model.json").write_text(json.dumps({"algorithm": algorithm, "meta_step": step, "val_accuracy": 0.9,
                                                   "train": {"meta_steps": schedule, **train},
                                                   "pieces": [], "wall_clock_seconds": 2.0, **shape}))
    return folder


def store_evaluation(models: Path, name: str, folder: Path, ways: int, accuracy: float,
                     transductive: bool = False, pipeline: str | None = None) -> None:
    """A stored ``ways``-way 1-shot evaluation of ``accuracy`` that describes the checkpoint in ``folder``
    (made on ``pipeline``; None: stored without one, as the legacy pipeline's were)."""
    steps, optimizer = results.test_settings(read_metadata(folder / "model"))
    path = results.evaluation_path(models, name, results.Setting(ways, 1), transductive)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"algorithm": read_metadata(folder / "model")["algorithm"], "ways": ways, "shots": 1,
                                "tasks": 7, "accuracy": accuracy, "ci95": 0.003, "inner_steps": steps,
                                "optimizer": optimizer, "transductive": transductive,
                                "checkpoint_sha256": file_digest(folder / "model.safetensors", "sha256"),
                                **({} if pipeline is None else {"pipeline": pipeline})}))


def test_results_table_from_stored_evaluations(tmp_path: Path) -> None:
    """A run is published from its training folder and RESULTS.md is rendered from evaluation JSON and
    the run's summary; a changed checkpoint invalidates its evaluation."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    run = fake_run(runs / "maml", "maml", 10, 40)
    (run / "curve.jsonl").write_text("".join(json.dumps({"step": s, "seconds": 2.0 * s, "val_accuracy": 0.5 + s / 100})
                                             + "\n" for s in (5, 10)))
    (run / "resume.safetensors").write_bytes(b"state")
    assert results.main(["--models", str(models), "--publish", str(run)]) == 0
    shipped = models / "maml"
    assert sorted(path.name for path in shipped.iterdir()) == sorted(results.SHIPPED_FILES)  # no training state
    stored = {"algorithm": "maml", "ways": 5, "shots": 1, "tasks": 7, "accuracy": 0.91, "ci95": 0.02,
              "inner_steps": 10, "checkpoint_sha256": file_digest(shipped / "model.safetensors", "sha256")}
    path = results.evaluation_path(models, "maml", results.Setting(5, 1))
    path.write_text(json.dumps(stored))
    # Matching checkpoint and task count: the stored result is used, no evaluation runs.
    [maml] = results.shipped_runs(models, runs)
    assert results.evaluate_checkpoint(models, maml, results.Setting(5, 1), 7, None, "cpu") == stored

    # MAML's paper normalised with the query batch: a transductive evaluation gets its own row.
    transductive = results.evaluation_path(models, "maml", results.Setting(5, 1), transductive=True)
    transductive.write_text(json.dumps({**stored, "accuracy": 0.95, "transductive": True}))
    shutil.rmtree(runs)  # the committed summary stands in for the run folder
    table = render(models, runs)
    assert "| **maml** (ours) | 91.00 ± 2.00 | not evaluated |" in table
    assert "| maml (ours), transductive batch norm | 95.00 ± 2.00 | not evaluated |" in table
    assert "MAML (Finn et al. 2017) | 98.70 |" in table
    assert "5w1s missed by 7.7 pt" in table  # MAML must meet its figure: 98.7 - 91.0
    assert "30 steps ≈ 0.0 h" in table  # 40-step schedule, 10 done at 2 s each
    assert "unfinished schedule: the CPU budget stopped it" in table
    assert (shipped / "curve.png").stat().st_size > 0 and "[curve](maml/curve.png)" in table

    # A checkpoint whose configuration now adapts with other test-time settings: the stored
    # evaluation (10 steps) no longer describes it either.
    metadata = json.loads((shipped / "model.json").read_text())
    (shipped / "model.json").write_text(json.dumps({**metadata, "config": {"test_inner_steps": 3}}))
    assert "**maml** (ours)" not in render(models, runs)
    (shipped / "model.json").write_text(json.dumps(metadata))
    assert "**maml** (ours)" in render(models, runs)

    # A retrained checkpoint: the stored evaluation no longer describes it and leaves the table.
    (shipped / "model.safetensors").write_bytes(b"other weights")
    table = render(models, runs)
    assert "**maml** (ours)" not in table and "| maml | not evaluated yet |" in table


def test_a_shipped_runs_summary_follows_its_training_folder(tmp_path: Path) -> None:
    """While the run a checkpoint was published from keeps training (same best checkpoint), the table
    shows how far it got; once the folder holds another checkpoint, the published one's summary stays."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    run = fake_run(runs / "protonet-long", "protonet", 10, 40)
    state = {"step": 20, "train_seconds": 40.0, "train": {"meta_steps": 40}, "pieces": []}
    (run / "resume.json").write_text(json.dumps(state))
    assert results.main(["--models", str(models), "--publish", str(run)]) == 0
    assert "| protonet | not evaluated yet | 90.0% (step 10) | 20 steps," in render(models, runs)
    (run / "resume.json").write_text(json.dumps({**state, "step": 30, "train_seconds": 60.0}))
    assert "| protonet | not evaluated yet | 90.0% (step 10) | 30 steps," in render(models, runs)
    (run / "model.safetensors").write_bytes(b"a better checkpoint, not published")
    (run / "resume.json").write_text(json.dumps({**state, "step": 40, "train_seconds": 80.0}))
    assert "| protonet | not evaluated yet | 90.0% (step 10) | 30 steps," in render(models, runs)


def test_target_extrapolation_follows_a_power_law_curve() -> None:
    """error = 0.5 * step^-0.5 reaches 1% error at step 2500; a flat curve gives no estimate."""
    falling = [(step, step / 3600, 1 - 0.5 * step ** -0.5) for step in range(100, 1100, 100)]
    assert results.power_law_steps(falling, 0.99) == pytest.approx(2500, rel=1e-6)
    flat = [(step, step / 3600, 0.9) for step in range(100, 1100, 100)]
    assert results.power_law_steps(flat, 0.99) is None
    assert results.power_law_steps(falling[:3], 0.99) is None  # too few points to fit
    slower = [(step, step / 3600, 1 - 2.0 * step ** -0.5) for step in range(100, 1100, 100)]  # 93.7% at 1000
    status = {"val_accuracy": slower[-1][2] + 0.01, "trained": 1000, "schedule": 50000, "seconds_per_step": 3.6}
    evaluated = {results.Setting(5, 1): {"accuracy": slower[-1][2]}}  # evaluation 1 point below validation
    needed = results.figures("fomaml")[results.Setting(5, 1)] - results.TOLERANCE[results.Setting(5, 1)] + 1.0  # on validation
    text = results.target_time("fomaml", evaluated, status, slower)
    steps = (2.0 / (1 - needed / 100)) ** 2
    assert f"≈ {steps:,.0f} steps" in text and f"{(steps - 1000) * 3.6 / 3600:.1f} h more" in text, text
    assert results.target_time("fomaml", {results.Setting(5, 1): {"accuracy": 0.999}}, status, slower) == "met"
    assert "beyond 100x" in results.target_time("fomaml", evaluated, {**status, "schedule": 50}, slower)


def test_runs_on_the_papers_split_get_their_own_table(tmp_path: Path) -> None:
    """A run on the papers' character split is shown apart from the shipped rows, beside its paper."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    assert "On the papers' split" not in render(models, runs)
    run = fake_run(runs / "protonet-characters", "protonet", 10, 40, split_scheme="characters")
    store_evaluation(models, "protonet-characters", run, 20, 0.962)
    table = render(models, runs)
    section = table[table.index("## On the papers' split"):]
    assert ("| **protonet-characters** (protonet, ours) | not evaluated | not evaluated | 96.20 ± 0.30 | not evaluated "
            "| not evaluated | 0 | 10 / 40 |") in section
    # With a learning curve, the run gets its figure (in eval/, as it is not shipped), linked from its row.
    (run / "curve.jsonl").write_text("\n".join(json.dumps({"step": step, "seconds": step, "val_accuracy": 0.9})
                                               for step in (5, 10)))
    table = render(models, runs)
    assert (models / "eval" / "protonet-characters" / "curve.png").stat().st_size > 0
    assert "| **protonet-characters** (protonet, ours) ([curve](eval/protonet-characters/curve.png)) |" in table

    # A MAML-family run gets a transductive row too, as in the main table.
    run = fake_run(runs / "maml-characters", "maml", 4, 8, split_scheme="characters")
    steps, _ = results.test_settings(read_metadata(run / "model"))
    for transductive, accuracy in ((False, 0.955), (True, 0.97)):
        store_evaluation(models, "maml-characters", run, 5, accuracy, transductive)
    table = render(models, runs)
    section = table[table.index("## On the papers' split"):]
    rest = f"| not evaluated | not evaluated | not evaluated | {{}} | {steps} | 4 / 8 |"
    assert f"| **maml-characters** (maml, ours) | 95.50 ± 0.30 {rest.format('not evaluated')}" in section
    # The papers' transductive protocol has no within-alphabet task: not "not evaluated" but "—".
    assert f"| maml-characters (maml, ours), transductive batch norm | 97.00 ± 0.30 {rest.format('—')}" in section
    assert "maml-characters" not in table[:table.index("## On the papers' split")]
    assert "| Prototypical Networks (Snell et al. 2017) | 98.80 | 99.70 | 96.00 | 98.90 |" in section
    assert "**protonet-characters**" not in table[:table.index("## On the papers' split")]

    # With the shipped maml evaluated too, the split's worth at the targets' settings, and the verdicts.
    assert "What the split is worth" not in section
    shipped = fake_run(models / "maml", "maml", 4, 8)
    store_evaluation(models, "maml", shipped, 5, 0.93)
    table = render(models, runs)
    section = table.split("## On the papers' split")[1]
    assert "| maml-characters | +2.50 | — | — | 5w1s missed by 3.2 pt | 5w1s missed by 5.7 pt |" in section
    assert "| protonet-characters |" not in section  # no shipped protonet to compare with

    # Without the run folders the table is the same: each candidate's summary is in eval/.
    shutil.rmtree(runs)
    assert render(models, runs) == table


def test_a_candidates_section_comes_from_its_metadata_not_its_name(tmp_path: Path) -> None:
    """Oddly named runs land where their configuration says: one on the character split in the papers'
    split section, one whose name claims that split but whose metadata is the shipped configuration in
    none, one with 2 inner steps among the candidate settings, with its change spelled out."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    shipped = fake_run(models / "protonet", "protonet", 10, 40)
    store_evaluation(models, "protonet", shipped, 5, 0.983)
    store_evaluation(models, "ours-again", fake_run(runs / "ours-again", "protonet", 10, 40), 5, 0.95)
    store_evaluation(models, "trial-7", fake_run(runs / "trial-7", "protonet", 10, 40, split_scheme="characters"),
                     5, 0.99)
    store_evaluation(models, "maml-characters", fake_run(runs / "maml-characters", "maml", 10, 40), 5, 0.97)
    fake_run(models / "maml", "maml", 10, 40)
    two_steps = fake_run(runs / "x", "maml", 10, 40, config={"inner_steps": 2})
    store_evaluation(models, "x", two_steps, 5, 0.96)
    table = render(models, runs)
    papers, settings = table.split("## On the papers' split")[1].split("## Candidate settings")
    assert "| **trial-7** (protonet, ours) | 99.00 ± 0.30 |" in papers
    assert "| trial-7 | +0.70 | — | — | 5w1s met | 5w1s missed by 0.5 pt |" in papers
    assert "maml-characters" not in table and "ours-again" not in table
    maml_steps = results.configuration({"algorithm": "maml"})["config.inner_steps"]
    assert f"| **x** (maml, ours; inner_steps {maml_steps} → 2) | 96.00 ± 0.30 |" in settings


def test_runs_on_all_background_alphabets_are_compared_with_the_shipped_run(tmp_path: Path) -> None:
    """A run trained on the validation alphabets too (split scheme ``background``) gets its own section,
    not the papers' split's, with what those alphabets are worth against the shipped run."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    store_evaluation(models, "protonet-background",
                     fake_run(runs / "protonet-background", "protonet", 10, 40, split_scheme="background"), 5, 0.989)
    store_evaluation(models, "protonet", fake_run(models / "protonet", "protonet", 10, 40), 5, 0.983)
    table = render(models, runs)
    assert "## On the papers' split" not in table
    section = table.split("## On all 30 background alphabets")[1]
    assert "| **protonet-background** (protonet, ours) | 98.90 ± 0.30 | not evaluated |" in section
    assert "| Prototypical Networks (Snell et al. 2017) | 98.80 |" in section
    assert "| protonet-background | +0.60 | — | — | 5w1s met | 5w1s missed by 0.5 pt |" in section
    assert "5w1s: all background alphabets − ours" in section


def test_runs_that_change_one_setting_are_compared_with_the_shipped_run(tmp_path: Path) -> None:
    """Candidates that change one setting (2 inner steps; 5- to 20-way episodes: several settings, one
    section; look-alike episodes; a wider backbone) are listed apart from the shipped rows, each against the shipped run of its algorithm."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    two_steps = fake_run(runs / "mc2-2steps", "mc2", 10, 40, config={"inner_steps": 2})
    store_evaluation(models, "mc2-2steps", two_steps, 5, 0.97)
    ways = fake_run(runs / "mc2-ways5to20", "mc2", 10, 40, config={"min_train_ways": 5}, ways=20)
    store_evaluation(models, "mc2-ways5to20", ways, 5, 0.95)
    store_evaluation(models, "mc2", fake_run(models / "mc2", "mc2", 10, 40, ways=5), 5, 0.96)
    table = render(models, runs)
    shipped, section = table.split("## Candidate settings")
    assert "| **mc2** (ours) | 96.00 ± 0.30 |" in shipped and "mc2-" not in shipped
    default_steps = results.configuration({"algorithm": "mc2"})["config.inner_steps"]
    assert f"| **mc2-2steps** (mc2, ours; inner_steps {default_steps} → 2) | 97.00 ± 0.30 | not evaluated |" in section
    assert "| **mc2-ways5to20** (mc2, ours; min_train_ways none → 5, ways 5 → 20) | 95.00 ± 0.30 |" in section
    assert "| mc2-2steps | +1.00 | — | — | 5w1s missed by 1.8 pt | 5w1s missed by 2.8 pt |" in section
    assert "| mc2-ways5to20 | -1.00 | — | — | 5w1s missed by 3.8 pt | 5w1s missed by 2.8 pt |" in section

    # Episodes drawn from one alphabet: a setting of the training run, on the shipped run's own split.
    for folder in (models / "mc2", runs):
        shutil.rmtree(folder)
    store_evaluation(models, "mc2", fake_run(models / "mc2", "mc2", 10, 40, split_scheme="background"), 5, 0.96)
    within = fake_run(runs / "mc2-within", "mc2", 10, 40, split_scheme="background", within_alphabet=0.5)
    store_evaluation(models, "mc2-within", within, 5, 0.965)
    section = render(models, runs).split("## Candidate settings")[1]
    assert "| **mc2-within** (mc2, ours; within_alphabet 0.0 → 0.5) | 96.50 ± 0.30 |" in section
    assert "| mc2-within | +0.50 |" in section

    # A wider backbone: the checkpoint's backbone metadata, not its training settings.
    wide = fake_run(runs / "mc2-wide", "mc2", 10, 40, backbone={"channels": 128}, split_scheme="background")
    store_evaluation(models, "mc2-wide", wide, 5, 0.94)
    section = render(models, runs).split("## Candidate settings")[1]
    assert "| **mc2-wide** (mc2, ours; channels 64 → 128) | 94.00 ± 0.30 |" in section
    assert "| mc2-wide | -2.00 |" in section
    cosine = fake_run(runs / "mc2-cosine", "mc2", 10, 40, config={"meta_lr_schedule": "cosine", "meta_lr_warmup": 5},
                      split_scheme="background")
    store_evaluation(models, "mc2-cosine", cosine, 5, 0.97)
    section = render(models, runs).split("## Candidate settings")[1]
    assert "| **mc2-cosine** (mc2, ours; meta_lr_schedule linear → cosine, meta_lr_warmup 0 → 5) | 97.00" in section


def test_a_learner_without_paper_figures_still_gets_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newly registered algorithm that names no paper: its rows, no published row, no target."""

    class Paperless(ProtoNet):
        name = "paperless"
        about = About(summary="Made up. For this test.", update_rule="none")

    monkeypatch.setitem(LEARNERS, "paperless", Paperless)
    models, runs = tmp_path / "models", tmp_path / "runs"
    store_evaluation(models, "paperless", fake_run(models / "paperless", "paperless", 10, 10), 5, 0.91)
    table = render(models, runs)
    assert "| **paperless** (ours) | 91.00 ± 0.30 | not evaluated |" in table
    assert "| paperless | no single published figure | 90.0% (step 10) |" in table


def test_train_sh_trains_into_runs_and_resumes_there(tmp_path: Path) -> None:
    """models/train.sh writes a run into runs/RUN (or $RUNS/RUN), never into models/, and resumes it."""
    def command(run: str, **env: str) -> str:
        return subprocess.run(["bash", "models/train.sh", run], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True, env={**os.environ, "PYTHON": "echo", **env}).stdout

    assert "--algorithm maml --out runs/maml " in command("maml") and "--resume" not in command("maml")
    (tmp_path / "mc2-2steps").mkdir()
    (tmp_path / "mc2-2steps" / "resume.safetensors").write_bytes(b"state")  # the one file a run commits
    resumed = command("mc2-2steps", RUNS=str(tmp_path))
    assert f"--algorithm mc2 --out {tmp_path}/mc2-2steps " in resumed and "--resume" in resumed
    # ALGORITHM-canonical: the shipped configuration, validated on 20-way 1-shot tasks, into its own folder.
    canonical = command("protonet-canonical")
    assert "--algorithm protonet --out runs/protonet-canonical --ways 60 " in canonical
    assert canonical.index("--val-tasks 200") < canonical.index("--val-ways 20 --val-tasks 100")
    # ALGORITHM-canonical-background: the same on all 30 background alphabets (the run to ship).
    final = command("metasgd-canonical-background")
    assert "--algorithm metasgd --out runs/metasgd-canonical-background " in final
    assert "--split-scheme background" in final and "--val-ways 20" in final and "--within-alphabet" not in final
    # ALGORITHM-within...: the same with half of the episodes from one alphabet; protonet's background runs
    # take the shortened schedule, the last --meta-steps.
    within = command("protonet-within-canonical-background")
    assert "--algorithm protonet --out runs/protonet-within-canonical-background " in within
    assert "--split-scheme background" in within and "--within-alphabet 0.5" in within
    assert within.split("--meta-steps ")[-1].startswith("10000 ")
    # ALGORITHM-wide...: the same at 128 filters a layer.
    wide = command("pretrain-wide-canonical-background")
    assert "--algorithm pretrain --out runs/pretrain-wide-canonical-background " in wide
    assert "--channels 128" in wide and "--split-scheme background" in wide and "--channels" not in final
    # ALGORITHM-cosine...: the same along a cosine after a warm-up.
    cosine = command("pretrain-cosine-canonical-background")
    assert "--algorithm pretrain --out runs/pretrain-cosine-canonical-background " in cosine
    assert "--meta-lr-schedule cosine --meta-lr-warmup 500" in cosine and "--meta-lr-schedule" not in wide


def test_a_run_on_the_canonical_pipeline_is_evaluated_on_it_and_compared_in_its_section(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluations run on the pipeline a checkpoint trained on (stored ones without a pipeline are the legacy
    one's), the within-alphabet column asks for within-alphabet tasks, and a run that changes the pipeline or
    the augmentation is set against the shipped run in its own section."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    candidate = fake_run(runs / "anything", "protonet", 10, 40, pipeline="canonical", augment=1.0)
    store_evaluation(models, "protonet", fake_run(models / "protonet", "protonet", 10, 40), 20, 0.90)
    store_evaluation(models, "anything", candidate, 20, 0.92)  # stored without a pipeline: the legacy one's
    calls: list[list[str]] = []

    def fake_evaluate(argv: list[str]) -> int:
        calls.append(argv)
        within = "--within-alphabet" in argv
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(
            {"algorithm": "protonet", "ways": 20, "shots": 1, "tasks": 7, "accuracy": 0.8 if within else 0.93,
             "ci95": 0.01, "inner_steps": 0, "optimizer": None, "transductive": False, "within_alphabet": within,
             "pipeline": argv[argv.index("--pipeline") + 1]}))
        return 0

    monkeypatch.setattr(results.evaluate, "main", fake_evaluate)
    [run] = results.candidate_runs(models, runs)
    within = results.evaluate_checkpoint(models, run, results.WITHIN_ALPHABET, 7, None, "cpu")
    assert calls[-1][calls[-1].index("--pipeline") + 1] == "canonical" and "--within-alphabet" in calls[-1]
    assert calls[-1][calls[-1].index("--undo-rising-steps") + 1] == "off"  # the papers' plain inner loop
    assert within["accuracy"] == 0.8 and results.evaluation_path(models, "anything", results.WITHIN_ALPHABET).exists()
    across = results.evaluate_checkpoint(models, run, results.Setting(20, 1), 7, None, "cpu")
    assert across["accuracy"] == 0.93 and len(calls) == 2  # the legacy-pipeline evaluation did not describe it
    table = render(models, runs)
    section = table.split("## One image pipeline and augmentation")[1]
    assert "| **anything** (protonet, ours; pipeline raw → canonical, augment 0.0 → 1.0) |" in section
    assert "| anything | — | +3.00 | — | " in section
    # The shipped run's legacy evaluation still describes it (it trained on the legacy pipeline).
    assert "| **protonet** (ours) | not evaluated | not evaluated | 90.00 ± 0.30 |" in table


def test_a_pipeline_candidate_is_also_set_against_the_shipped_run_as_the_app_serves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating a canonical-pipeline candidate also evaluates its shipped run (trained on the legacy
    pipeline) through the canonical one, at the compared settings, into files of their own; RESULTS.md
    shows that row under the candidate and the candidate's gain against it."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    fake_run(runs / "protonet-canonical", "protonet", 10, 40, pipeline="canonical", augment=1.0)
    store_evaluation(models, "protonet", fake_run(models / "protonet", "protonet", 10, 40), 20, 0.90)
    calls: list[list[str]] = []

    def fake_evaluate(argv: list[str]) -> int:
        calls.append(argv)
        candidate = "runs" in argv[argv.index("--checkpoint") + 1]
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(
            {"algorithm": "protonet", "ways": int(argv[argv.index("--ways") + 1]), "shots": 1, "tasks": 7,
             "accuracy": 0.95 if candidate else 0.94, "ci95": 0.01, "inner_steps": 0, "optimizer": None,
             "transductive": False, "pipeline": argv[argv.index("--pipeline") + 1]}))
        return 0

    monkeypatch.setattr(results.evaluate, "main", fake_evaluate)
    assert results.main(["--models", str(models), "--runs", str(runs), "--tasks", "7",
                         "--algorithms", "protonet-canonical"]) == 0
    served = [argv for argv in calls if "runs" not in argv[argv.index("--checkpoint") + 1]]
    assert len(served) == len(results.WORTH_SETTINGS)
    assert all(argv[argv.index("--pipeline") + 1] == "canonical" for argv in served)
    served_file = results.evaluation_path(models, "protonet", results.Setting(20, 1), served="canonical")
    assert served_file.exists() and served_file != results.evaluation_path(models, "protonet", results.Setting(20, 1))
    table = (models / "RESULTS.md").read_text()
    assert "| **protonet** (ours) | not evaluated | not evaluated | 90.00 ± 0.30 |" in table  # its own pipeline
    section = table.split("## One image pipeline and augmentation")[1]
    assert "| **protonet** (shipped, ours) through the canonical pipeline, as the app serves it | 94.00 ± 1.00 |" in section
    assert "| protonet-canonical | +1.00 | +1.00 | +1.00 | " in section  # against the served evaluations
    assert "| protonet-canonical | — | +5.00 | — | " in section  # against the main table's (legacy pipeline)
    # Rendered again from the stored JSON alone, nothing is evaluated and the same table comes out.
    calls.clear()
    assert render(models, runs) == table and not calls


def test_a_canonical_run_on_all_background_alphabets_is_set_against_the_shipped_run_as_served(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A canonical-pipeline run that also changes the split (the run that would replace a raw checkpoint) is
    listed in its split's section, and there too set against the shipped run as the app serves it; a raw run on
    the same split is not (both trained on the same pipeline)."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    fake_run(runs / "protonet-canonical-background", "protonet", 10, 40, pipeline="canonical", augment=1.0,
             split_scheme="background")
    raw = fake_run(runs / "protonet-background", "protonet", 10, 40, split_scheme="background")
    store_evaluation(models, "protonet-background", raw, 20, 0.91)
    store_evaluation(models, "protonet", fake_run(models / "protonet", "protonet", 10, 40), 20, 0.90)
    calls: list[list[str]] = []
    monkeypatch.setattr(results.evaluate, "main", served_evaluator(calls, 0.93))
    assert results.main(["--models", str(models), "--runs", str(runs), "--tasks", "7",
                         "--algorithms", "protonet-canonical-background"]) == 0
    served = [argv for argv in calls if "runs" not in argv[argv.index("--checkpoint") + 1]]
    assert len(served) == len(results.WORTH_SETTINGS)
    section = (models / "RESULTS.md").read_text().split("## On all 30 background alphabets")[1].split("\n## ")[0]
    rows = section.split("\n")
    shown = rows.index("| **protonet** (shipped, ours) through the canonical pipeline, as the app serves it | 93.00 ± 1.00 "
                       "| not evaluated | 93.00 ± 1.00 | not evaluated | 93.00 ± 1.00 | 0 | 10 / 40 |")
    assert rows[shown - 1].startswith("| **protonet-canonical-background** (protonet, ours) ")
    assert sum("as the app serves it |" in row for row in rows) == 1  # not under the raw run
    as_served = section.split("through the canonical pipeline, as the app serves it, support-set batch norm)")[1]
    assert "| protonet-canonical-background | +0.00 | +0.00 | +0.00 | " in as_served
    assert "| protonet-background |" not in as_served


def served_evaluator(calls: list[list[str]], accuracy: float) -> Callable[[list[str]], int]:
    """A stand-in for ``engine.evaluate.main`` that records its argv and stores ``accuracy`` for the setting
    and pipeline it was asked for, with the SHA-256 of the checkpoint file it was given."""
    def fake_evaluate(argv: list[str]) -> int:
        calls.append(argv)
        weights = Path(argv[argv.index("--checkpoint") + 1] + ".safetensors")
        Path(argv[argv.index("--json") + 1]).write_text(json.dumps(
            {"algorithm": "protonet", "ways": int(argv[argv.index("--ways") + 1]), "shots": 1, "tasks": 7,
             "accuracy": accuracy, "ci95": 0.01, "inner_steps": 0, "optimizer": None, "transductive": False,
             "within_alphabet": "--within-alphabet" in argv, "pipeline": argv[argv.index("--pipeline") + 1],
             "weights_sha256": file_digest(weights, "sha256")}))
        return 0
    return fake_evaluate


def test_publishing_a_new_run_keeps_the_replaced_checkpoint_and_what_was_compared_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shipping a run that changes the pipeline and the split retires the shipped checkpoint: first evaluated
    through the canonical pipeline, as the app served it, its evaluations move to a retired run of their own,
    listed with what replacing it changed (as evaluated and as served), and a candidate trained against the
    retired configuration is still compared with the retired checkpoint, not the new one."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    calls: list[list[str]] = []
    monkeypatch.setattr(results.evaluate, "main", served_evaluator(calls, 0.92))
    old = fake_run(runs / "protonet", "protonet", 10, 40)
    assert results.main(["--models", str(models), "--publish", str(old), "--tasks", "7"]) == 0
    assert not calls  # nothing replaced, nothing to evaluate
    old_sha = file_digest(models / "protonet" / "model.safetensors", "sha256")
    store_evaluation(models, "protonet", models / "protonet", 20, 0.90)
    candidate = fake_run(runs / "protonet-canonical", "protonet", 10, 40, pipeline="canonical", augment=1.0)
    store_evaluation(models, "protonet-canonical", candidate, 20, 0.93, pipeline="canonical")
    new = fake_run(runs / "protonet-canonical-background", "protonet", 10, 40, pipeline="canonical", augment=1.0,
                   split_scheme="background")
    assert results.main(["--models", str(models), "--publish", str(new), "--tasks", "7"]) == 0
    # The outgoing checkpoint, through the app's pipeline, at each compared setting, before it left models/.
    assert len(calls) == len(results.WORTH_SETTINGS)
    assert all(argv[argv.index("--pipeline") + 1] == "canonical" for argv in calls)
    retired = models / "eval" / f"protonet-retired-{old_sha[:8]}"
    summary = json.loads((retired / "run.json").read_text())
    assert summary["checkpoint_sha256"] == old_sha
    assert summary["retired"]["replaced_by_sha256"] == file_digest(new / "model.safetensors", "sha256")
    assert (retired / "20w1s.json").exists() and not (models / "eval" / "protonet" / "20w1s.json").exists()
    served = json.loads((retired / "20w1s-served-canonical.json").read_text())
    assert served["weights_sha256"] == served["checkpoint_sha256"] == old_sha  # the old weights, not the new
    assert not list((models / "eval" / "protonet").glob("*-served-*.json"))
    store_evaluation(models, "protonet", models / "protonet", 20, 0.95, pipeline="canonical")
    # The folder it was published from holds the shipped checkpoint: not a candidate of its own.
    assert [run.name for run in results.candidate_runs(models, runs)] == [
        "protonet-canonical", f"protonet-retired-{old_sha[:8]}"]
    assert not (models / "eval" / "protonet-canonical-background").exists()
    shutil.rmtree(runs / "protonet")
    shutil.rmtree(runs / "protonet-canonical-background")
    table = render(models, runs)
    assert "| **protonet** (ours) | not evaluated | not evaluated | 95.00 ± 0.30 |" in table
    # Trained on the validation alphabets too: its validation figure is fit, and nothing is extrapolated from it.
    budget = next(line for line in table.splitlines() if line.startswith("| protonet | "))
    assert "alphabets it trained on too" in budget and "— (validated on alphabets it trained on)" in budget
    section = table.split("## Checkpoints shipped before")[1]
    assert (f"| **protonet-retired-{old_sha[:8]}** (protonet, ours; split_scheme alphabets → background, "
            "pipeline raw → canonical, augment 0.0 → 1.0) |") in section
    assert f"| protonet-retired-{old_sha[:8]} | — | -5.00 | — | " in section  # 90 against the 95 shipped now
    pipeline = table.split("## One image pipeline and augmentation")[1].split("## Checkpoints shipped before")[0]
    assert f"| protonet-canonical (against protonet-retired-{old_sha[:8]}) | — | +3.00 | — | " in pipeline
    # As the app served it: 92 through the canonical pipeline, 3 points under the 95 shipped now.
    assert (f"| **protonet-retired-{old_sha[:8]}** (protonet, shipped before, ours) through the canonical pipeline, "
            "as the app served it | 92.00 ± 1.00 | not evaluated | 92.00 ± 1.00 |") in section
    as_served = section.split("as the app served it, support-set batch norm)")[1]
    assert f"| protonet-retired-{old_sha[:8]} | — | -3.00 | — | " in as_served  # only 20w1s is shipped now
    # Publishing the same checkpoint again retires nothing.
    assert results.retire(models, "protonet", file_digest(models / "protonet" / "model.safetensors", "sha256")) is None


def test_publishing_goes_on_when_the_replaced_checkpoint_cannot_be_evaluated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An evaluation that fails (no dataset here, say) costs the as-served figures, not the publication: the
    warning names the command that makes them later from git's history."""
    models, runs = tmp_path / "models", tmp_path / "runs"
    monkeypatch.setattr(results.evaluate, "main", lambda argv: 1)
    assert results.main(["--models", str(models), "--publish", str(fake_run(runs / "protonet", "protonet", 10, 40))]) == 0
    old_sha = file_digest(models / "protonet" / "model.safetensors", "sha256")
    new = fake_run(runs / "protonet-canonical-background", "protonet", 10, 40, pipeline="canonical",
                   split_scheme="background")
    assert results.main(["--models", str(models), "--publish", str(new)]) == 0
    assert file_digest(models / "protonet" / "model.safetensors", "sha256") == file_digest(new / "model.safetensors",
                                                                                           "sha256")
    retired = models / "eval" / f"protonet-retired-{old_sha[:8]}"
    assert (retired / "run.json").exists() and not list(retired.glob("*-served-*.json"))
    assert f"--algorithms protonet-retired-{old_sha[:8]}` does it from git's history" in capsys.readouterr().err


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_a_retired_checkpoint_is_recovered_from_git_and_evaluated_as_the_app_served_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint retired before its as-served figures existed: naming its retired run finds its weights
    in git's history (by SHA-256, past later versions), evaluates them through the canonical pipeline and shows
    the row; a SHA no commit holds is reported, and nothing is evaluated without asking."""
    repo = tmp_path / "repo"
    models, runs = repo / "models", repo / "runs"
    git(repo.parent, "init", "-q", str(repo))
    old = fake_run(tmp_path / "old", "protonet", 10, 40)
    calls: list[list[str]] = []
    monkeypatch.setattr(results.evaluate, "main", served_evaluator(calls, 0.91))
    assert results.main(["--models", str(models), "--publish", str(old)]) == 0
    git(repo, "add", "models")
    git(repo, "commit", "-qm", "ship the old one")
    old_sha = file_digest(models / "protonet" / "model.safetensors", "sha256")
    # Retired without its as-served figures (as before publish made them): a later version replaces it.
    results.retire(models, "protonet", "new")
    (models / "protonet" / "model.safetensors").write_bytes(b"protonet newer weights")
    git(repo, "commit", "-qam", "ship the new one")
    name = f"protonet-retired-{old_sha[:8]}"
    assert "as the app served it" not in render(models, runs) and not calls
    assert results.main(["--models", str(models), "--runs", str(runs), "--tasks", "7", "--algorithms", name]) == 0
    # Its own settings again (the pipeline it was trained on), and the compared ones as the app served it.
    pipelines = [argv[argv.index("--pipeline") + 1] for argv in calls]
    assert pipelines.count("canonical") == len(results.WORTH_SETTINGS)
    assert pipelines.count("raw") == len(results.SETTINGS)
    served = json.loads(results.evaluation_path(models, name, results.Setting(5, 1), served="canonical").read_text())
    assert served["weights_sha256"] == old_sha and served["pipeline"] == "canonical"
    assert re.fullmatch(r"[0-9a-f]{12}:.*models/protonet/model", served["checkpoint"])  # COMMIT:path, not a temp file
    assert f"| **{name}** (protonet, shipped before, ours) through the canonical pipeline" in (models / "RESULTS.md").read_text()

    (models / "eval" / name / "run.json").write_text(json.dumps(
        {**json.loads((models / "eval" / name / "run.json").read_text()), "checkpoint_sha256": "0" * 64}))
    for path in (models / "eval" / name).glob("*-served-*.json"):
        path.unlink()
    calls.clear()
    capsys.readouterr()
    assert results.main(["--models", str(models), "--runs", str(runs), "--tasks", "7", "--algorithms", name]) == 0
    assert not calls and f"{name}: its weights are not in this clone's git history" in capsys.readouterr().err
