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
from app.resources import adapted_cache, compute_queue, compute_threads
from app.workspace import Workspace, class_target
from engine.compare import (
    AdaptOutcome, AlgorithmResult, PreparedTask, TaskInputError, predict_all, prepare_task, rescored,
    support_fingerprint,
)
from engine.learners import AdaptSettings, Learner

MAX_CACHED_CHARTS = 200
"""Chart specs kept per comparison (one per query, label and width shown); beyond it they are rebuilt."""
ADAPTATION_CHARTS = ("query", "loss", "accuracy")
"""Charts that show only what the adapted learners say (a query's probabilities, the inner loop's support
losses and accuracies):
a comparison on the same support set and settings reuses the previous one's instead of compiling them
again (compiling and validating a query's chart costs more than predicting it: docs/performance.md)."""


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
    # What the learners were adapted to: support set, algorithms, settings and loaded models.
    adapted_key: tuple[Any, ...] = ()
    # Compiled chart specs, keyed by what they show (labels and names can change without a rerun).
    charts: dict[tuple[Any, ...], dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    # The same specs as the page sends them (charts.for_page), under the same keys.
    page_specs: dict[tuple[Any, ...], dict[str, Any] | None] = dataclasses.field(default_factory=dict)

    def keep_charts_of(self, previous: RunRecord | None) -> None:
        """Take over ``previous``'s compiled :data:`ADAPTATION_CHARTS` when both were adapted alike (a query
        added, deleted or relabelled): a query's chart is keyed by the query, not its place in the list."""
        if previous is None or previous is self or not self.adapted_key or previous.adapted_key != self.adapted_key:
            return
        shown = {example.id for example in self.queries}
        for key, spec in previous.charts.items():
            if key[0] in ADAPTATION_CHARTS and (key[0] != "query" or key[1] in shown) \
                    and len(self.charts) < MAX_CACHED_CHARTS:
                self.charts.setdefault(key, spec)
                if key in previous.page_specs:
                    self.page_specs.setdefault(key, previous.page_specs[key])

    def chart(self, key: tuple[Any, ...], build: Callable[[], Any]) -> dict[str, Any] | None:
        """The chart's Vega-Lite spec (its data as rows: what an export converts), compiled once."""
        if key not in self.charts:
            if len(self.charts) > MAX_CACHED_CHARTS:
                self.charts.clear()
                self.page_specs.clear()
            chart = build()
            self.charts[key] = None if chart is None else charts.compile_chart(str(key[0]), chart)
        return self.charts[key]

    def page_chart(self, key: tuple[Any, ...], build: Callable[[], Any]) -> dict[str, Any] | None:
        """:meth:`chart`'s spec as ``st.vega_lite_chart`` sends it (:func:`app.charts.for_page`), made once."""
        if key not in self.page_specs:
            spec = self.chart(key, build)
            self.page_specs[key] = None if spec is None else charts.for_page(spec)
        return self.page_specs[key]


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


WAIT_POLL_S = 0.05
"""How often a waiting page run checks its queued request (and updates the "queued" note)."""


def run_comparison(ws: Workspace, models: dict[str, ModelEntry], selected: list[str], settings: AdaptSettings,
                   key: tuple[Any, ...], session: str = "", on_wait: Callable[[int], None] | None = None,
                   previous: RunRecord | None = None) -> RunRecord:
    """Adapt what is not adapted yet and predict the queries with every selected algorithm.

    Adapted learners are kept (:func:`~app.resources.adapted_cache`) per algorithm, support set and
    resolved settings: a new, deleted or relabelled query only predicts again, and only the queries
    ``previous`` (the session's last comparison) did not predict with the same adapted learners. Adaptations go through
    the shared queue (:func:`~app.resources.compute_queue`) as one request of ``session``; while it
    waits, ``on_wait(requests ahead)`` is called every :data:`WAIT_POLL_S` seconds. Raises
    :class:`~app.compute_queue.QueueFull` when the server has too many requests waiting."""
    support_x, support_y = ws.support_arrays()
    query_x, query_y = ws.query_arrays()
    learners = {name: models[name].learner for name in selected if models[name].learner is not None}
    torch.set_num_threads(compute_threads())
    start = time.perf_counter()
    results: list[AlgorithmResult] = []
    error = None
    adapted_key = (ws.support_key(), tuple(selected), settings, tuple(id(models[name].learner) for name in selected))
    queries = [q.example for q in ws.queries]
    try:
        task = prepare_task(support_x, support_y, ws.ways, query_x, query_y)
    except TaskInputError as problem:
        error = str(problem)
    else:
        outcomes = adapted_outcomes(learners, task, settings, session, on_wait)
        known = known_predictions(previous, adapted_key, queries)
        results = predict_all({name: outcomes[name] for name in learners}, task.query_x, task.query_y, known)
    wall_ms = (time.perf_counter() - start) * 1000.0
    return RunRecord(key=key, results=results, ways=ws.ways, shots=ws.shots, support_count=len(support_y),
                     queries=queries, wall_ms=wall_ms, settings_text=settings_text(settings),
                     error=error, adapted_key=adapted_key)


def known_predictions(previous: RunRecord | None, adapted_key: tuple[Any, ...],
                      queries: list[Example]) -> dict[str, list[Any]]:
    """Per algorithm, the probabilities ``previous`` gave each of ``queries`` (None for a query it did not
    have), when it was adapted alike; nothing from an algorithm whose result failed or diverged."""
    if previous is None or not adapted_key or previous.adapted_key != adapted_key:
        return {}
    place = {example.id: index for index, example in enumerate(previous.queries)}
    known = {}
    for result in previous.results:
        if result.ok and not result.diverged and result.probabilities is not None:
            known[result.name] = [None if example.id not in place else result.probabilities[place[example.id]]
                                  for example in queries]
    return known


def adapted_outcomes(learners: dict[str, Learner], task: PreparedTask, settings: AdaptSettings, session: str,
                     on_wait: Callable[[int], None] | None = None) -> dict[str, AdaptOutcome]:
    """Every learner adapted to the task's support set: kept ones at once, the others through the queue."""
    cache = adapted_cache()
    fingerprint = support_fingerprint(task.support_x, task.support_y, task.ways)
    outcomes: dict[str, AdaptOutcome] = {}
    for name, learner in learners.items():
        kept = cache.get(cache.key(name, learner, fingerprint, settings), learner)
        if kept is not None:
            outcomes[name] = kept
    missing = {name: learner for name, learner in learners.items() if name not in outcomes}
    if not missing:
        return outcomes
    # Learners that share a batched inner loop adapt as one job; the longest job first.
    jobs = cache.adaptation_jobs(missing, task, fingerprint, settings)
    ticket = compute_queue().submit(session, [job for _, job in jobs])
    try:
        while not ticket.wait(WAIT_POLL_S):
            if on_wait is not None:
                on_wait(ticket.ahead())  # a Streamlit call: a newer run of this page interrupts here
    except BaseException:
        ticket.cancel()  # interrupted by a newer page run: its jobs not started yet are skipped
        raise
    for adapted in ticket.results():
        outcomes.update(adapted)
    return outcomes


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
