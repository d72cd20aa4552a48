"""RESULTS.md's section on the one-shot targets (engine/results_targets.py): each target is judged on
the best run on the split it names, and the levers are set against the plain adaptation they replace."""

from __future__ import annotations

import json
from pathlib import Path

from engine.results_targets import (
    FIVE_WAY, TWENTY_WAY, WITHIN, EvaluatedRun, TargetContext, read_levers, render_targets, target_rows,
)

CONTEXT = TargetContext(gradient_based=("maml",), papers={"maml": ("MAML (Finn et al. 2017)",
                                                                  {FIVE_WAY: 98.7, TWENTY_WAY: 95.8}, True)})


def result(accuracy: float) -> dict[str, float]:
    return {"accuracy": accuracy / 100, "ci95": 0.004}


def test_each_target_takes_the_best_run_on_its_own_split() -> None:
    runs = [
        EvaluatedRun("maml", "maml", False, {FIVE_WAY: result(95.5), WITHIN: result(70.6)}, shipped=True),
        EvaluatedRun("maml-wide", "maml", False, {FIVE_WAY: result(97.2), WITHIN: result(69.0)}, "width 64 → 128", 2.0),
        # The papers' split is only for the papers' target, even though it scores higher.
        EvaluatedRun("maml-characters", "maml", True, {FIVE_WAY: result(99.0)}, {FIVE_WAY: result(98.3),
                                                                               TWENTY_WAY: result(93.0)}),
        EvaluatedRun("protonet", "protonet", False, {WITHIN: result(97.0), FIVE_WAY: result(98.3)}, shipped=True),
    ]
    rows = target_rows(runs, CONTEXT)
    assert "| 20w1s within one alphabet | maml | ≥ 92.00 | 70.60 (maml) | missed by 21.40 pt |" in rows
    assert "| 20w1s within one alphabet | protonet | ≥ 96.70 | 97.00 (protonet) | met |" in rows
    assert "| 5w1s across alphabets | maml | ≥ 97.00 | 97.20 (maml-wide) | met |" in rows
    # MAML's paper was transductive: its papers'-split target reads the transductive evaluation.
    papers = [row for row in rows if row.startswith("| papers' split")]
    assert any("5w1s (transductive" in row and "98.30 (maml-characters) | met" in row for row in papers)
    assert any("20w1s (transductive" in row and "93.00 (maml-characters) | missed by 1.30 pt" in row for row in papers)


def test_levers_are_set_against_the_plain_adaptation_on_the_same_tasks(tmp_path: Path) -> None:
    def write(name: str, accuracy: float, **lever: object) -> None:
        record = {"algorithm": "maml", "ways": 20, "shots": 1, "within_alphabet": True, "tasks": 100,
                  "accuracy": accuracy, "ci95": 0.02, "seconds_per_task": 0.5, "head_init": "zero",
                  "support_augment": 0, "query_augment": 0, **lever}
        (tmp_path / f"{name}.json").write_text(json.dumps(record))

    write("maml-base", 0.70)
    write("maml-protohead", 0.72, head_init="prototypes")
    (tmp_path / "broken.json").write_text("{not json")
    levers = read_levers(tmp_path)
    assert len(levers) == 2
    runs = [EvaluatedRun("maml", "maml", False, {WITHIN: result(70.6)}, hours=4.5, shipped=True)]
    lines = render_targets(runs, CONTEXT, levers, tasks=600)
    row = next(line for line in lines if line.startswith("| maml | Proto-MAML head"))
    assert "| 70.00 ± 2.00 | 72.00 ± 2.00 | +2.00 | 50 s |" in row
    assert any("4.5 h over 1 runs" in line for line in lines)


def test_no_section_without_evaluations() -> None:
    assert render_targets([EvaluatedRun("maml", "maml", False, {}, shipped=True)], CONTEXT, [], 600) == []


def test_a_candidate_on_another_pipeline_is_set_against_the_shipped_run_as_served() -> None:
    shipped = EvaluatedRun("metasgd", "metasgd", False, {FIVE_WAY: result(95.0)}, shipped=True, pipeline="raw",
                           served={FIVE_WAY: result(96.0)}, served_pipeline="canonical")
    canonical = EvaluatedRun("metasgd-canonical", "metasgd", False, {FIVE_WAY: result(96.5)}, "pipeline raw → canonical",
                             1.0, pipeline="canonical")
    steps = EvaluatedRun("metasgd-2steps", "metasgd", False, {FIVE_WAY: result(94.5)}, "inner_steps 1 → 2", 1.0)
    lines = render_targets([shipped, canonical, steps], CONTEXT, [], 600)
    assert any(line.startswith("| metasgd-canonical |") and "96.50 (+0.50)" in line for line in lines)
    assert any(line.startswith("| metasgd-2steps |") and "94.50 (-0.50)" in line for line in lines)
