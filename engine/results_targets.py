"""RESULTS.md's section on the one-shot targets for characters nobody trained on.

The targets (the project's, set beside human and Bayesian Program Learning figures):

* 20-way 1-shot within one alphabet (Lake et al. 2015's benchmark): ProtoNet at least BPL's 96.7%,
  every gradient-based learner at least 92%;
* 5-way 1-shot across alphabets: every algorithm at least 97%;
* on the papers' split with the paper's protocol (transductive batch norm where the paper was):
  within 0.5 points of the paper at 5-way 1-shot and 1.5 at 20-way 1-shot.

Each target is judged on the best evaluated run of the algorithm on the split the target names
(the shipped checkpoint or any candidate), and the section then lists what was tried, with its
figures against the shipped checkpoint and the time it took: the candidate runs (training time) and
the test-time levers of ``models/eval/levers`` (evaluation time). Pure formatting over the committed
JSON that :mod:`engine.results` gathers: nothing here evaluates or trains.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (ways, shots, within_alphabet): engine.results.Setting compares and hashes equal to these tuples.
SettingKey = tuple[int, int, bool]
FIVE_WAY: SettingKey = (5, 1, False)
TWENTY_WAY: SettingKey = (20, 1, False)
WITHIN: SettingKey = (20, 1, True)

PROTONET_WITHIN = 96.7  # Bayesian Program Learning (Lake et al. 2015)
GRADIENT_WITHIN = 92.0
FIVE_WAY_ALL = 97.0
PAPER_TOLERANCE: Mapping[SettingKey, float] = {FIVE_WAY: 0.5, TWENTY_WAY: 1.5}

Results = Mapping[SettingKey, Mapping[str, Any]]


@dataclass(frozen=True)
class EvaluatedRun:
    """One run's evaluations as RESULTS.md has them."""

    name: str
    algorithm: str
    papers_split: bool  # trained and tested on the papers' character split
    results: Results
    transductive: Results = field(default_factory=dict)
    change: str = ""  # what the run changes against the shipped configuration ("" for a shipped run)
    hours: float = 0.0  # training time so far
    shipped: bool = False
    pipeline: str = "raw"  # the image pipeline it trained on (and is evaluated on)
    # A shipped run's evaluations through the app's pipeline, where they were made (``served_pipeline``).
    served: Results = field(default_factory=dict)
    served_pipeline: str | None = None

    def reference_for(self, candidate: "EvaluatedRun") -> Results:
        """What ``candidate`` is set against: this (shipped) run evaluated through the candidate's
        pipeline where it was, else as in the main table."""
        if self.served and candidate.pipeline != self.pipeline and candidate.pipeline == self.served_pipeline:
            return self.served
        return self.results


@dataclass(frozen=True)
class TargetContext:
    """What the section needs to know of each algorithm."""

    gradient_based: Sequence[str]  # learners that adapt by an inner loop of gradient steps
    papers: Mapping[str, tuple[str, Mapping[SettingKey, float], bool]]  # label, figures, transductive


def percent(result: Mapping[str, Any] | None) -> float | None:
    return None if result is None else 100.0 * float(result["accuracy"])


def best(runs: Sequence[EvaluatedRun], setting: SettingKey, transductive: bool = False
         ) -> tuple[float, EvaluatedRun] | None:
    """The highest figure at ``setting`` among ``runs`` (the transductive ones if asked), with its run."""
    scored = [(value, run) for run in runs
              if (value := percent((run.transductive if transductive else run.results).get(setting))) is not None]
    return max(scored, key=lambda item: item[0]) if scored else None


def verdict(value: float, required: float) -> str:
    return "met" if value >= required else f"missed by {required - value:.2f} pt"


def target_rows(runs: Sequence[EvaluatedRun], context: TargetContext) -> list[str]:
    """One row per algorithm and target: what is required, the best run's figure and the verdict."""
    ours = [run for run in runs if not run.papers_split]
    algorithms = sorted({run.algorithm for run in runs})
    rows: list[str] = []

    def add(target: str, algorithm: str, required: float, found: tuple[float, EvaluatedRun] | None) -> None:
        if found is None:
            rows.append(f"| {target} | {algorithm} | ≥ {required:.2f} | not evaluated | — |")
            return
        value, run = found
        rows.append(f"| {target} | {algorithm} | ≥ {required:.2f} | {value:.2f} ({run.name}) | "
                    f"{verdict(value, required)} |")

    for algorithm in algorithms:
        mine = [run for run in ours if run.algorithm == algorithm]
        if algorithm == "protonet":
            add("20w1s within one alphabet", algorithm, PROTONET_WITHIN, best(mine, WITHIN))
        elif algorithm in context.gradient_based:
            add("20w1s within one alphabet", algorithm, GRADIENT_WITHIN, best(mine, WITHIN))
    for algorithm in algorithms:
        add("5w1s across alphabets", algorithm, FIVE_WAY_ALL, best([r for r in ours if r.algorithm == algorithm],
                                                                  FIVE_WAY))
    for algorithm in algorithms:
        if algorithm not in context.papers:
            continue
        label, published, transductive = context.papers[algorithm]
        on_papers_split = [run for run in runs if run.algorithm == algorithm and run.papers_split]
        for setting, tolerance in PAPER_TOLERANCE.items():
            if setting not in published:
                continue
            protocol = "transductive" if transductive else "support-set batch norm"
            add(f"papers' split, {setting[0]}w{setting[1]}s ({protocol}; {label}: {published[setting]:.2f})",
                algorithm, published[setting] - tolerance, best(on_papers_split, setting, transductive))
    return rows


def delta(run: EvaluatedRun, base: EvaluatedRun | None, setting: SettingKey) -> str:
    value = percent(run.results.get(setting))
    if value is None:
        return "—"
    reference = None if base is None else percent(base.reference_for(run).get(setting))
    return f"{value:.2f}" + ("" if reference is None else f" ({value - reference:+.2f})")


@dataclass(frozen=True)
class Lever:
    """One evaluation of ``models/eval/levers``: a test-time lever on a shipped checkpoint."""

    algorithm: str
    setting: SettingKey
    what: str
    plain: bool  # no lever: the plain adaptation the others are set against
    accuracy: float
    ci95: float
    tasks: int
    seconds: float


PLAIN_ADAPTATION = "none (the shipped checkpoint's plain adaptation)"


def lever_name(record: Mapping[str, Any]) -> str:
    parts = []
    if record.get("head_init", "zero") != "zero":
        parts.append("Proto-MAML head (prototype-initialised)")
    if record.get("support_augment"):
        parts.append(f"support set augmented x{record['support_augment']}")
    if record.get("query_augment"):
        parts.append(f"query test-time augmentation x{record['query_augment']}")
    return ", ".join(parts) or PLAIN_ADAPTATION


def read_levers(folder: Path) -> list[Lever]:
    """The lever evaluations stored in ``folder`` (``python -m engine.evaluate --json`` files)."""
    levers = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        setting = (int(record["ways"]), int(record["shots"]), bool(record.get("within_alphabet")))
        tasks = int(record.get("tasks", 0))
        what = lever_name(record)
        levers.append(Lever(record["algorithm"], setting, what, what == PLAIN_ADAPTATION,
                            100.0 * float(record["accuracy"]), 100.0 * float(record.get("ci95", 0.0)), tasks,
                            float(record.get("seconds_per_task", 0.0)) * tasks))
    return levers


def lever_rows(levers: Sequence[Lever]) -> list[str]:
    """Each lever's figure against the plain adaptation on the same tasks, at 5w1s and within one alphabet."""
    base = {(lever.algorithm, lever.setting): lever for lever in levers if lever.plain}
    rows = []
    for lever in levers:
        if lever.plain or (reference := base.get((lever.algorithm, lever.setting))) is None:
            continue
        shape = "20w1s within one alphabet" if lever.setting[2] else f"{lever.setting[0]}w{lever.setting[1]}s"
        rows.append(f"| {lever.algorithm} | {lever.what} | {shape} | {lever.tasks} | {reference.accuracy:.2f} ± "
                    f"{reference.ci95:.2f} | {lever.accuracy:.2f} ± {lever.ci95:.2f} | "
                    f"{lever.accuracy - reference.accuracy:+.2f} | {lever.seconds:.0f} s |")
    return rows


def render_targets(runs: Sequence[EvaluatedRun], context: TargetContext, levers: Sequence[Lever],
                   tasks: int) -> list[str]:
    """RESULTS.md's lines for the targets and what was tried (an empty list without any evaluated run)."""
    if not any(run.results for run in runs):
        return []
    shipped = {run.algorithm: run for run in runs if run.shipped}
    lines = ["", "## One-shot targets for characters nobody trained on", "",
             "Each target judged on the best evaluated run of the algorithm (the shipped checkpoint or a candidate",
             f"of the sections above) on the split it names: the cells of the tables above ({tasks} tasks each).",
             f"ProtoNet's within-alphabet target is Bayesian Program Learning's {PROTONET_WITHIN}% (humans: 95.5%); "
             "the papers' figures",
             "are the rows beside ours.", "",
             "| target | algorithm | required | best (run) | verdict |", "|---|---|---|---|---|",
             *target_rows(runs, context)]
    total = sum(run.hours for run in runs)
    lines += ["", f"Meta-training behind these figures: {total:.1f} h over {len(runs)} runs "
              f"({sum(run.hours for run in runs if run.shipped):.1f} h for the shipped checkpoints), on the "
              "hardware the table of the training budget lists."]
    tried = [run for run in runs if not run.shipped and not run.papers_split and run.results]
    if tried:
        lines += ["", "Trained to reach them (candidates on our split; their figures, and in brackets the change "
                  "against the shipped checkpoint, in points;", "a candidate on another image pipeline is set against "
                  "the shipped checkpoint evaluated through that pipeline, as the app serves it):", "",
                  "| run | what it changes | training time | 5w1s | 20w1s | 20w1s within one alphabet |",
                  "|---|---|---|---|---|---|"]
        for run in tried:
            base = shipped.get(run.algorithm)
            lines.append(f"| {run.name} | {run.change or '—'} | {run.hours:.1f} h | {delta(run, base, FIVE_WAY)} | "
                         f"{delta(run, base, TWENTY_WAY)} | {delta(run, base, WITHIN)} |")
    rows = lever_rows(levers)
    if rows:
        lines += ["", "Tried at test time on the shipped checkpoints (`models/eval/levers/run.sh`: each lever alone "
                  "on the same first tasks", "of the seed-0 stream as the plain adaptation, on the pipeline the "
                  "checkpoint trained on, one thread; docs/training.md", "discusses them):", "",
                  "| algorithm | lever | setting | tasks | plain | with the lever | change | evaluation time |",
                  "|---|---|---|---|---|---|---|---|", *rows]
    return lines
