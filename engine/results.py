"""The results table of the shipped checkpoints, beside the papers' figures.

    python -m engine.results                      # evaluate what changed, redraw curves, write models/RESULTS.md
    python -m engine.results --table-only         # rewrite RESULTS.md from the committed JSON only
    python -m engine.results --publish runs/maml  # ship a run: copy its checkpoint into models/maml

Shipped runs are ``<models>/<algorithm>/model.*`` (the app loads them); training writes into ``runs/<run>``
(ignored by git: ``resume.*``, ``last.*``, ``curve.jsonl`` and the checkpoint), and ``--publish`` copies a run's
checkpoint into ``<models>/<algorithm>/``. Candidate runs stay in ``runs/``. For every shipped or candidate run
and every setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot, and 20-way 1-shot with every class
from one alphabet) it runs ``python -m engine.evaluate`` on ``--tasks`` evaluation-split tasks, on the image
pipeline the checkpoint was trained on, with the papers' plain inner loop (``--undo-rising-steps off``), and
stores the JSON in ``<models>/eval/<run>/``; a shipped run whose candidate changes the pipeline is also
evaluated through the app's (canonical) pipeline, the figure the candidate must beat (``*-served-canonical.json``)
(``<run>``: the algorithm's name for a shipped run), keyed by the checkpoint's SHA-256, so a rerun only
evaluates checkpoints that changed. What the table reads from a run folder (training time and hardware,
steps trained, the validation curve, the configuration) goes into ``<models>/eval/<run>/run.json`` whenever
the folder is here, and is read back from there when it is not, so RESULTS.md regenerates from committed JSON.
Each learning curve (validation accuracy against meta-steps and against training time) is drawn from it, into
``<models>/<algorithm>/curve.png`` for a shipped run and ``<models>/eval/<run>/curve.png`` for a candidate.
Which section a candidate belongs to follows from its configuration against the shipped run's (its split
scheme, or the settings it changes), never from its name; papers' figures and notes come from each learner's
``about`` (engine/learners/base.py's ``About``).

Publishing retires the checkpoint it replaces: its evaluations move to ``<models>/eval/<algorithm>-retired-<SHA8>/``
(RESULTS.md's "Checkpoints shipped before"), and where it trained on another pipeline it is first evaluated
through the app's, as the app served it, so what replacing it changed is measured on what users saw. Its
weights stay in git's history: ``--algorithms <algorithm>-retired-<SHA8>`` recovers them by SHA-256
(engine/history.py) and evaluates them again, the as-served figures included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine import evaluate
from engine.checkpoint import build_learner, read_metadata
from engine.compare import effective_settings
from engine.data.download import file_digest
from engine.data.omniglot import SCHEMES_TRAINING_ON_VALIDATION, VALIDATION_SOURCES
from engine.history import recover_checkpoint
from engine.learners import LEARNERS, AdaptSettings, PaperReference
from engine.paths import REPO_ROOT
from engine.results_targets import EvaluatedRun, TargetContext, read_levers, render_targets
from engine.config import LEGACY_TRAIN_SETTINGS, TrainConfig


class Setting(NamedTuple):
    """One evaluation setting: N-way K-shot, classes from any alphabets or all from one (Lake et al. 2015's
    within-alphabet benchmark). Equal to the plain ``(ways, shots, False)`` tuple."""

    ways: int
    shots: int
    within_alphabet: bool = False


WITHIN_ALPHABET = Setting(20, 1, True)
SETTINGS: tuple[Setting, ...] = (Setting(5, 1), Setting(5, 5), Setting(20, 1), Setting(20, 5), WITHIN_ALPHABET)
TRANSDUCTIVE_SETTINGS: tuple[Setting, ...] = tuple(s for s in SETTINGS if not s.within_alphabet)
"""Transductive rows are the papers' protocol, which has no within-alphabet task."""
EVAL_SEED = 0
# A run's summary in <models>/eval/<run>/: what RESULTS.md reads from its folder.
SUMMARY = "run.json"
# What a shipped algorithm's folder in models/ holds (tests/test_shipped_models.py checks git's index).
SHIPPED_FILES = ("model.safetensors", "model.json", "curve.png")
# Targets: within this many points of the published 5w1s and 20w1s figures (or meet them,
# for a paper whose ``must_match`` is set).
TOLERANCE = {Setting(5, 1): 1.0, Setting(20, 1): 2.0}
WORTH_SETTINGS = (*TOLERANCE, WITHIN_ALPHABET)
"""The settings at which a candidate is set against its shipped run."""
SERVED_PIPELINE = "canonical"
"""The image pipeline the app feeds every checkpoint (engine.data.preprocess's, for drawings and uploads)."""


def paper(algorithm: str) -> PaperReference | None:
    """The paper whose figures ``algorithm``'s rows are set beside (its learner's ``about.paper``)."""
    return LEARNERS[algorithm].about.paper if algorithm in LEARNERS else None


def figures(algorithm: str) -> Mapping[Setting, float]:
    """The published Omniglot figures for ``algorithm`` (empty when its paper has none to compare with)."""
    reference = paper(algorithm)
    return {} if reference is None else {Setting(*key): figure for key, figure in reference.figures.items()}


def transductive_row(algorithm: str) -> bool:
    """Whether ``algorithm`` is evaluated a second time with transductive batch norm (queries normalised with
    their own batch's statistics): its paper's Omniglot figures were measured that way."""
    reference = paper(algorithm)
    return reference is not None and reference.transductive


@dataclass(frozen=True)
class Run:
    """A run RESULTS.md reports: a shipped algorithm's checkpoint or a candidate."""

    name: str  # its folder in <models>/eval/ (the algorithm's name for a shipped run)
    algorithm: str
    metadata: dict[str, Any]  # its checkpoint's model.json
    summary: dict[str, Any]  # its <models>/eval/<name>/run.json (see run_summary)
    checkpoint: Path | None  # <folder>/model where its weights are here; None: only its summary is committed
    source: str | None = None  # where the weights came from, as commands show it, when not ``checkpoint``


@dataclass(frozen=True)
class CandidateSection:
    """Candidate runs that change one thing about a shipped configuration, its split or a setting: not
    shipped, shown in a section of their own beside the published figures and against the shipped runs.
    A run belongs here by its configuration (:func:`changes` against the shipped run's)."""

    name: str  # "the papers' split", as a verdict column says "targets on <name>"
    heading: str
    intro: tuple[str, ...]
    worth: str  # what "candidate minus shipped" measures, for the comparison's caption
    # Runs trained on this split scheme where the shipped run trains on another; None: runs on the shipped
    # run's split that change one of ``settings`` (configuration keys, as :func:`configuration` names them).
    split_scheme: str | None = None
    settings: tuple[str, ...] = ()
    retired: bool = False  # the checkpoints shipped before (a run belongs here by its summary, not its changes)

    def holds(self, changed: Mapping[str, tuple[Any, Any]]) -> bool:
        """Whether a run whose configuration differs from the shipped one by ``changed`` belongs here."""
        if self.retired:
            return False
        scheme = changed.get("train.split_scheme")
        if self.split_scheme is not None:
            return scheme is not None and scheme[1] == self.split_scheme
        return scheme is None and any(key in changed for key in self.settings)

    def describe(self, changed: Mapping[str, tuple[Any, Any]]) -> str:
        """What a run of this section changes, "inner_steps 1 → 2" ("" for a split section: its heading says)."""
        def shown(value: Any) -> str:
            return "none" if value is None else str(value)

        if self.retired:  # what replacing it changed: retired → shipped now
            return ", ".join(f"{key.split('.', 1)[1]} {shown(run)} → {shown(shipped)}" for key, (shipped, run) in changed.items())
        return ", ".join(f"{key.split('.', 1)[1]} {shown(shipped)} → {shown(run)}"
                         for key, (shipped, run) in changed.items() if key in self.settings)


PAPERS_SPLIT = CandidateSection(
    "the papers' split", "On the papers' split", (
        "What our split costs, measured: the same configuration trained and tested on a split like the",
        "papers' (`--split-scheme characters`: all 1623 characters shuffled with a fixed seed, 1028 to train",
        "and 172 to validate, which the papers then train on too, and 423 to test, Vinyals et al.'s sizes;",
        "the test characters' alphabets are seen in training). Cells as above, on 600 tasks from those 423",
        "test characters, and a transductive row where the main table has one; these candidates are not",
        "shipped (the app's checkpoints are the ones above)."),
    "What the split is worth", split_scheme="characters")
ALL_BACKGROUND = CandidateSection(
    "all background alphabets", "On all 30 background alphabets", (
        "What the 5 held-out validation alphabets would add as training data: the same configuration",
        "trained on all 964 background characters (`--split-scheme background`), as a final model is",
        "trained once validation has chosen its schedule (Snell et al. trained on their training and",
        "validation characters together). Validation characters are then seen in training and cannot pick",
        "a checkpoint, so the run keeps its last step. Cells as above, on the same unseen evaluation",
        "alphabets; these candidates are not shipped (the app's checkpoints are the ones above)."),
    "What the validation alphabets are worth", split_scheme="background")
OTHER_SETTINGS = CandidateSection(
    "the candidate", "Candidate settings", (
        "Runs that change one setting of a shipped configuration, on the split it trained on (the inner steps,",
        "the ways or shots of the training episodes, how many of them draw every class from one alphabet, the",
        "number of meta-steps, the meta learning-rate schedule, or the backbone's width), each a candidate to",
        "replace its",
        "shipped checkpoint if it evaluates better; each row says what its configuration changes (shipped →",
        "candidate, from the checkpoints' metadata; models/train.sh has the commands). Cells as above, on",
        "the same unseen evaluation alphabets; a run listed here is not shipped (the app's checkpoints are",
        "the ones above)."),
    "What the change is worth",
    settings=("config.inner_steps", "train.ways", "config.min_train_ways", "train.shots", "train.within_alphabet",
              "train.meta_steps", "config.meta_lr_schedule", "config.meta_lr_warmup", "backbone.channels"))
PIPELINE_AND_AUGMENTATION = CandidateSection(
    "the candidate", "One image pipeline and augmentation", (
        "Runs trained on the canonical image pipeline (every drawing through the app's own preprocessing,",
        "`--pipeline canonical`) and/or with handwriting augmentation (`--augment`), against the shipped run",
        "trained on the plain resize without augmentation. Each is evaluated on the pipeline it was trained",
        "on (the app serves every checkpoint through the canonical one), and under it the shipped run as the app",
        "serves it, through the canonical pipeline, at the settings compared: the figure a candidate must beat",
        "to be shipped. Cells as above, on the same unseen evaluation alphabets; a run listed here is not",
        "shipped (the app's checkpoints are the ones above)."),
    "What the pipeline and augmentation are worth", settings=("train.pipeline", "train.augment"))
SHIPPED_BEFORE = CandidateSection(
    "the checkpoint shipped before", "Checkpoints shipped before", (
        "Each checkpoint an algorithm shipped before its current one, kept as its evaluations (`--publish` moves",
        "them to models/eval/ALGORITHM-retired-SHA/ when it ships a new run; the weights are in git's history).",
        "Each row says what replacing it changed in the configuration (retired → shipped now); candidates trained",
        "against a retired configuration are compared with it in the sections above. Cells as above, on the same",
        "unseen evaluation alphabets."),
    "What replacing it changed", retired=True)
CANDIDATE_SECTIONS = (PAPERS_SPLIT, ALL_BACKGROUND, PIPELINE_AND_AUGMENTATION, OTHER_SETTINGS, SHIPPED_BEFORE)
RETIRED = "retired"
"""The key of a retired checkpoint's summary (models/eval/ALGORITHM-retired-SHA/run.json): when, and by what."""


def setting_name(ways: int, shots: int, within_alphabet: bool = False) -> str:
    return f"{ways}w{shots}s" + ("-within-alphabet" if within_alphabet else "")


def setting_heading(setting: Setting) -> str:
    return setting_name(setting.ways, setting.shots) + (" within one alphabet" if setting.within_alphabet else "")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def shipped_algorithms(models: Path) -> list[str]:
    """Registered algorithms with a checkpoint in ``models``, in registry order."""
    return [name for name in LEARNERS if (models / name / "model.safetensors").exists()]


def write_json_if_changed(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, written only when it differs (a table-only rerun leaves files alone)."""
    text = json.dumps(payload, indent=2) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def summary_path(models: Path, run: str) -> Path:
    return models / "eval" / run / SUMMARY


def run_summary(folder: Path) -> dict[str, Any]:
    """What RESULTS.md reads from a run folder (``engine.train --out``), for ``<models>/eval/<run>/run.json``:
    the checkpoint's SHA-256 and metadata, the training state's steps, time and pieces (``resume.json``, which
    runs past the checkpoint's step) and every validation of ``curve.jsonl`` as [step, seconds, accuracy]."""
    state = read_json(folder / "resume.json") or {}
    return {
        "run": folder.name,  # the folder's name under runs/, where a later `engine.results` refreshes it from
        "checkpoint_sha256": file_digest(folder / "model.safetensors", "sha256"),
        "metadata": read_json(folder / "model.json") or {},
        "training": {key: state[key] for key in ("step", "train_seconds", "train", "pieces") if key in state},
        "validation_curve": [list(point) for point in read_validation_curve(folder / "curve.jsonl")],
    }


def shipped_runs(models: Path, runs: Path) -> list[Run]:
    """Every shipped checkpoint as a Run, in registry order. Its summary comes from the run folder it was
    published from (``runs/<summary's run>``) while that folder still holds the same checkpoint, else from
    the committed summary of that checkpoint, else from ``model.json`` alone (no training state or curve);
    whichever it is gets written back, so the committed summary always describes the shipped checkpoint."""
    shipped = []
    for algorithm in shipped_algorithms(models):
        folder = models / algorithm
        sha = file_digest(folder / "model.safetensors", "sha256")
        stored = read_json(summary_path(models, algorithm))
        source = runs / str((stored or {}).get("run", algorithm))
        if (source / "model.safetensors").exists() and file_digest(source / "model.safetensors", "sha256") == sha:
            summary = run_summary(source)
        elif stored is not None and stored.get("checkpoint_sha256") == sha:
            summary = stored
        else:
            summary = run_summary(folder)
        write_json_if_changed(summary_path(models, algorithm), summary)
        shipped.append(Run(algorithm, algorithm, read_json(folder / "model.json") or {}, summary, folder / "model"))
    return shipped


def candidate_runs(models: Path, runs: Path) -> list[Run]:
    """Every candidate run: a folder of ``runs`` with a checkpoint (its summary refreshed from it) or a
    committed summary in ``<models>/eval/`` whose folder is not here, in registry order of their algorithms.
    A folder named after an algorithm is that algorithm's own training run (``--publish`` ships it), not a
    candidate, and neither is a run holding a shipped checkpoint (the one it was published from)."""
    names = {path.parent.name for path in runs.glob("*/model.safetensors")}
    names |= {path.parent.name for path in (models / "eval").glob(f"*/{SUMMARY}")}
    shipped = {file_digest(models / name / "model.safetensors", "sha256") for name in shipped_algorithms(models)}
    candidates = []
    for name in sorted(names - set(LEARNERS)):
        folder = runs / name
        if (folder / "model.safetensors").exists():
            summary, checkpoint = run_summary(folder), folder / "model"
        else:
            summary, checkpoint = read_json(summary_path(models, name)) or {}, None
        if summary.get("checkpoint_sha256") in shipped:
            continue  # the run a shipped checkpoint was published from: its figures are the shipped ones
        if checkpoint is not None:
            write_json_if_changed(summary_path(models, name), summary)
        metadata = summary.get("metadata") or {}
        if metadata.get("algorithm") in LEARNERS:
            candidates.append(Run(name, metadata["algorithm"], metadata, summary, checkpoint))
    order = list(LEARNERS)
    return sorted(candidates, key=lambda run: (order.index(run.algorithm), run.name))


def configuration(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings as flat keys ("config.inner_steps", "train.split_scheme", "backbone.channels"),
    with the defaults of what its metadata leaves out, so that runs recorded by older code compare with newer
    ones."""
    learner = build_learner(metadata)
    train = {**dataclasses.asdict(TrainConfig()), **LEGACY_TRAIN_SETTINGS, **(metadata.get("train") or {})}
    return {**{f"config.{key}": value for key, value in dataclasses.asdict(learner.config).items()},
            **{f"train.{key}": value for key, value in train.items()},
            **{f"backbone.{key}": value for key, value in dataclasses.asdict(learner.backbone).items()}}


def changes(metadata: Mapping[str, Any], shipped: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Where a candidate's configuration differs from the shipped run's: key -> (shipped, candidate). Without
    a shipped run, only the split scheme is compared (with the default one)."""
    ours = configuration(metadata)
    if shipped is None:
        reference = {"train.split_scheme": configuration({"algorithm": metadata["algorithm"]})["train.split_scheme"]}
    else:
        reference = configuration(shipped)
    return {key: (reference.get(key), value) for key, value in ours.items()
            if key in reference and reference[key] != value}


def is_retired(run: Run) -> bool:
    """A checkpoint its algorithm shipped before the current one (see :data:`SHIPPED_BEFORE`)."""
    return bool(run.summary.get(RETIRED))


def section_of(run: Run, shipped: Mapping[str, Run], retired: Sequence[Run] = ()
               ) -> tuple[CandidateSection, dict[str, tuple[Any, Any]], str] | None:
    """The section ``run`` belongs to, how it differs from the run it is compared with, and that run's name:
    its algorithm's shipped run, or else a checkpoint it shipped before (``retired``) when the candidate was
    trained against that one's configuration (the reference it changes the fewest settings of wins). None for
    a run that matches the shipped configuration or changes something no section is about."""
    reference = shipped.get(run.algorithm)
    if is_retired(run):
        return (SHIPPED_BEFORE, changes(run.metadata, None if reference is None else reference.metadata),
                run.algorithm if reference is None else reference.name)
    placements = []
    for base in [reference, *(old for old in retired if old.algorithm == run.algorithm)]:
        changed = changes(run.metadata, None if base is None else base.metadata)
        for section in CANDIDATE_SECTIONS:
            if (section.split_scheme is not None or base is not None) and section.holds(changed):
                placements.append((len(changed), section, changed, run.algorithm if base is None else base.name))
                break
    if not placements:
        return None
    _, section, changed, against = min(placements, key=lambda placement: placement[0])
    return section, changed, against


def evaluation_path(models: Path, run: str, setting: Setting, transductive: bool = False,
                    served: str | None = None) -> Path:
    """Where ``run``'s evaluation is stored (``run``: a candidate's folder name in runs/, the algorithm's
    name for a shipped run); ``served``: evaluated through that image pipeline instead of its own."""
    suffix = ("-transductive" if transductive else "") + (f"-served-{served}" if served else "")
    return models / "eval" / run / f"{setting_name(*setting)}{suffix}.json"


def trained_pipeline(metadata: Mapping[str, Any]) -> str:
    """The image pipeline a checkpoint was meta-trained on, which its evaluations use (engine.data.omniglot's
    ``PIPELINES``; runs recorded before the setting existed trained on the legacy one)."""
    return str((metadata.get("train") or {}).get("pipeline", LEGACY_TRAIN_SETTINGS["pipeline"]))


def test_settings(metadata: Mapping[str, Any]) -> tuple[int, str | None]:
    """(inner steps, inner optimizer) that ``engine.evaluate`` uses by default for a checkpoint with
    ``metadata``, read from its configuration (0 and None without an inner loop)."""
    learner = build_learner(metadata)
    steps, _, optimizer = effective_settings(learner, AdaptSettings())
    return (0 if steps is None else steps), optimizer


def describes(stored: dict[str, Any] | None, sha: str, settings: tuple[int, str | None],
              tasks: int | None = None, transductive: bool = False, pipeline: str | None = None) -> bool:
    """Whether a stored evaluation still describes the checkpoint: same weights (SHA-256), same
    test-time steps and optimizer (they are part of the checkpoint's configuration and can change
    without the weights changing), ``tasks`` and the image ``pipeline`` if given. Evaluations stored
    before the optimizer was recorded ran plain sgd, and those before the pipeline was, the legacy one."""
    if stored is None or stored.get("checkpoint_sha256") != sha or (tasks is not None and stored.get("tasks") != tasks):
        return False
    if pipeline is not None and stored.get("pipeline", LEGACY_TRAIN_SETTINGS["pipeline"]) != pipeline:
        return False
    if stored.get("undo_rising_steps", False):  # the table is the papers' plain inner loop
        return False
    if bool(stored.get("transductive", False)) != transductive:
        return False
    steps, optimizer = settings
    recorded = stored.get("optimizer", "sgd" if stored.get("inner_steps") else None)
    return stored.get("inner_steps") == steps and recorded == optimizer


def shown_path(path: Path) -> str:
    """``path`` as a command in RESULTS.md shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def evaluate_checkpoint(models: Path, run: Run, setting: Setting, tasks: int,
                        data_dir: str | None, device: str, transductive: bool = False,
                        served: str | None = None) -> dict[str, Any]:
    """The stored evaluation when it matches the checkpoint and task count, else a fresh one (which needs
    the checkpoint here), on the pipeline the checkpoint was trained on (or on ``served``, the one the app
    feeds it)."""
    sha = run.summary["checkpoint_sha256"]
    path = evaluation_path(models, run.name, setting, transductive, served)
    stored = read_json(path)
    pipeline = served or trained_pipeline(run.metadata)
    if describes(stored, sha, test_settings(run.metadata), tasks, transductive, pipeline):
        return stored  # type: ignore[return-value]
    if run.checkpoint is None:
        raise RuntimeError(f"{run.name} has no checkpoint here to evaluate (only its summary is committed)")
    checkpoint = run.checkpoint
    argv = ["--checkpoint", str(checkpoint), "--ways", str(setting.ways), "--shots", str(setting.shots),
            "--tasks", str(tasks), "--seed", str(EVAL_SEED), *(["--transductive"] if transductive else []),
            *(["--within-alphabet"] if setting.within_alphabet else []), "--pipeline", pipeline,
            "--undo-rising-steps", "off"]
    shown_checkpoint = run.source or shown_path(checkpoint)
    shown = [shown_checkpoint if a == str(checkpoint) else a for a in argv]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    path.parent.mkdir(parents=True, exist_ok=True)
    if evaluate.main([*argv, "--device", device, "--json", str(path)]) != 0:
        raise RuntimeError(f"engine.evaluate failed for {run.name} {setting_name(*setting)}")
    result = read_json(path) or {}
    result.update(checkpoint_sha256=sha, meta_step=run.metadata.get("meta_step"), checkpoint=shown_checkpoint,
                  command="python -m engine.evaluate " + " ".join(shown))
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def current_evaluations(models: Path, run: Run, transductive: bool = False,
                        served: str | None = None) -> dict[Setting, dict[str, Any]]:
    """Stored evaluations that still describe ``run``'s checkpoint (same SHA-256, test settings, pipeline)."""
    settings = test_settings(run.metadata)
    stored = {setting: read_json(evaluation_path(models, run.name, setting, transductive, served))
              for setting in (TRANSDUCTIVE_SETTINGS if transductive else SETTINGS)}
    return {setting: result for setting, result in stored.items()
            if describes(result, run.summary["checkpoint_sha256"], settings, transductive=transductive,
                         pipeline=served or trained_pipeline(run.metadata))}


# -- learning curves ---------------------------------------------------------------------------
def read_validation_curve(path: Path) -> list[tuple[int, float, float]]:
    """(meta-step, training seconds, validation accuracy) for every validation in a ``curve.jsonl``."""
    points: list[tuple[int, float, float]] = []
    if not path.exists():
        return points
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "val_accuracy" in record:
            points.append((int(record["step"]), float(record["seconds"]), float(record["val_accuracy"])))
    return points


def validation_curve(run: Run) -> list[tuple[int, float, float]]:
    """(meta-step, training hours, validation accuracy) for every validation of ``run``."""
    return [(int(step), float(seconds) / 3600.0, float(accuracy))
            for step, seconds, accuracy in run.summary.get("validation_curve", [])]


def curve_path(models: Path, run: Run, shipped: bool) -> Path:
    """Where ``run``'s learning curve is drawn: beside a shipped checkpoint, in eval/ for a candidate."""
    return models / run.name / "curve.png" if shipped else models / "eval" / run.name / "curve.png"


def draw_curve(run: Run, out: Path) -> bool:
    """Validation accuracy against meta-steps and against training time; False without a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = validation_curve(run)
    if not points:
        return False
    steps, hours, accuracy = zip(*points)
    percent = [100 * a for a in accuracy]
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    by_step.plot(steps, percent, color="tab:blue")
    by_step.set_xlabel("meta-steps")
    train = run.metadata.get("train") or {}
    by_step.set_ylabel(f"validation accuracy (%), {train.get('val_ways', 5)}-way {train.get('val_shots', 1)}-shot")
    by_time.plot(hours, percent, color="tab:orange")
    by_time.set_xlabel("training time (hours)")
    published = figures(run.algorithm).get(Setting(5, 1))
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
        if published is not None:
            axis.axhline(published, color="grey", linestyle="--", linewidth=1,
                         label="published 5w1s (evaluation split)")
    if published is not None:
        by_step.legend(loc="lower right", fontsize=8)
    scheme = (run.metadata.get("train") or {}).get("split_scheme", "alphabets")
    figure.suptitle(f"{run.name}: validation accuracy on {VALIDATION_SOURCES.get(scheme, scheme)}")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return True


# -- the table ---------------------------------------------------------------------------------
def training_status(run: Run) -> dict[str, Any]:
    """Meta-steps of the checkpoint and of the run so far (its training state, which runs past the
    checkpoint's step), the schedule, time and hardware."""
    model = run.metadata
    state = run.summary.get("training") or {}
    trained = int(state.get("step", model.get("meta_step", 0)))
    seconds = float(state.get("train_seconds", model.get("wall_clock_seconds", 0.0)))
    schedule = int((state.get("train") or model.get("train") or {}).get("meta_steps", trained))
    pieces = state.get("pieces", model.get("pieces", []))
    hardware = sorted({piece.get("hardware", "?") for piece in pieces})
    return {"model_step": model.get("meta_step"), "trained": trained, "schedule": schedule, "seconds": seconds,
            "hardware": hardware, "val_accuracy": model.get("val_accuracy"),
            "seconds_per_step": recent_seconds_per_step(pieces, seconds / trained if trained else math.nan)}


def recent_seconds_per_step(pieces: Sequence[dict[str, Any]], overall: float, min_steps: int = 50) -> float:
    """Seconds per meta-step of the latest training piece of at least ``min_steps`` steps: the speed
    of the current code (an earlier piece may have run slower code), else ``overall``."""
    for piece in reversed(pieces):
        steps = int(piece.get("end_step", piece.get("start_step", 0))) - int(piece.get("start_step", 0))
        if steps >= min_steps and float(piece.get("seconds", 0.0)) > 0:
            return float(piece["seconds"]) / steps
    return overall


def power_law_steps(curve: Sequence[tuple[int, float, float]], accuracy: float) -> float | None:
    """Meta-steps at which the validation accuracy would reach ``accuracy`` (a fraction) if its error
    kept falling as the power law error = a * step^-b fitted (least squares, log-log) to the second
    half of ``curve``'s validations; None when that half has fewer than 4 points or does not fall."""
    points = [(step, 1.0 - value) for step, _, value in curve if step > 0 and value < 1.0]
    points = [point for point in points if point[0] * 2 >= points[-1][0]] if points else []
    if len(points) < 4 or not 0.0 < 1.0 - accuracy:
        return None
    slope, intercept = np.polyfit(np.log([step for step, _ in points]), np.log([error for _, error in points]), 1)
    if slope >= 0:
        return None
    return float(math.exp((math.log(1.0 - accuracy) - intercept) / slope))


def allowed_gap(algorithm: str, setting: tuple[int, int]) -> float:
    """How many points below its paper ``algorithm`` may stay at ``setting`` and still meet its target."""
    reference = paper(algorithm)
    return 0.0 if reference is not None and reference.must_match else TOLERANCE[setting]


def target_time(algorithm: str, results: dict[Setting, dict[str, Any]] | None, status: dict[str, Any],
                curve: Sequence[tuple[int, float, float]]) -> str:
    """How far the 5-way 1-shot target is, extrapolated along the validation curve: the target
    shifted by the checkpoint's validation - evaluation gap, reached by :func:`power_law_steps`."""
    published = figures(algorithm).get(Setting(5, 1))
    if published is None or results is None or Setting(5, 1) not in results or status["val_accuracy"] is None:
        return "—"
    needed = published - allowed_gap(algorithm, Setting(5, 1))
    ours = 100 * results[Setting(5, 1)]["accuracy"]
    if ours >= needed:
        return "met"
    on_validation = needed + 100 * status["val_accuracy"] - ours
    steps = power_law_steps(curve, on_validation / 100) if on_validation < 100 else None
    if steps is None:
        return f"no estimate ({on_validation:.1f}% validation needed; the curve's second half does not fall)"
    if steps > 100 * status["schedule"]:
        return f"{on_validation:.1f}% validation: beyond 100x our schedule (the curve has flattened)"
    remaining = max(steps - status["trained"], 0.0)
    return (f"{on_validation:.1f}% validation at ≈ {steps:,.0f} steps, "
            f"≈ {format_hours(remaining * status['seconds_per_step'])} more")


def listing(names: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def format_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not evaluated"
    return f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}"


def target_verdict(algorithm: str, results: dict[Setting, dict[str, Any]]) -> str:
    published = figures(algorithm)
    if not published:
        return "no single published figure"
    verdicts = []
    for setting in TOLERANCE:
        if setting not in results or setting not in published:
            continue
        gap = published[setting] - 100 * results[setting]["accuracy"]
        allowed = allowed_gap(algorithm, setting)
        verdicts.append(f"{setting_heading(setting)} {'met' if gap <= allowed else f'missed by {gap - allowed:.1f} pt'}")
    return ", ".join(verdicts)


def test_steps_cell(algorithm: str, results: dict[Setting, dict[str, Any]]) -> str:
    """The inner steps (and optimizer, unless sgd) the evaluations ran with: "0" without an inner
    loop, "?" before any evaluation."""
    if not LEARNERS[algorithm].has_inner_loop:
        return "0"
    first = next(iter(results.values()), None)
    if first is None:
        return "?"
    steps = str(first["inner_steps"])
    if first.get("optimizer") not in (None, "sgd"):
        steps += f" ({first['optimizer']})"
    return steps


def our_rows(name: str, suffix: str, algorithm: str, status: dict[str, Any],
             results: dict[Setting, dict[str, Any]],
             transductive: dict[Setting, dict[str, Any]] | None = None, link: str = "") -> list[str]:
    """A run's row (first cell ``**name** suffix link``), and its transductive row when evaluated that way."""
    tail = f" | {test_steps_cell(algorithm, results)} | {status['model_step']} / {status['schedule']} |"
    rows = [f"| **{name}** {suffix}{link} | " + " | ".join(cell(results.get(s)) for s in SETTINGS) + tail]
    if transductive:
        rows.append(f"| {name} {suffix}, transductive batch norm | "
                    + " | ".join(cell(transductive.get(s)) if s in TRANSDUCTIVE_SETTINGS else "—" for s in SETTINGS)
                    + tail)
    return rows


def published_rows(algorithm: str) -> list[str]:
    """The paper's figures as a table row, if it has any."""
    published = figures(algorithm)
    if not published:
        return []
    label = paper(algorithm).label  # type: ignore[union-attr]  # figures imply a paper
    return [f"| {label} | " + " | ".join(f"{published[s]:.2f}" if s in published else "—" for s in SETTINGS)
            + " | | |"]


@dataclass(frozen=True)
class Candidate:
    """A candidate run in its section: how it differs from the shipped run, and its evaluations."""

    run: Run
    changed: dict[str, tuple[Any, Any]]
    results: dict[Setting, dict[str, Any]]
    transductive: dict[Setting, dict[str, Any]]
    against: str  # the run it is compared with: the shipped one (its algorithm's name) or a retired one


def split_cost_rows(section: CandidateSection, candidates: Sequence[Candidate],
                    ours: Mapping[str, dict[Setting, dict[str, Any]]], against: str = "") -> list[str]:
    """Per run of ``section`` whose algorithm ships too: what the change is worth at the targets' settings
    (the run minus the shipped one, in points), and the target verdicts of both; ``against`` says how the
    shipped one was evaluated when not as in the main table."""
    lines = []
    for candidate in candidates:
        algorithm, results = candidate.run.algorithm, candidate.results
        base = candidate.against
        shipped = ours.get(base)
        if shipped is None or not any(s in results and s in shipped for s in WORTH_SETTINGS):
            continue
        gains = [f"{100 * (results[s]['accuracy'] - shipped[s]['accuracy']):+.2f}"
                 if s in results and s in shipped else "—" for s in WORTH_SETTINGS]
        name = candidate.run.name + ("" if base == algorithm or section.retired else f" (against {base})")
        lines.append(f"| {name} | {' | '.join(gains)} | {target_verdict(algorithm, results)} | "
                     f"{target_verdict(algorithm, shipped)} |")
    if not lines:
        return []
    names = [setting_heading(s) for s in WORTH_SETTINGS]
    return ["", f"{section.worth}, in points ({section.name} minus ours{against}, support-set batch norm),",
            "and the targets judged on each:", "",
            "| run | " + " | ".join(f"{name}: {section.name} − ours" for name in names)
            + f" | targets on {section.name} | targets on ours |", "|" + "---|" * (len(names) + 3), *lines]


def set_against_served(section: CandidateSection, run: Run) -> bool:
    """Whether a candidate of ``section`` is also compared with the run it is set against as the app serves that
    one (through the canonical pipeline): every run of the pipeline section, and a run trained on the app's
    pipeline in any other (e.g. on all background alphabets), where the run against it trained on another."""
    return not section.retired and (section is PIPELINE_AND_AUGMENTATION
                                    or trained_pipeline(run.metadata) == SERVED_PIPELINE)


def candidate_section(models: Path, section: CandidateSection, candidates: Sequence[Candidate],
                      ours: dict[str, dict[Setting, dict[str, Any]]],
                      served: Mapping[str, tuple[str, dict[str, Any], dict[Setting, dict[str, Any]]]] | None = None
                      ) -> list[str]:
    """RESULTS.md's table of the runs of ``section`` (with whatever evaluations they have, and transductive
    ones where made), each beside its paper, and what the change is worth against the shipped runs'
    evaluations (``ours``). ``served``: by name, a run evaluated through another image pipeline (pipeline,
    training status, evaluations), shown under the candidate and compared with it too: the run a candidate is
    set against, or in the section of checkpoints shipped before, the retired checkpoint itself, as the app
    served it (set against the one shipped now)."""
    served = served or {}
    if not candidates:
        return []
    lines = ["", f"## {section.heading}", "", *section.intro, "",
             "| run | " + " | ".join(setting_heading(s) for s in SETTINGS)
             + " | test inner steps | meta-steps (checkpoint / schedule) |",
             "|" + "---|" * (len(SETTINGS) + 3)]
    for candidate in candidates:
        run = candidate.run
        curve = curve_path(models, run, shipped=False)
        link = f" ([curve]({curve.relative_to(models).as_posix()}))" if curve.exists() else ""
        change = section.describe(candidate.changed)
        against = candidate.against
        compared = "" if against == run.algorithm or section.retired else f"; against {against}"
        lines += our_rows(run.name, f"({run.algorithm}, ours{'; ' + change if change else ''}{compared})",
                          run.algorithm, training_status(run), candidate.results, candidate.transductive, link)
        if section.retired and run.name in served:
            pipeline, status, results = served[run.name]
            lines += our_rows(run.name, f"({run.algorithm}, shipped before, ours) through the {pipeline} pipeline, "
                              "as the app served it", run.algorithm, status, results)
        elif against in served and set_against_served(section, run):
            pipeline, status, results = served[against]
            what = "shipped" if against == run.algorithm else "shipped before"
            lines += our_rows(against, f"({what}, ours) through the {pipeline} pipeline, as the app serves it",
                              run.algorithm, status, results)
        lines += published_rows(run.algorithm)
    lines += split_cost_rows(section, candidates, ours)
    served_pipelines = sorted({pipeline for pipeline, _, _ in served.values()})
    if section.retired:  # the retired checkpoint as served, minus the one shipped now
        as_served = [dataclasses.replace(candidate, results=served[candidate.run.name][2])
                     for candidate in candidates if candidate.run.name in served]
        lines += split_cost_rows(section, as_served, ours,
                                 f"; the checkpoint shipped before through the {listing(served_pipelines)} pipeline, "
                                 "as the app served it")
    elif served_pipelines:
        lines += split_cost_rows(section, [candidate for candidate in candidates
                                           if set_against_served(section, candidate.run)],
                                 {name: results for name, (_, _, results) in served.items()},
                                 f" through the {listing(served_pipelines)} pipeline, as the app serves it")
    lines.append("")
    lines.append("Training: `bash models/train.sh RUN` (into runs/RUN); the configuration, validation accuracy, "
                 "time and learning curve of each run in models/eval/RUN/run.json.")
    return lines


def render_table(models: Path, shipped: Sequence[Run], evaluations: dict[str, dict[Setting, dict[str, Any]]],
                 tasks: int, transductive: dict[str, dict[Setting, dict[str, Any]]] | None = None,
                 candidates: Mapping[CandidateSection, Sequence[Candidate]] | None = None,
                 served: Mapping[str, dict[Setting, dict[str, Any]]] | None = None) -> str:
    """RESULTS.md: the evaluated checkpoints beside the papers, then the training state of every
    ``shipped`` run, then the candidate runs of each section. ``evaluations`` and ``transductive`` hold the
    shipped runs' evaluations by algorithm; ``served`` the shipped runs' evaluations through the app's pipeline
    (the canonical one), made where a candidate of the pipeline section needs them."""
    transductive_names = [f"`{name}`" for name in LEARNERS if transductive_row(name)]
    must_match_names = [f"`{name}`" for name in LEARNERS if (reference := paper(name)) is not None and reference.must_match]
    header = ("| algorithm | " + " | ".join(setting_heading(s) for s in SETTINGS)
              + " | test inner steps | meta-steps (checkpoint / schedule) |")
    lines = [
        "# Results",
        "",
        "Generated by `python -m engine.results` (rerun it to refresh; it evaluates only checkpoints that changed).",
        f"Query accuracy (%) ± 95% confidence interval over {tasks} tasks per setting from the Omniglot",
        "**evaluation** split (15 queries per class, seed 0, never seen in training or model selection), each",
        "cell one `python -m engine.evaluate` run whose exact command and JSON are in `models/eval/`.",
        "Batch norm is **not transductive** in our main rows: queries are normalised with the support set's",
        "statistics, so each query is predicted alone. Most published MAML-family figures normalise with the",
        f"query batch (transductive), which is easier: {listing(transductive_names)}, whose papers did so,",
        "get a second row with the same checkpoint evaluated that way (`--transductive`); targets are judged",
        "on the main rows. One checkpoint per algorithm serves all four settings",
        "(most were meta-trained on 5-way 1-shot episodes; see models/train.sh), where the papers train a",
        "separate model for each setting, so our 20-way and 5-shot cells are transfer across settings.",
        "The split differs too. The MAML and Reptile code shuffles all 1623 characters, whatever their",
        "alphabet, meta-trains on 1200 of them (4800 classes with rotations) and tests on the other 423,",
        "whose alphabets training has seen; ProtoNet also trains on 1200 and tests on 423 (Vinyals et al.'s",
        "split). We meta-train on the 788 characters of 25 background alphabets (5 more are held out for",
        "model selection) and test on the 659 characters of the 20 evaluation alphabets, which neither",
        "training nor model selection saw, as the dataset's authors ask: two thirds of the papers' training",
        "classes and unseen alphabets at test time, both of which make our cells harder than theirs.",
        "How much, the section on the papers' split measures run by run: the same configurations trained",
        "and tested on a split like the papers'.",
        "The within-one-alphabet column is Lake et al. (2015)'s harder benchmark: all 20 classes of a task",
        "from one evaluation alphabet (`--within-alphabet`), so that the classes look alike, as a person's",
        "characters do (humans: 95.5%, Bayesian Program Learning: 96.7%, on their 20 runs of 20 queries each).",
        "Each checkpoint is evaluated on the image pipeline it was meta-trained on (`--pipeline`): "
        + pipelines_sentence(shipped) + " The app serves every checkpoint through `canonical`, its own",
        "preprocessing, which training now uses too (docs/data.md); `raw` is the plain resize.",
        "",
        header,
        "|" + "---|" * (len(SETTINGS) + 3),
    ]
    by_name = {run.name: run for run in shipped}
    for algorithm, results in evaluations.items():
        lines += our_rows(algorithm, "(ours)", algorithm, training_status(by_name[algorithm]), results,
                          (transductive or {}).get(algorithm))
        lines += published_rows(algorithm)
    lines += ["", "## Targets and training budget", "",
              "Every shipped run; validation accuracy is on 200 fixed 5-way 1-shot tasks from the held-out",
              "background alphabets (model selection only). Runs not evaluated above are still training.", "",
              "Targets: within 1 point of the published 5-way 1-shot figure and 2 points at 20-way 1-shot;",
              f"{listing(must_match_names)} meet or beat theirs. Time per meta-step is that of the run's latest training",
              "piece (the current code; earlier pieces may have run slower code), and the estimates are that time",
              "multiplied out, on the run's own hardware. The 5-way 1-shot target is extrapolated along the",
              "validation curve: the published figure less its tolerance, shifted by the checkpoint's gap",
              "between validation and evaluation accuracy, reached when a power law (error = a * step^-b, fitted",
              "to the curve's second half) says so. It assumes the curve keeps its recent slope, while every",
              "schedule also decays its meta learning rate: a rough guide, not a promise.", "",
              "| algorithm | targets | validation accuracy | trained so far | time per meta-step | to finish our "
              "schedule | paper's schedule | 5w1s target, extrapolated | curve |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in shipped:
        algorithm = run.algorithm
        results = evaluations.get(algorithm)
        status = training_status(run)
        targets = "not evaluated yet" if results is None else target_verdict(algorithm, results)
        val = ("—" if status["val_accuracy"] is None
               else f"{100 * status['val_accuracy']:.1f}% (step {status['model_step']}{validation_note(run)})")
        per_step = status["seconds_per_step"]
        remaining = max(status["schedule"] - status["trained"], 0)
        finish = "done" if remaining == 0 else f"{remaining} steps ≈ {format_hours(remaining * per_step)}"
        if results is not None and remaining > 0:
            targets += " (checkpoint of an unfinished schedule: the CPU budget stopped it so far)"
        reference = paper(algorithm)
        schedule = ("—" if reference is None or reference.meta_steps is None
                    else f"{reference.meta_steps} steps ≈ {format_hours(reference.meta_steps * per_step)}")
        curve = curve_path(models, run, shipped=True)
        link = f"[curve]({curve.relative_to(models).as_posix()})" if curve.exists() else "—"
        # A curve over alphabets the run trained on shows fit: it says nothing of unseen ones.
        extrapolated = ("— (validated on alphabets it trained on)" if validated_on_training_alphabets(run)
                        else target_time(algorithm, results, status, validation_curve(run)))
        lines.append(f"| {algorithm} | {targets} | {val} | {status['trained']} steps, "
                     f"{format_hours(status['seconds'])} ({'; '.join(status['hardware'])}) | {per_step:.2f} s | "
                     f"{finish} | {schedule} | {extrapolated} | "
                     f"{link} |")
    retired = (candidates or {}).get(SHIPPED_BEFORE, [])
    references = {**by_name, **{candidate.run.name: candidate.run for candidate in retired}}
    compared = {**evaluations, **{candidate.run.name: candidate.results for candidate in retired}}
    for section, section_candidates in (candidates or {}).items():
        shown = {name: (SERVED_PIPELINE, training_status(references[name]), results)
                 for name, results in (served or {}).items() if results and name in references}
        # A checkpoint shipped before is set against the one shipped now (what replacing it changed).
        ours = evaluations if section.retired else compared
        lines += candidate_section(models, section, section_candidates, ours, shown)
    lines += render_targets(evaluated_runs(shipped, evaluations, transductive or {}, candidates or {}, served),
                            target_context(), read_levers(models / "eval" / "levers"), tasks)
    notes = [f"* **{run.algorithm}** {LEARNERS[run.algorithm].about.notes}" for run in shipped
             if LEARNERS[run.algorithm].about.notes]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "Training commands: `bash models/train.sh ALGORITHM` (one configuration per algorithm, trained "
              "into runs/ALGORITHM; it resumes an interrupted run), then `python -m engine.results --publish "
              "runs/ALGORITHM` to ship it. The JSON beside each checkpoint records the seed, the git commit, the "
              "dataset's checksum and the wall-clock time and hardware of every training piece.", ""]
    return "\n".join(lines)


def validation_note(run: Run) -> str:
    """How a run's validation accuracy was measured, where it differs from the table's caption (5-way 1-shot
    tasks of held-out alphabets): tasks of another kind, or alphabets the run also trained on."""
    config = configuration(run.metadata)
    notes = []
    if (config["train.val_ways"], config["train.val_shots"]) != (5, 1):
        notes.append(f"{config['train.val_tasks']} {config['train.val_ways']}-way {config['train.val_shots']}-shot tasks")
    if validated_on_training_alphabets(run):
        notes.append("alphabets it trained on too: fit, not selection")
    return "; " + ", ".join(notes) if notes else ""


def validated_on_training_alphabets(run: Run) -> bool:
    """Whether ``run``'s split scheme trains on its validation alphabets too (``--split-scheme background``)."""
    return configuration(run.metadata)["train.split_scheme"] in SCHEMES_TRAINING_ON_VALIDATION


def pipelines_sentence(shipped: Sequence[Run]) -> str:
    """Which shipped checkpoints trained on which image pipeline, in words."""
    by_pipeline: dict[str, list[str]] = {}
    for run in shipped:
        by_pipeline.setdefault(trained_pipeline(run.metadata), []).append(f"`{run.algorithm}`")
    if len(by_pipeline) == 1:
        return f"every shipped checkpoint trained on `{next(iter(by_pipeline))}`."
    return "; ".join(f"{listing(names)} on `{pipeline}`" for pipeline, names in sorted(by_pipeline.items())) + "."


def evaluated_runs(shipped: Sequence[Run], evaluations: Mapping[str, dict[Setting, dict[str, Any]]],
                   transductive: Mapping[str, dict[Setting, dict[str, Any]]],
                   candidates: Mapping[CandidateSection, Sequence[Candidate]],
                   served: Mapping[str, dict[Setting, dict[str, Any]]] | None = None) -> list[EvaluatedRun]:
    """Every shipped and candidate run with its evaluations, as the targets section reads them (a shipped
    run with its evaluations through the app's pipeline, ``served``, where made)."""
    served = served or {}
    runs = [EvaluatedRun(run.name, run.algorithm, False, evaluations.get(run.name, {}), transductive.get(run.name, {}),
                         hours=training_status(run)["seconds"] / 3600, shipped=True,
                         pipeline=trained_pipeline(run.metadata), served=served.get(run.name, {}),
                         served_pipeline=SERVED_PIPELINE if served.get(run.name) else None) for run in shipped]
    for section, section_candidates in candidates.items():
        for candidate in section_candidates:
            change = section.describe(candidate.changed) or section.heading.lower()
            runs.append(EvaluatedRun(candidate.run.name, candidate.run.algorithm, section is PAPERS_SPLIT,
                                     candidate.results, candidate.transductive, change,
                                     training_status(candidate.run)["seconds"] / 3600,
                                     pipeline=trained_pipeline(candidate.run.metadata)))
    return runs


def target_context() -> TargetContext:
    """Which learners adapt by gradient steps, and each paper's label, figures and protocol."""
    papers = {name: (reference.label, figures(name), reference.transductive)
              for name in LEARNERS if (reference := paper(name)) is not None and figures(name)}
    gradient = [name for name, learner in LEARNERS.items() if learner.has_inner_loop]
    return TargetContext(gradient, papers)


# -- publishing --------------------------------------------------------------------------------
def publish(folder: Path, models: Path, tasks: int = 600, data_dir: str | None = None, device: str = "auto") -> Path:
    """Ship the run in ``folder`` (an ``engine.train --out`` folder): copy its checkpoint into
    ``<models>/<algorithm>/`` (its metadata names the algorithm), record its summary for RESULTS.md and draw
    its curve there; returns that folder. Its earlier evaluations no longer match and are redone by the next
    ``python -m engine.results``. The checkpoint it replaces is retired (:func:`retire`), first evaluated
    as the app served it (:func:`evaluate_as_served`, on ``tasks`` tasks) where it trained on another pipeline."""
    metadata = read_metadata(folder / "model")
    algorithm = metadata["algorithm"]
    if algorithm not in LEARNERS:
        raise ValueError(f"{folder} holds a run of {algorithm!r}, which is not a registered algorithm")
    target = models / algorithm
    target.mkdir(parents=True, exist_ok=True)
    if (target / "model.safetensors").exists():
        replaced_by = file_digest(folder / "model.safetensors", "sha256")
        sha = file_digest(target / "model.safetensors", "sha256")
        if sha != replaced_by:
            outgoing = Run(algorithm, algorithm, read_json(target / "model.json") or {}, {"checkpoint_sha256": sha},
                           target / "model")
            try:
                evaluate_as_served(models, outgoing, tasks, data_dir, device)
            except (OSError, RuntimeError, ValueError) as error:  # publishing goes on; git keeps the weights
                print(f"warning: {algorithm}'s replaced checkpoint was not evaluated as served ({error}); "
                      f"`python -m engine.results --algorithms {algorithm}-retired-{sha[:8]}` does it from git's "
                      "history", file=sys.stderr)
        retire(models, algorithm, replaced_by)
    for name in ("model.safetensors", "model.json"):
        shutil.copyfile(folder / name, target / name)
    summary = run_summary(folder)
    write_json_if_changed(summary_path(models, algorithm), summary)
    run = Run(algorithm, algorithm, metadata, summary, target / "model")
    curve = curve_path(models, run, shipped=True)
    if not draw_curve(run, curve):
        curve.unlink(missing_ok=True)  # the replaced checkpoint's curve would describe another run
    return target


def evaluate_as_served(models: Path, run: Run, tasks: int, data_dir: str | None, device: str
                       ) -> dict[Setting, dict[str, Any]]:
    """``run`` evaluated at the compared settings (:data:`WORTH_SETTINGS`) through the app's pipeline, as the
    app serves it (``*-served-canonical.json``): what a checkpoint trained on another pipeline must beat to
    replace it. Nothing for a run trained on the app's pipeline, whose own evaluations are those."""
    if trained_pipeline(run.metadata) == SERVED_PIPELINE:
        return {}
    return {setting: evaluate_checkpoint(models, run, setting, tasks, data_dir, device, served=SERVED_PIPELINE)
            for setting in WORTH_SETTINGS}


def with_recovered_checkpoint(run: Run, models: Path, folder: Path) -> Run | None:
    """A retired ``run`` with its weights recovered from git's history into ``folder`` (and its summary's metadata
    beside them), or None when this clone's history does not hold them."""
    path = f"{run.algorithm}/model.safetensors"
    commit = recover_checkpoint(models, path, run.summary["checkpoint_sha256"], folder / "model.safetensors")
    if commit is None:
        return None
    (folder / "model.json").write_text(json.dumps(run.metadata, indent=2) + "\n", encoding="utf-8")
    return dataclasses.replace(run, checkpoint=folder / "model",
                               source=f"{commit[:12]}:{shown_path(models / run.algorithm / 'model')}")


def retire(models: Path, algorithm: str, replaced_by: str) -> Path | None:
    """Keep the shipped checkpoint's evaluations as a retired run before ``replaced_by`` (a SHA-256) ships:
    ``<models>/eval/<algorithm>/`` moves to ``<models>/eval/<algorithm>-retired-<first 8 of its SHA>/`` with its
    summary marked (:data:`RETIRED`) and its curve, so RESULTS.md keeps what it scored and the candidates
    trained against it. Nothing to do when the same checkpoint is published again; returns the new folder."""
    sha = file_digest(models / algorithm / "model.safetensors", "sha256")
    if sha == replaced_by:
        return None
    summary = read_json(summary_path(models, algorithm))
    if summary is None or summary.get("checkpoint_sha256") != sha:
        summary = run_summary(models / algorithm)  # no committed summary of it: what its folder says
    source, target = models / "eval" / algorithm, models / "eval" / f"{algorithm}-retired-{sha[:8]}"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.json")) if source.is_dir() else []:
        if path.name != SUMMARY:
            shutil.move(str(path), str(target / path.name))
    if (models / algorithm / "curve.png").exists():
        shutil.move(str(models / algorithm / "curve.png"), str(target / "curve.png"))
    summary[RETIRED] = {"replaced_by_sha256": replaced_by,
                        "on": datetime.datetime.now(datetime.timezone.utc).date().isoformat()}
    write_json_if_changed(target / SUMMARY, summary)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--runs", type=Path, default=REPO_ROOT / "runs",
                        help="training folders (engine.train --out): candidates, and the runs shipped ones came from")
    parser.add_argument("--algorithms", nargs="*", default=None,
                        help="evaluate these runs (default: every shipped checkpoint and every candidate in --runs); "
                             "the others keep their stored, still valid evaluations. A retired checkpoint named here "
                             "(ALGORITHM-retired-SHA8) is recovered from git's history and evaluated as the app "
                             "served it")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--table-only", action="store_true", help="use stored, still valid evaluations only; run none")
    parser.add_argument("--publish", type=Path, metavar="RUN", default=None,
                        help="copy the checkpoint of the run folder RUN into MODELS/<its algorithm>/ and stop")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    models: Path = args.models
    if args.publish is not None:
        try:
            target = publish(args.publish, models, args.tasks, args.data_dir, args.device)
        except (OSError, ValueError) as error:
            print(f"error: cannot publish {args.publish}: {error}", file=sys.stderr)
            return 2
        print(f"published {args.publish} as {target}; `python -m engine.results` evaluates it")
        return 0
    with contextlib.ExitStack() as stack:
        write_results(args, stack)
    print(f"wrote {models / 'RESULTS.md'}")
    return 0


def write_results(args: argparse.Namespace, stack: contextlib.ExitStack) -> None:
    """Evaluate what ``args`` asks for and write RESULTS.md (``stack`` holds recovered checkpoints' folders)."""
    models: Path = args.models
    shipped = shipped_runs(models, args.runs)
    candidates = candidate_runs(models, args.runs)
    for index, run in enumerate(candidates):
        if is_retired(run) and run.checkpoint is None and run.name in (args.algorithms or ()) and not args.table_only:
            recovered = with_recovered_checkpoint(run, models, Path(stack.enter_context(tempfile.TemporaryDirectory())))
            if recovered is None:
                print(f"{run.name}: its weights are not in this clone's git history", file=sys.stderr)
            else:
                candidates[index] = recovered
    here = [run.name for run in [*shipped, *candidates] if run.checkpoint is not None]
    requested = [] if args.table_only else (args.algorithms or here)
    for name in sorted(set(requested) - set(here)):
        print(f"{name}: no checkpoint here to evaluate; its stored evaluations stand", file=sys.stderr)

    def results_of(run: Run, transductive: bool = False) -> dict[Setting, dict[str, Any]]:
        if run.name in requested and run.checkpoint is not None:
            return {setting: evaluate_checkpoint(models, run, setting, args.tasks, args.data_dir, args.device,
                                                 transductive)
                    for setting in (TRANSDUCTIVE_SETTINGS if transductive else SETTINGS)}
        return current_evaluations(models, run, transductive)

    evaluations: dict[str, dict[Setting, dict[str, Any]]] = {}
    transductive: dict[str, dict[Setting, dict[str, Any]]] = {}
    for run in shipped:
        draw_curve(run, curve_path(models, run, shipped=True))
        for variant, table in ((False, evaluations), (True, transductive)):
            if variant and not transductive_row(run.algorithm):
                continue
            results = results_of(run, variant)
            if results:
                table[run.name] = results
    by_algorithm = {run.algorithm: run for run in shipped}
    retired = [run for run in candidates if is_retired(run)]
    by_name = {**{run.name: run for run in shipped}, **{run.name: run for run in retired}}
    sections: dict[CandidateSection, list[Candidate]] = {section: [] for section in CANDIDATE_SECTIONS}
    for run in candidates:
        placed = section_of(run, by_algorithm, retired)
        if placed is None:
            continue
        section, changed, against = placed
        draw_curve(run, curve_path(models, run, shipped=False))
        sections[section].append(Candidate(run, changed, results_of(run),
                                           results_of(run, True) if transductive_row(run.algorithm) else {}, against))
    served: dict[str, dict[Setting, dict[str, Any]]] = {}
    for section, listed in sections.items():  # what each candidate must beat: its base as the app serves it
        for candidate in listed:
            base = by_name.get(candidate.against)
            if (not set_against_served(section, candidate.run) or base is None or base.name in served
                    or trained_pipeline(base.metadata) == SERVED_PIPELINE):
                continue
            if candidate.run.name in requested and base.checkpoint is not None:
                served[base.name] = evaluate_as_served(models, base, args.tasks, args.data_dir, args.device)
            else:
                served[base.name] = current_evaluations(models, base, served=SERVED_PIPELINE)
    for run in retired:  # each checkpoint shipped before, as the app served it
        if run.name in requested and run.checkpoint is not None:
            served[run.name] = evaluate_as_served(models, run, args.tasks, args.data_dir, args.device)
        elif run.name not in served and trained_pipeline(run.metadata) != SERVED_PIPELINE:
            served[run.name] = current_evaluations(models, run, served=SERVED_PIPELINE)
    models.mkdir(parents=True, exist_ok=True)
    (models / "RESULTS.md").write_text(render_table(models, shipped, evaluations, args.tasks, transductive,
                                                    sections, served), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
