"""The results table of the shipped checkpoints, beside the papers' figures.

    python -m engine.results                      # evaluate what changed, redraw curves, write models/RESULTS.md
    python -m engine.results --table-only         # rewrite RESULTS.md from the stored evaluations

For every algorithm with a checkpoint in ``--models`` and every setting (5-way 1-shot, 5-way 5-shot,
20-way 1-shot, 20-way 5-shot) it runs ``python -m engine.evaluate`` on ``--tasks`` evaluation-split
tasks and stores the JSON in ``<models>/eval/<algorithm>/``, keyed by the checkpoint's SHA-256, so a
rerun only evaluates checkpoints that changed. It draws each run's learning curve (validation
accuracy against meta-steps and against training time) into ``<models>/<algorithm>/curve.png`` and
writes ``<models>/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine import evaluate
from engine.checkpoint import build_learner, read_metadata
from engine.compare import effective_settings
from engine.data.download import file_digest
from engine.data.omniglot import VALIDATION_SOURCES
from engine.learners import LEARNERS, AdaptSettings
from engine.paths import REPO_ROOT

SETTINGS: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (20, 1), (20, 5))
EVAL_SEED = 0


@dataclass(frozen=True)
class Published:
    """A paper's Omniglot figures (percent), keyed by (ways, shots)."""

    source: str
    accuracy: dict[tuple[int, int], float]
    # Meta-training iterations of the paper's Omniglot run, where the paper states them.
    meta_steps: int | None = None


def _figures(a: float, b: float, c: float, d: float) -> dict[tuple[int, int], float]:
    return dict(zip(SETTINGS, (a, b, c, d)))


PUBLISHED: dict[str, Published] = {
    "maml": Published("MAML (Finn et al. 2017)", _figures(98.7, 99.9, 95.8, 98.9), 60_000),
    "fomaml": Published("first-order MAML (Finn et al. 2017)", _figures(98.3, 99.2, 89.4, 97.9), 60_000),
    "reptile": Published("Reptile, transductive (Nichol et al. 2018)", _figures(97.68, 99.48, 89.43, 97.12), 100_000),
    "imaml": Published("iMAML, Hessian-free (Rajeswaran et al. 2019)", _figures(99.50, 99.74, 96.18, 99.14)),
    "metasgd": Published("Meta-SGD (Li et al. 2017)", _figures(99.53, 99.93, 95.93, 98.97)),
    "mc2": Published("Meta-Curvature MC2 (Park & Oliva 2019)", _figures(99.77, 99.79, 97.86, 99.24)),
    "protonet": Published("Prototypical Networks (Snell et al. 2017)", _figures(98.8, 99.7, 96.0, 98.9)),
}
# Why the 1-step runs learn less than their papers (engine/learners/maml.py's zero_head_step).
ONE_STEP_NOTE = ("With one inner step it also learns less than its paper: from our zero head (so that one "
                 "checkpoint serves any number of classes) the first step moves only the head, so the backbone's "
                 "{what} get no meta-gradient and stay exactly at their start in this checkpoint; only the head's "
                 "are meta-learned (`tests/test_metacurvature.py` checks why, `tests/test_shipped_models.py` the "
                 "checkpoint). The papers meta-learn a head for a "
                 "fixed number of classes, whose first step moves every layer. Learning them does not help "
                 "here, though: the 2-step candidate (`bash models/train.sh {name}-2steps`, the same schedule "
                 "with 2 inner steps, whose second step uses them) {verdict} (its row in the "
                 "section on candidate settings), so this checkpoint stays.")
# What the table alone cannot say: why a finished run stands where it does, and what comes next.
NOTES: dict[str, str] = {
    "protonet": "trains and ships on the paper's max-pooling Conv-4 (`--downsample maxpool` in models/train.sh), "
                "which convolves at 4x the resolution of the stride-2 Conv-4 the other algorithms use: ProtoNet "
                "adapts with one forward pass, so the app pays that only once per task (its row in the README's "
                "Performance tables). The stride-2 run it replaced, on the same 20k-episode schedule (2.3 h on "
                "one thread), scored 97.44 / 99.43 / 92.58 / 98.05 (`git show 5bfeb0e:models/RESULTS.md`). It is "
                "now within 1 point at 5-way 1-shot and 2 at 20-way 1-shot, but does not yet meet the paper's "
                "figures, as its target asks. Still unlike the paper: queries are normalised with the support "
                "set's statistics only, and one 1-shot-trained model serves the 5-shot settings, where the paper "
                "trains one per shot count. Neither is what holds it back: the same configuration trained and "
                "tested on the papers' character split meets or beats all four published figures (the section "
                "on the papers' split), so the shortfall here is our harder split: its unseen alphabets, not "
                "the amount of training data, since training on the 5 validation alphabets too (176 more "
                "characters) hardly helps (the section on all 30 background alphabets).",
    "metasgd": "adapts with as many steps as it was meta-trained for (1): its learned per-weight rates "
               "are fitted to exactly that, and more steps overshoot. 5-way 5-shot validation tasks: 98.51% "
               "after 1 step against 93.44% after 10 (`python -m engine.evaluate --checkpoint "
               "models/metasgd/model --ways 5 --shots 5 --tasks 200 --split validation --inner-steps 10`, "
               "then without `--inner-steps`; checkpoint of step 9750). "
               + ONE_STEP_NOTE.format(what="learned rates", name="metasgd",
                                      verdict="scores lower in three of the four settings, 0.5 points at 5-way "
                                              "1-shot and 1.6 at 20-way 1-shot"),
    "mc2": "adapts with as many steps as it was meta-trained for (1), like mc1: the learned curvature "
           "multiplies every gradient, and repeated steps overshoot. 5-way 5-shot validation tasks: 98.63% "
           "after 1 step against 81.14% after 10 (`python -m engine.evaluate --checkpoint models/mc2/model "
           "--ways 5 --shots 5 --tasks 200 --split validation --inner-steps 10`, then without `--inner-steps`; "
           "checkpoint of step 8750). "
           + ONE_STEP_NOTE.format(what="curvature matrices", name="mc2",
                                  verdict="validates higher (97.1% against 96.6%) and gains 0.4 points at 5-way "
                                          "1-shot, within the intervals, but loses 1.5 at 20-way 1-shot and some at "
                                          "both 5-shot settings")
           + " In the shipped checkpoint, then, mc2's output-channel matrices, all it adds to mc1, are never "
           "learned: on the papers' split "
           "mc1 and mc2 trained to the same weights and scores.",
    "reptile": "takes each inner step on a class-balanced minibatch of 10 of the task's 50 images "
               "(`--inner-shots 2`), as the paper does. The earlier run stepped on all 50 at once: 85.0% "
               "validation after 2250 meta-steps at 0.69 s each (`git show 7e34fae:models/reptile/curve.jsonl`), "
               "against 89.6% after 2250 at 0.15 s for this one. Still unlike the paper: 10k meta-steps "
               "instead of 100k, and test-time adaptation by 10 full-batch SGD steps from a zero head, where "
               "the paper adapts with Adam for 50 steps from a meta-learned head. A candidate run on the paper's "
               "100k schedule (`bash models/train.sh reptile-100k`, in models/reptile-100k, not shipped) has not "
               "done better so far: its best validation is 91.5% at step 16000, and from step 47000 to 80000 it "
               "stayed at 86-89% while the meta step size decayed from 0.53 to 0.20 (its curve.jsonl). The "
               "paper's inner optimizer, Adam without momentum (`--inner-optimizer adam-no-momentum`, 50 steps "
               "at test time), learned far slower from our zero head, whose weights Adam moves by about its "
               "learning rate a step: validation after 1000 meta-steps 56.0% at the paper's 1e-3 and 78.5% at "
               "1e-2, against 88.3% for SGD (`bash models/train.sh reptile-adam` and `reptile-adam-0.01`, "
               "stopped there; their curve.jsonl).",
    "imaml": "did not learn in its first full-size runs (not kept). Two changes made it "
             "learn: its conv weights start 4x larger than nn.Conv2d's default, because under batch norm "
             "the support loss's curvature grows as 1/scale^2 and at the default scale the inner loop "
             "oscillates instead of converging, which the implicit gradient assumes "
             "(`tests/test_imaml.py` checks the implicit gradient against the unrolled one); and its inner "
             "loop backtracks (`armijo`), because a fixed step size starts diverging as meta-training "
             "sharpens the network. It therefore also adapts with `armijo` by default: plain sgd at the "
             "same step size diverges on this checkpoint (5-way 1-shot validation tasks: 40.94% with "
             "`python -m engine.evaluate --checkpoint models/imaml/model --tasks 200 --split validation "
             "--optimizer sgd`, 93.61% without `--optimizer`; checkpoint of step 5000). Its 6000-step "
             "schedule is ours; the paper does not state its number of meta-steps.",
}
# The targets: within this many points of the published 5w1s and 20w1s figures.
TOLERANCE = {(5, 1): 1.0, (20, 1): 2.0}
# Evaluated a second time with transductive batch norm (queries normalised with their own batch's
# statistics): their papers' Omniglot figures were measured that way.
TRANSDUCTIVE_ROWS = {"maml", "fomaml", "reptile"}
# These must meet or beat their papers.
MUST_MATCH = {"maml", "protonet"}


@dataclass(frozen=True)
class CandidateSection:
    """Candidate runs (``bash models/train.sh ALGORITHM<suffix>``) that change one thing about a shipped
    configuration, its split or a setting: not shipped, shown in a section of their own beside the
    published figures and against the shipped runs."""

    suffixes: tuple[str, ...]  # run folder = algorithm + one of these
    name: str  # "the papers' split", as a verdict column says "targets on <name>"
    heading: str
    intro: tuple[str, ...]
    worth: str  # what "candidate minus shipped" measures, for the comparison's caption

    def algorithm_of(self, run: str) -> str:
        """The algorithm whose configuration the run folder ``run`` (``<algorithm><suffix>``) changes."""
        return next(run.removesuffix(suffix) for suffix in self.suffixes if run.endswith(suffix))


PAPERS_SPLIT = CandidateSection(
    ("-characters",), "the papers' split", "On the papers' split", (
        "What our split costs, measured: the same configuration trained and tested on a split like the",
        "papers' (`--split-scheme characters`: all 1623 characters shuffled with a fixed seed, 1028 to train",
        "and 172 to validate, which the papers then train on too, and 423 to test, Vinyals et al.'s sizes;",
        "the test characters' alphabets are seen in training). Cells as above, on 600 tasks from those 423",
        "test characters, and a transductive row where the main table has one; these candidates are not",
        "shipped (the app's checkpoints are the ones above)."),
    "What the split is worth")
ALL_BACKGROUND = CandidateSection(
    ("-background",), "all background alphabets", "On all 30 background alphabets", (
        "What the 5 held-out validation alphabets would add as training data: the same configuration",
        "trained on all 964 background characters (`--split-scheme background`), as a final model is",
        "trained once validation has chosen its schedule (Snell et al. trained on their training and",
        "validation characters together). Validation characters are then seen in training and cannot pick",
        "a checkpoint, so the run keeps its last step. Cells as above, on the same unseen evaluation",
        "alphabets; these candidates are not shipped (the app's checkpoints are the ones above)."),
    "What the validation alphabets are worth")
OTHER_SETTINGS = CandidateSection(
    ("-2steps", "-ways5to20", "-100k"), "the candidate", "Candidate settings", (
        "Runs that change one setting of a shipped configuration on our split, each a candidate to replace",
        "its shipped checkpoint if it evaluates better (models/train.sh says what each changes): `-2steps`",
        "meta-trains with 2 inner steps instead of 1, `-ways5to20` on episodes of 5 to 20 ways instead of 5,",
        "`-100k` on the paper's 100k meta-steps. Cells as above, on the same unseen evaluation alphabets;",
        "a run listed here is not shipped (the app's checkpoints are the ones above)."),
    "What the change is worth")
CANDIDATE_SECTIONS = (PAPERS_SPLIT, ALL_BACKGROUND, OTHER_SETTINGS)


def setting_name(ways: int, shots: int) -> str:
    return f"{ways}w{shots}s"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def candidate_runs(models: Path, section: CandidateSection) -> dict[str, str]:
    """Run folder -> algorithm of every run of ``section`` with a checkpoint (``<algorithm><suffix>``)."""
    runs = {}
    for algorithm in LEARNERS:  # registry order, as the shipped rows
        for suffix in section.suffixes:
            if (models / (algorithm + suffix) / "model.safetensors").exists():
                runs[algorithm + suffix] = algorithm
    return runs


def shipped_algorithms(models: Path) -> list[str]:
    """Registered algorithms with a checkpoint in ``models``, in registry order."""
    return [name for name in LEARNERS if (models / name / "model.safetensors").exists()]


def evaluation_path(models: Path, run: str, ways: int, shots: int, transductive: bool = False) -> Path:
    """Where ``run``'s evaluation is stored (``run``: its folder in models/, the algorithm's name for
    a shipped run)."""
    suffix = "-transductive" if transductive else ""
    return models / "eval" / run / f"{setting_name(ways, shots)}{suffix}.json"


def test_settings(checkpoint: Path) -> tuple[int, str | None]:
    """(inner steps, inner optimizer) that ``engine.evaluate`` uses for ``checkpoint`` by default,
    read from its configuration (0 and None without an inner loop)."""
    learner = build_learner(read_metadata(checkpoint))
    steps, _, optimizer = effective_settings(learner, AdaptSettings())
    return (0 if steps is None else steps), optimizer


def describes(stored: dict[str, Any] | None, sha: str, settings: tuple[int, str | None],
              tasks: int | None = None, transductive: bool = False) -> bool:
    """Whether a stored evaluation still describes the checkpoint: same weights (SHA-256), same
    test-time steps and optimizer (they are part of the checkpoint's configuration and can change
    without the weights changing), and ``tasks`` if given. Evaluations stored before the optimizer
    was recorded ran plain sgd."""
    if stored is None or stored.get("checkpoint_sha256") != sha or (tasks is not None and stored.get("tasks") != tasks):
        return False
    if bool(stored.get("transductive", False)) != transductive:
        return False
    steps, optimizer = settings
    recorded = stored.get("optimizer", "sgd" if stored.get("inner_steps") else None)
    return stored.get("inner_steps") == steps and recorded == optimizer


def evaluate_checkpoint(models: Path, run: str, ways: int, shots: int, tasks: int,
                        data_dir: str | None, device: str, transductive: bool = False) -> dict[str, Any]:
    """The stored evaluation when it matches the checkpoint and task count, else a fresh one."""
    checkpoint = models / run / "model"
    sha = file_digest(checkpoint.with_suffix(".safetensors"), "sha256")
    path = evaluation_path(models, run, ways, shots, transductive)
    stored = read_json(path)
    if describes(stored, sha, test_settings(checkpoint), tasks, transductive):
        return stored  # type: ignore[return-value]
    argv = ["--checkpoint", str(checkpoint), "--ways", str(ways), "--shots", str(shots), "--tasks", str(tasks),
            "--seed", str(EVAL_SEED), *(["--transductive"] if transductive else [])]
    shown = [f"models/{run}/model" if a == str(checkpoint) else a for a in argv]
    if data_dir is not None:
        argv += ["--data-dir", data_dir]
    if evaluate.main([*argv, "--device", device, "--json", str(path)]) != 0:
        raise RuntimeError(f"engine.evaluate failed for {run} {setting_name(ways, shots)}")
    result = read_json(path) or {}
    metadata = read_json(checkpoint.with_suffix(".json")) or {}
    result.update(checkpoint_sha256=sha, meta_step=metadata.get("meta_step"), checkpoint=f"models/{run}/model",
                  command="python -m engine.evaluate " + " ".join(shown))
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def current_evaluations(models: Path, run: str,
                        transductive: bool = False) -> dict[tuple[int, int], dict[str, Any]]:
    """Stored evaluations that still describe ``run``'s checkpoint (same SHA-256)."""
    sha = file_digest(models / run / "model.safetensors", "sha256")
    settings = test_settings(models / run / "model")
    stored = {(ways, shots): read_json(evaluation_path(models, run, ways, shots, transductive))
              for ways, shots in SETTINGS}
    return {setting: result for setting, result in stored.items()
            if describes(result, sha, settings, transductive=transductive)}


# -- learning curves ---------------------------------------------------------------------------
def validation_curve(run: Path) -> list[tuple[int, float, float]]:
    """(meta-step, training hours, validation accuracy) for every validation in ``curve.jsonl``."""
    points = []
    path = run / "curve.jsonl"
    if not path.exists():
        return points
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "val_accuracy" in record:
            points.append((int(record["step"]), float(record["seconds"]) / 3600.0, float(record["val_accuracy"])))
    return points


def draw_curve(run: Path, algorithm: str, out: Path) -> bool:
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
    by_step.set_ylabel("validation accuracy (%), 5-way 1-shot")
    by_time.plot(hours, percent, color="tab:orange")
    by_time.set_xlabel("training time (hours)")
    published = PUBLISHED.get(algorithm)
    for axis in (by_step, by_time):
        axis.grid(alpha=0.3)
        if published is not None:
            axis.axhline(published.accuracy[(5, 1)], color="grey", linestyle="--", linewidth=1,
                         label="published 5w1s (evaluation split)")
    if published is not None:
        by_step.legend(loc="lower right", fontsize=8)
    scheme = ((read_json(run / "model.json") or {}).get("train") or {}).get("split_scheme", "alphabets")
    figure.suptitle(f"{run.name}: validation accuracy on {VALIDATION_SOURCES.get(scheme, scheme)}")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return True


# -- the table ---------------------------------------------------------------------------------
def training_status(run: Path) -> dict[str, Any]:
    """Meta-steps of the shipped checkpoint and of the run so far, the schedule, time and hardware."""
    model = read_json(run / "model.json") or {}
    state = read_json(run / "resume.json") or {}
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


def target_time(algorithm: str, results: dict[tuple[int, int], dict[str, Any]] | None, status: dict[str, Any],
                curve: Sequence[tuple[int, float, float]]) -> str:
    """How far the 5-way 1-shot target is, extrapolated along the validation curve: the target
    shifted by the checkpoint's validation - evaluation gap, reached by :func:`power_law_steps`."""
    published = PUBLISHED.get(algorithm)
    if published is None or results is None or (5, 1) not in results or status["val_accuracy"] is None:
        return "—"
    needed = published.accuracy[(5, 1)] - (0.0 if algorithm in MUST_MATCH else TOLERANCE[(5, 1)])
    ours = 100 * results[(5, 1)]["accuracy"]
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


def format_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "not evaluated"
    return f"{100 * result['accuracy']:.2f} ± {100 * result['ci95']:.2f}"


def target_verdict(algorithm: str, results: dict[tuple[int, int], dict[str, Any]]) -> str:
    published = PUBLISHED.get(algorithm)
    if published is None:
        return "no single published figure"
    verdicts = []
    for setting, tolerance in TOLERANCE.items():
        if setting not in results:
            continue
        ours = 100 * results[setting]["accuracy"]
        paper = published.accuracy[setting]
        allowed = 0.0 if algorithm in MUST_MATCH else tolerance
        gap = paper - ours
        verdicts.append(f"{setting_name(*setting)} {'met' if gap <= allowed else f'missed by {gap - allowed:.1f} pt'}")
    return ", ".join(verdicts)


def test_steps_cell(algorithm: str, results: dict[tuple[int, int], dict[str, Any]]) -> str:
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
             results: dict[tuple[int, int], dict[str, Any]],
             transductive: dict[tuple[int, int], dict[str, Any]] | None = None, link: str = "") -> list[str]:
    """A run's row (first cell ``**name** suffix link``), and its transductive row when evaluated that way."""
    tail = f" | {test_steps_cell(algorithm, results)} | {status['model_step']} / {status['schedule']} |"
    rows = [f"| **{name}** {suffix}{link} | " + " | ".join(cell(results.get(s)) for s in SETTINGS) + tail]
    if transductive:
        rows.append(f"| {name} {suffix}, transductive batch norm | "
                    + " | ".join(cell(transductive.get(s)) for s in SETTINGS) + tail)
    return rows


def published_rows(algorithm: str) -> list[str]:
    """The paper's figures as a table row, if it has any."""
    published = PUBLISHED.get(algorithm)
    if published is None:
        return []
    return [f"| {published.source} | " + " | ".join(f"{published.accuracy[s]:.2f}" for s in SETTINGS) + " | | |"]


def split_cost_rows(split: CandidateSection, evaluations: dict[str, dict[tuple[int, int], dict[str, Any]]],
                    ours: dict[str, dict[tuple[int, int], dict[str, Any]]]) -> list[str]:
    """Per run of ``split`` whose algorithm ships too: what the change is worth at the targets' settings
    (the run minus the shipped one, in points), and the target verdicts of both."""
    lines = []
    for run, results in evaluations.items():
        algorithm = split.algorithm_of(run)
        shipped = ours.get(algorithm)
        if shipped is None or not any(s in results and s in shipped for s in TOLERANCE):
            continue
        gains = [f"{100 * (results[s]['accuracy'] - shipped[s]['accuracy']):+.2f}"
                 if s in results and s in shipped else "—" for s in TOLERANCE]
        lines.append(f"| {run} | {' | '.join(gains)} | {target_verdict(algorithm, results)} | "
                     f"{target_verdict(algorithm, shipped)} |")
    if not lines:
        return []
    names = [setting_name(*s) for s in TOLERANCE]
    return ["", f"{split.worth}, in points ({split.name} minus ours, support-set batch norm), and the",
            "targets judged on each:", "",
            "| run | " + " | ".join(f"{name}: {split.name} − ours" for name in names) + f" | targets on {split.name} "
            "| targets on ours |", "|---|---|---|---|---|", *lines]


def candidate_section(models: Path, split: CandidateSection,
                      evaluations: dict[str, dict[tuple[int, int], dict[str, Any]]],
                      transductive: dict[str, dict[tuple[int, int], dict[str, Any]]],
                      ours: dict[str, dict[tuple[int, int], dict[str, Any]]]) -> list[str]:
    """RESULTS.md's table of the runs of ``split`` (``evaluations``' keys, with whatever evaluations they
    have, and ``transductive`` ones where made), each beside its paper, and what the change is worth
    against the shipped runs' evaluations (``ours``)."""
    if not evaluations:
        return []
    lines = ["", f"## {split.heading}", "", *split.intro, "",
             "| run | " + " | ".join(setting_name(*s) for s in SETTINGS) + " | test inner steps | meta-steps (checkpoint / schedule) |",
             "|" + "---|" * (len(SETTINGS) + 3)]
    for run, results in evaluations.items():
        algorithm = split.algorithm_of(run)
        curve = f" ([curve]({run}/curve.png))" if (models / run / "curve.png").exists() else ""
        lines += our_rows(run, f"({algorithm}, ours)", algorithm, training_status(models / run), results,
                          transductive.get(run), curve)
        lines += published_rows(algorithm)
    lines += split_cost_rows(split, evaluations, ours)
    lines.append("")
    lines.append("Training: `bash models/train.sh RUN`; validation accuracy and time in each run's model.json.")
    return lines


def render_table(models: Path, evaluations: dict[str, dict[tuple[int, int], dict[str, Any]]], tasks: int,
                 runs: Sequence[str],
                 transductive: dict[str, dict[tuple[int, int], dict[str, Any]]] | None = None,
                 candidates: dict[CandidateSection, dict[str, dict[tuple[int, int], dict[str, Any]]]] | None = None) -> str:
    """RESULTS.md: the evaluated checkpoints beside the papers, then the training state of every run in
    ``runs``, then the runs on each candidate split (``candidates``). ``transductive`` holds the
    transductive evaluations of all of them, by run folder."""
    header = "| algorithm | " + " | ".join(setting_name(*s) for s in SETTINGS) + " | test inner steps | meta-steps (checkpoint / schedule) |"
    lines = [
        "# Results",
        "",
        "Generated by `python -m engine.results` (rerun it to refresh; it evaluates only checkpoints that changed).",
        f"Query accuracy (%) ± 95% confidence interval over {tasks} tasks per setting from the Omniglot",
        "**evaluation** split (15 queries per class, seed 0, never seen in training or model selection), each",
        "cell one `python -m engine.evaluate` run whose exact command and JSON are in `models/eval/`.",
        "Batch norm is **not transductive** in our main rows: queries are normalised with the support set's",
        "statistics, so each query is predicted alone. Most published MAML-family figures normalise with the",
        "query batch (transductive), which is easier: MAML, first-order MAML and Reptile, whose papers did so,",
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
        "",
        header,
        "|" + "---|" * (len(SETTINGS) + 3),
    ]
    for algorithm, results in evaluations.items():
        lines += our_rows(algorithm, "(ours)", algorithm, training_status(models / algorithm), results,
                          (transductive or {}).get(algorithm))
        lines += published_rows(algorithm)
    lines += ["", "## Targets and training budget", "",
              "Every shipped run; validation accuracy is on 200 fixed 5-way 1-shot tasks from the held-out",
              "background alphabets (model selection only). Runs not evaluated above are still training.", "",
              "Targets: within 1 point of the published 5-way 1-shot figure and 2 points at 20-way 1-shot;",
              "MAML and ProtoNet meet or beat theirs. Time per meta-step is that of the run's latest training",
              "piece (the current code; earlier pieces may have run slower code), and the estimates are that time",
              "multiplied out, on the run's own hardware. The 5-way 1-shot target is extrapolated along the",
              "validation curve: the published figure less its tolerance, shifted by the checkpoint's gap",
              "between validation and evaluation accuracy, reached when a power law (error = a * step^-b, fitted",
              "to the curve's second half) says so. It assumes the curve keeps its recent slope, while every",
              "schedule also decays its meta learning rate: a rough guide, not a promise.", "",
              "| algorithm | targets | validation accuracy | trained so far | time per meta-step | to finish our schedule | paper's schedule | 5w1s target, extrapolated | curve |",
              "|---|---|---|---|---|---|---|---|---|"]
    for algorithm in runs:
        results = evaluations.get(algorithm)
        status = training_status(models / algorithm)
        targets = "not evaluated yet" if results is None else target_verdict(algorithm, results)
        val = "—" if status["val_accuracy"] is None else f"{100 * status['val_accuracy']:.1f}% (step {status['model_step']})"
        per_step = status["seconds_per_step"]
        remaining = max(status["schedule"] - status["trained"], 0)
        finish = "done" if remaining == 0 else f"{remaining} steps ≈ {format_hours(remaining * per_step)}"
        if results is not None and remaining > 0:
            targets += " (checkpoint of an unfinished schedule: the CPU budget stopped it so far)"
        published = PUBLISHED.get(algorithm)
        paper = ("—" if published is None or published.meta_steps is None
                 else f"{published.meta_steps} steps ≈ {format_hours(published.meta_steps * per_step)}")
        curve = f"[curve]({algorithm}/curve.png)" if (models / algorithm / "curve.png").exists() else "—"
        lines.append(f"| {algorithm} | {targets} | {val} | {status['trained']} steps, "
                     f"{format_hours(status['seconds'])} ({'; '.join(status['hardware'])}) | {per_step:.2f} s | "
                     f"{finish} | {paper} | {target_time(algorithm, results, status, validation_curve(models / algorithm))} | "
                     f"{curve} |")
    for split, split_results in (candidates or {}).items():
        lines += candidate_section(models, split, split_results, transductive or {}, evaluations)
    notes = [f"* **{name}** {text}" for name, text in NOTES.items() if name in runs]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "Training commands: `bash models/train.sh ALGORITHM` (one configuration per algorithm; it resumes "
              "an interrupted run). The JSON beside each checkpoint records the seed, the git commit, the dataset's "
              "checksum and the wall-clock time and hardware of every training piece.", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--algorithms", nargs="*", default=None,
                        help="evaluate these (default: every shipped checkpoint); the others keep their stored, "
                             "still valid evaluations")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--table-only", action="store_true", help="use stored, still valid evaluations only; run none")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    models: Path = args.models
    runs = shipped_algorithms(models)
    candidates = {section: candidate_runs(models, section) for section in CANDIDATE_SECTIONS}
    requested = [] if args.table_only else (args.algorithms or runs + [run for split_runs in candidates.values()
                                                                          for run in split_runs])
    evaluations: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}
    transductive: dict[str, dict[tuple[int, int], dict[str, Any]]] = {}

    def results_of(run: str, transductive: bool = False) -> dict[tuple[int, int], dict[str, Any]]:
        if run in requested:
            return {(ways, shots): evaluate_checkpoint(models, run, ways, shots, args.tasks, args.data_dir,
                                                       args.device, transductive) for ways, shots in SETTINGS}
        return current_evaluations(models, run, transductive)

    for algorithm in runs:
        draw_curve(models / algorithm, algorithm, models / algorithm / "curve.png")
        for variant, table in ((False, evaluations), (True, transductive)):
            if variant and algorithm not in TRANSDUCTIVE_ROWS:
                continue
            results = results_of(algorithm, variant)
            if results:
                table[algorithm] = results
    candidate_results: dict[CandidateSection, dict[str, dict[tuple[int, int], dict[str, Any]]]] = {}
    for split, split_runs in candidates.items():
        candidate_results[split] = {}
        for run, algorithm in split_runs.items():
            draw_curve(models / run, algorithm, models / run / "curve.png")
            candidate_results[split][run] = results_of(run)
            if algorithm in TRANSDUCTIVE_ROWS and (results := results_of(run, True)):
                transductive[run] = results
    (models / "RESULTS.md").write_text(render_table(models, evaluations, args.tasks, runs, transductive,
                                                    candidate_results), encoding="utf-8")
    print(f"wrote {models / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
