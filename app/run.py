"""Running a comparison on the session's task and keeping what it gave (no page elements here)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from app import charts
from app.images import Example
from app.models import ModelEntry
from app.resources import compute_threads, compute_workers
from app.workspace import Workspace, class_target
from engine.compare import AlgorithmResult, TaskInputError, compare, rescored
from engine.learners import AdaptSettings

MAX_CACHED_CHARTS = 200
"""Chart specs kept per comparison (one per query, label and width shown); beyond it they are rebuilt."""


@dataclass
class RunRecord:
    """The last comparison of this session."""

    key: tuple[Any, ...]
    results: list[AlgorithmResult]
    ways: int
    shots: int
    support_count: int
    queries: list[Example]
    wall_ms: float
    settings_text: str
    error: str | None = None
    # Compiled chart specs, keyed by what they show (labels and names can change without a rerun).
    charts: dict[tuple[Any, ...], dict[str, Any] | None] = dataclasses.field(default_factory=dict)

    def chart(self, key: tuple[Any, ...], build: Callable[[], Any]) -> dict[str, Any] | None:
        if key not in self.charts:
            if len(self.charts) > MAX_CACHED_CHARTS:
                self.charts.clear()
            chart = build()
            self.charts[key] = None if chart is None else charts.to_spec(chart)
        return self.charts[key]


def task_problems(ws: Workspace) -> dict[str, str]:
    """Why the task cannot run yet, per message target (empty when it can)."""
    problems = {}
    for index in ws.empty_classes():
        problems[class_target(index)] = (f"{ws.display_name(index)} has no examples: draw or upload at least one "
                                         "before running.")
    return problems


def settings_text(settings: AdaptSettings) -> str:
    finetune = "" if settings.finetune is None else f", fine-tuning {settings.finetune}"
    optimizer = "each model's inner optimizer" if settings.optimizer is None else settings.optimizer
    if settings.steps is None and settings.lr is None:
        if settings.optimizer is None:
            return f"each model's default steps, learning rate and inner optimizer{finetune}"
        return f"each model's default steps and learning rate, {optimizer}{finetune}"
    return f"{settings.steps} steps, lr {settings.lr:g}, {optimizer}{finetune}"


def run_comparison(ws: Workspace, models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                   key: tuple[Any, ...]) -> RunRecord:
    support_x, support_y = ws.support_arrays()
    query_x, query_y = ws.query_arrays()
    learners = {name: models[name].learner for name in selected if models[name].learner is not None}
    torch.set_num_threads(compute_threads())
    start = time.perf_counter()
    try:
        results = compare(learners, support_x, support_y, ws.ways, query_x, settings, query_y,
                          workers=compute_workers(len(learners)))
        error = None
    except TaskInputError as problem:
        results, error = [], str(problem)
    wall_ms = (time.perf_counter() - start) * 1000.0
    return RunRecord(key=key, results=results, ways=ws.ways, shots=ws.shots, support_count=len(support_y),
                     queries=[q.example for q in ws.queries], wall_ms=wall_ms, settings_text=settings_text(settings),
                     error=error)


def current_labels(ws: Workspace, record: RunRecord) -> list[int | None]:
    """True class of each query in the record, from the user's *current* labels."""
    by_id = {q.example.id: ws.query_label(q) for q in ws.queries}
    labels = []
    for example in record.queries:
        label = by_id.get(example.id)
        labels.append(label if label is not None and label < record.ways else None)
    return labels


def scored(results: list[AlgorithmResult], labels: list[int | None]) -> list[AlgorithmResult]:
    """The results scored against the current labels: a query's label can change without a rerun."""
    return [rescored(result, labels) for result in results]
