"""Run several learners on one few-shot task and collect what the app (and benchmarks) show.

``compare`` is the single place where "all algorithms on the same task" happens: the Streamlit app
calls it for every comparison, and a benchmark can call it to time exactly what the app runs.

* Inputs are validated once for the whole comparison (:class:`TaskInputError`: a class with no
  support example, labels out of range, images of the wrong shape); those are the user's task, not
  an algorithm's fault.
* Each algorithm then runs in isolation: an exception in one becomes that algorithm's ``error`` and
  the others still run. A diverging inner loop is reported as the learner's ``warning``, with
  ``diverged`` set (``AlgorithmResult.status``: "diverged").
* Learners are only read (``Learner.adapt`` never writes meta-parameters), so one loaded model can
  serve many users at once.

Pure PyTorch/NumPy; no Streamlit here.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from engine import batched
from engine.learners import AdaptSettings, Adapted, Learner, StepRecord

if TYPE_CHECKING:
    from engine.data.tasks import Task

ImageBatch = Tensor | np.ndarray | Sequence[np.ndarray] | Sequence[Tensor]


class TaskInputError(ValueError):
    """The task itself cannot be run (the message is user-facing)."""


@dataclass
class AlgorithmResult:
    """Everything one algorithm produced on one task."""

    name: str
    # Support loss / accuracy per inner step (step 0 = before any update); one record for ProtoNet.
    trace: list[StepRecord] = field(default_factory=list)
    # [Q, ways] class probabilities and [Q] predicted classes; None without queries or on error.
    probabilities: np.ndarray | None = None
    predictions: np.ndarray | None = None
    adapt_ms: float = 0.0
    predict_ms: float = 0.0
    # What actually ran: None for learners without an inner loop (ProtoNet).
    steps: int | None = None
    lr: float | str | None = None
    optimizer: str | None = None
    has_inner_loop: bool = True
    warning: str | None = None
    # The inner loop diverged or the predictions blew up (``warning`` says how): not to be trusted.
    diverged: bool = False
    error: str | None = None
    # Notes from the inner loop for the user (e.g. an optimizer falling back to a gradient step),
    # taken from ``Adapted.notes`` when the learner provides them.
    notes: list[str] = field(default_factory=list)
    # Fraction of labelled queries predicted correctly; None when no query carries a label.
    query_accuracy: float | None = None
    correct: int = 0
    labelled: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """One word for a results table: "failed", "diverged", "warning" or "ok"."""
        if self.error is not None:
            return "failed"
        if self.diverged:
            return "diverged"
        return "warning" if self.warning else "ok"

    @property
    def final_loss(self) -> float | None:
        return self.trace[-1].loss if self.trace else None

    @property
    def final_support_accuracy(self) -> float | None:
        return self.trace[-1].accuracy if self.trace else None

    @property
    def total_ms(self) -> float:
        return self.adapt_ms + self.predict_ms


def as_images(images: ImageBatch | None, what: str = "images") -> Tensor:
    """Images as float32 ``[n, 1, 28, 28]``: from ``[n,28,28]``/``[n,1,28,28]`` arrays or tensors,
    or a sequence of ``[28,28]`` (or ``[1,28,28]``) arrays. ``None`` or empty gives ``[0,1,28,28]``."""
    if images is None:
        return torch.zeros(0, 1, 28, 28)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            return torch.zeros(0, 1, 28, 28)
        arrays = [np.asarray(image.detach().cpu() if isinstance(image, Tensor) else image, dtype=np.float32)
                  for image in images]
        for array in arrays:
            if array.size != 28 * 28:
                _bad_shape(what, array.shape)
        images = np.stack([array.reshape(28, 28) for array in arrays])
    tensor = torch.as_tensor(np.asarray(images, dtype=np.float32) if isinstance(images, np.ndarray) else images)
    tensor = tensor.to(torch.float32)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    if tensor.ndim != 4 or tuple(tensor.shape[1:]) != (1, 28, 28):
        _bad_shape(what, tuple(tensor.shape))
    if tensor.numel() and not torch.isfinite(tensor).all():
        raise TaskInputError(f"The {what} contain non-finite values.")
    return tensor


def _bad_shape(what: str, shape: Any) -> Tensor:
    raise TaskInputError(f"The {what} must be 28x28 images; got shape {tuple(shape)}.")


def as_labels(labels: Tensor | np.ndarray | Sequence[int] | None, count: int, ways: int, what: str) -> Tensor | None:
    if labels is None:
        return None
    tensor = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels, dtype=np.int64))
    tensor = tensor.to(torch.int64)
    tensor = tensor.reshape(-1)
    if tensor.numel() != count:
        raise TaskInputError(f"{count} {what} images but {tensor.numel()} labels.")
    return tensor


def validate_support(support_y: Tensor, ways: int) -> None:
    """Every class 0..ways-1 needs at least one example; labels must lie in that range."""
    if not 2 <= ways:
        raise TaskInputError(f"A task needs at least 2 classes (got {ways}).")
    if support_y.numel() == 0:
        raise TaskInputError("The support set is empty: draw or upload at least one example per class.")
    if int(support_y.min()) < 0 or int(support_y.max()) >= ways:
        raise TaskInputError(f"Support labels must lie in 0..{ways - 1}.")
    counts = torch.bincount(support_y, minlength=ways)
    empty = [int(i) for i in torch.nonzero(counts == 0).flatten()]
    if empty:
        names = ", ".join(str(i + 1) for i in empty)
        raise TaskInputError(f"Class{'es' if len(empty) > 1 else ''} {names} ha{'ve' if len(empty) > 1 else 's'} "
                             "no support examples.")


def effective_settings(learner: Learner,
                       settings: AdaptSettings | None) -> tuple[int | None, float | str | None, str | None]:
    """(steps, learning rate, optimizer) that ``learner.adapt`` will use with ``settings``:
    ``learner.resolve_settings(settings).summary()``, kept for callers of this name.

    ``None`` for learners without an inner loop; a learning rate learned per parameter (Meta-SGD
    style) is reported as the string ``"learned"``.
    """
    return learner.resolve_settings(settings).summary()


@dataclass(frozen=True)
class QueryScore:
    """How many labelled queries an algorithm predicted correctly."""

    correct: int = 0
    labelled: int = 0

    @property
    def accuracy(self) -> float | None:
        """Fraction correct; None when no query carries a label."""
        return self.correct / self.labelled if self.labelled else None


QueryLabels = Tensor | np.ndarray | Sequence[int | None]


def score_queries(predictions: np.ndarray | Tensor | None, labels: QueryLabels | None) -> QueryScore:
    """Predicted classes against the queries' true classes; a label of None or below 0 marks an
    unlabelled query, which does not count. No predictions (a failed algorithm): nothing scored."""
    if predictions is None or labels is None:
        return QueryScore()
    predicted = np.asarray(predictions.detach().cpu() if isinstance(predictions, Tensor) else predictions).reshape(-1)
    if isinstance(labels, (Tensor, np.ndarray)):
        truth = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    else:
        truth = np.asarray([-1 if label is None else int(label) for label in labels], dtype=np.int64)
    if truth.shape != predicted.shape:
        raise ValueError(f"{predicted.size} predictions but {truth.size} query labels")
    labelled = truth >= 0
    return QueryScore(correct=int((predicted[labelled] == truth[labelled]).sum()), labelled=int(labelled.sum()))


def rescored(result: AlgorithmResult, labels: QueryLabels | None) -> AlgorithmResult:
    """``result`` scored against ``labels`` (e.g. the queries' labels as the user changed them after
    the run); a failed algorithm scores nothing."""
    score = score_queries(result.predictions if result.ok else None, labels)
    return dataclasses.replace(result, correct=score.correct, labelled=score.labelled, query_accuracy=score.accuracy)


def expected_cost(learner: Learner, settings: AdaptSettings | None) -> int:
    """A rough rank of how long ``learner.adapt`` takes with ``settings``: its inner steps (a
    learner without an inner loop does one forward pass)."""
    try:
        steps = learner.resolve_settings(settings).steps
    except Exception:  # noqa: BLE001 - ordering is only a hint; run_one reports real failures
        return 0
    return steps or 0


def _settings_for(name: str, settings: AdaptSettings | Mapping[str, AdaptSettings] | None) -> AdaptSettings:
    if settings is None:
        return AdaptSettings()
    if isinstance(settings, AdaptSettings):
        return settings
    return settings.get(name, AdaptSettings())


@dataclass
class AdaptOutcome:
    """One learner adapted to one support set: what adapting showed (``result``, without
    predictions) and the :class:`Adapted` model to predict with (None when adapting failed).

    The adapted model is only read afterwards (``predict_proba``), so an outcome can be kept and
    reused for any number of query sets, by any session, as long as the support set and the
    settings stay the same."""

    name: str
    result: AlgorithmResult
    adapted: Adapted | None
    device: torch.device

    @property
    def ok(self) -> bool:
        return self.adapted is not None and self.result.error is None


def _failure(result: AlgorithmResult, error: Exception) -> AlgorithmResult:
    message = str(error).strip() or type(error).__name__
    result.error = f"{type(error).__name__}: {message}"
    result.probabilities = result.predictions = None
    result.query_accuracy = None
    return result


def adapt_one(name: str, learner: Learner, support_x: Tensor, support_y: Tensor, ways: int,
              settings: AdaptSettings, adapted: Adapted | None = None) -> AdaptOutcome:
    """Adapt one learner to the support set; never raises for the algorithm's own failures.
    ``adapted``: its adaptation already made (by ``engine.batched``), to be reported as its own."""
    result = AlgorithmResult(name=name, has_inner_loop=bool(learner.has_inner_loop))
    device = torch.device("cpu")
    try:
        result.steps, result.lr, result.optimizer = learner.resolve_settings(settings).summary()
        device = learner.device
        if adapted is None:
            sx, sy = support_x.to(device), support_y.to(device)
            start = time.perf_counter()
            adapted = learner.adapt(sx, sy, ways, settings if learner.has_inner_loop else None)
            result.adapt_ms = float(adapted.adapt_ms) if adapted.adapt_ms else (time.perf_counter() - start) * 1000.0
        else:
            result.adapt_ms = float(adapted.adapt_ms)
        result.trace = list(adapted.trace)
        result.warning, result.diverged = adapted.warning, bool(adapted.diverged)
        result.notes = [str(note) for note in (getattr(adapted, "notes", None) or [])]
    except Exception as error:  # noqa: BLE001 - one algorithm's failure must not stop the others
        return AdaptOutcome(name, _failure(result, error), None, device)
    return AdaptOutcome(name, result, adapted, device)


def _plan(learner: Learner, ways: int, settings: AdaptSettings) -> batched.BatchPlan | None:
    try:
        return batched.batch_plan(learner, ways, settings)
    except Exception:  # noqa: BLE001 - bad settings: the learner's own adapt reports them as its error
        return None


def adapt_batched(learners: Mapping[str, Learner], support_x: Tensor, support_y: Tensor, ways: int,
                  settings: Mapping[str, AdaptSettings]) -> dict[str, AdaptOutcome]:
    """:func:`adapt_one` for every learner, those whose inner loops are the same computation on
    different weights in one batched loop (``engine.batched``; the rest, and any network that leaves
    the batch, on their own): the same outcomes, in less time."""
    plans = {name: _plan(learner, ways, settings[name]) for name, learner in learners.items()}
    together: dict[str, Adapted | None] = {}
    for names in batched.batchable_groups(plans):
        group = [plans[name] for name in names]
        device = group[0].start["conv0.weight"].device
        try:
            adapted = batched.adapt_together(group, support_x.to(device), support_y.to(device), ways)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - each learner's own adapt then reports its own failure
            adapted = [None] * len(names)
        together.update(zip(names, adapted))
    return {name: adapt_one(name, learner, support_x, support_y, ways, settings[name], together.get(name))
            for name, learner in learners.items()}


KnownRows = Sequence[np.ndarray | None]
"""Per query, the probabilities the same adapted learner gave it before (None: not predicted yet)."""


def predict_one(outcome: AdaptOutcome, query_x: Tensor, query_y: Tensor | None = None,
                known: KnownRows | None = None) -> AlgorithmResult:
    """The outcome's result with the queries' probabilities, predictions and score (a new object:
    the outcome itself is left as it was, so it can be reused for other queries).

    ``known``: per query, the probabilities this same outcome gave it before, or None. Only the others are
    run through the network: each query is predicted alone (batch norm uses the support set's statistics),
    so a query's row does not depend on which queries come with it. Known rows must be finite: a result
    with non-finite predictions is marked diverged and its rows are not for reuse."""
    result = dataclasses.replace(outcome.result, trace=list(outcome.result.trace), notes=list(outcome.result.notes),
                                 probabilities=None, predictions=None, predict_ms=0.0)
    if not outcome.ok or not query_x.shape[0]:
        return result
    assert outcome.adapted is not None
    ways, count = outcome.adapted.ways, int(query_x.shape[0])
    rows = [None] * count if known is None else list(known)
    if len(rows) != count:
        raise ValueError(f"known holds {len(rows)} rows for {count} queries")
    missing = [index for index, row in enumerate(rows) if row is None]
    try:
        start = time.perf_counter()
        probabilities = torch.empty(count, ways)
        if missing:
            fresh = outcome.adapted.predict_proba(query_x[missing].to(outcome.device)).detach().to("cpu", torch.float32)
            if outcome.device.type == "cuda":
                torch.cuda.synchronize(outcome.device)
            if tuple(fresh.shape) != (len(missing), ways):
                raise RuntimeError(f"predict_proba returned shape {tuple(fresh.shape)}, "
                                   f"expected {(len(missing), ways)}")
            probabilities[missing] = fresh
        for index, row in enumerate(rows):
            if row is not None:
                probabilities[index] = torch.as_tensor(row, dtype=torch.float32)
        result.predict_ms = (time.perf_counter() - start) * 1000.0
        if not torch.isfinite(probabilities).all():
            note = "Its predictions are not finite numbers (NaN/inf): the adapted weights blew up."
            result.warning = f"{result.warning} {note}" if result.warning else note
            result.diverged = True
            probabilities = torch.nan_to_num(probabilities, nan=0.0, posinf=0.0, neginf=0.0)
        result.probabilities = probabilities.numpy()
        result.predictions = probabilities.argmax(dim=1).numpy().astype(np.int64)
        score = score_queries(result.predictions, query_y)
        result.correct, result.labelled, result.query_accuracy = score.correct, score.labelled, score.accuracy
    except Exception as error:  # noqa: BLE001 - one algorithm's failure must not stop the others
        return _failure(result, error)
    return result


def run_one(name: str, learner: Learner, support_x: Tensor, support_y: Tensor, ways: int, query_x: Tensor,
            settings: AdaptSettings, query_y: Tensor | None = None) -> AlgorithmResult:
    """Adapt one learner and predict the queries; never raises for the algorithm's own failures."""
    return predict_one(adapt_one(name, learner, support_x, support_y, ways, settings), query_x, query_y)


@dataclass(frozen=True)
class PreparedTask:
    """A task's inputs validated and converted once (:func:`prepare_task`)."""

    support_x: Tensor
    support_y: Tensor
    ways: int
    query_x: Tensor
    query_y: Tensor | None


def prepare_task(support_images: ImageBatch, support_labels: Tensor | np.ndarray | Sequence[int], ways: int,
                 query_images: ImageBatch | None = None,
                 query_labels: Tensor | np.ndarray | Sequence[int] | None = None) -> PreparedTask:
    """Validate a task once (raises :class:`TaskInputError` for the task's own problems)."""
    support_x = as_images(support_images, "support images")
    support_y = as_labels(support_labels, support_x.shape[0], ways, "support")
    assert support_y is not None
    validate_support(support_y, ways)
    query_x = as_images(query_images, "query images")
    query_y = as_labels(query_labels, query_x.shape[0], ways, "query")
    if query_y is not None and query_y.numel() and int(query_y.max()) >= ways:
        raise TaskInputError(f"Query labels must lie in 0..{ways - 1} (or -1 for unknown).")
    return PreparedTask(support_x, support_y, ways, query_x, query_y)


def support_fingerprint(support_x: Tensor, support_y: Tensor, ways: int) -> str:
    """A digest of the support set (pixels, labels, N): equal digests adapt to equal models."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str((ways, tuple(support_x.shape))).encode())
    digest.update(support_x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest.update(support_y.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def settings_key(learner: Learner, settings: AdaptSettings) -> tuple[Any, ...]:
    """What decides how ``learner`` adapts with ``settings``: the resolved steps, step size,
    optimizer and fine-tuning choice, and the settings asked for (a learned per-weight rate shows as
    "learned" but is scaled by the asked one). A learner without an inner loop ignores settings: its
    key is all None, so changing them never re-adapts ProtoNet."""
    if not learner.has_inner_loop:
        return (None,)
    resolved = learner.resolve_settings(settings)
    return (resolved.steps, resolved.lr, resolved.optimizer, resolved.finetune, settings)


def _named_call(name: str, job: Callable[[], Any]) -> Any:
    """``job()``; the name rides along so a queued job says whose it is (tests read it)."""
    return job()


def _in_threads(jobs: Mapping[str, Callable[[], Any]], workers: int, cost: Mapping[str, int]) -> dict[str, Any]:
    """Call every job (name -> no-argument callable), ``workers`` at once, longest first."""
    if workers <= 1 or len(jobs) < 2:
        return {name: job() for name, job in jobs.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # Longest first: a free worker takes the next one, so the quick learners fill the tail
        # instead of one long inner loop running alone at the end.
        longest_first = sorted(jobs, key=lambda name: -cost.get(name, 0))
        # Each worker runs in a copy of the caller's context, so context-local switches (the fused
        # kernels: ``engine.kernels.fused``) hold in its threads as they do in a serial comparison.
        futures = {name: pool.submit(contextvars.copy_context().run, _named_call, name, jobs[name])
                   for name in longest_first}
        return {name: futures[name].result() for name in jobs}


def job_groups(learners: Mapping[str, Learner], ways: int,
               settings: Mapping[str, AdaptSettings]) -> list[tuple[list[str], int]]:
    """How to split adapting ``learners`` into jobs: learners that can share a batched inner loop
    (``engine.batched``) form one group, every other learner its own (in the order given); each group
    with its rough cost (``expected_cost``)."""
    plans = {name: _plan(learner, ways, settings[name]) for name, learner in learners.items()}
    groups = batched.batchable_groups(plans)
    grouped = {name for names in groups for name in names}
    groups += [[name] for name in learners if name not in grouped]
    return [(names, sum(expected_cost(learners[name], settings[name]) for name in names)) for names in groups]


def _adaptation_jobs(learners: Mapping[str, Learner], task: PreparedTask,
                     settings: AdaptSettings | Mapping[str, AdaptSettings] | None
                     ) -> tuple[dict[str, Callable[[], dict[str, AdaptOutcome]]], dict[str, int]]:
    """One job per group of :func:`job_groups` (keyed by its names), and each job's rough cost."""
    chosen = {name: _settings_for(name, settings) for name in learners}
    jobs: dict[str, Callable[[], dict[str, AdaptOutcome]]] = {}
    cost: dict[str, int] = {}
    for names, group_cost in job_groups(learners, task.ways, chosen):
        key = " + ".join(names)
        if len(names) > 1:
            jobs[key] = functools.partial(adapt_batched, {name: learners[name] for name in names}, task.support_x,
                                          task.support_y, task.ways, {name: chosen[name] for name in names})
        else:
            jobs[key] = functools.partial(_alone, key, learners[key], task, chosen[key])
        cost[key] = group_cost
    return jobs, cost


def _alone(name: str, learner: Learner, task: PreparedTask, settings: AdaptSettings) -> dict[str, AdaptOutcome]:
    return {name: adapt_one(name, learner, task.support_x, task.support_y, task.ways, settings)}


def adapt_all(learners: Mapping[str, Learner], support_images: ImageBatch,
              support_labels: Tensor | np.ndarray | Sequence[int], ways: int,
              settings: AdaptSettings | Mapping[str, AdaptSettings] | None = None,
              workers: int = 1) -> dict[str, AdaptOutcome]:
    """Adapt every learner to the same support set (in the order of ``learners``); predict with
    :func:`predict_all`, as often as the queries change. Raises :class:`TaskInputError` only for
    problems with the support set itself. Learners whose inner loops are the same computation on
    different weights adapt together in one batched loop (:func:`adapt_batched`), one job."""
    task = prepare_task(support_images, support_labels, ways)
    jobs, cost = _adaptation_jobs(learners, task, settings)
    outcomes: dict[str, AdaptOutcome] = {}
    for part in _in_threads(jobs, workers, cost).values():
        outcomes.update(part)
    return {name: outcomes[name] for name in learners}


def predict_all(outcomes: Mapping[str, AdaptOutcome], query_images: ImageBatch | None,
                query_labels: Tensor | np.ndarray | Sequence[int] | None = None,
                known: Mapping[str, KnownRows] | None = None) -> list[AlgorithmResult]:
    """Every adapted learner's predictions for the same queries (in the order of ``outcomes``); ``known``:
    per learner, the rows it gave queries before (:func:`predict_one`), which are not predicted again."""
    ways = {outcome.adapted.ways for outcome in outcomes.values() if outcome.adapted is not None}
    query_x = as_images(query_images, "query images")
    query_y = as_labels(query_labels, query_x.shape[0], max(ways, default=0), "query")
    if query_y is not None and query_y.numel() and ways and int(query_y.max()) >= min(ways):
        raise TaskInputError(f"Query labels must lie in 0..{min(ways) - 1} (or -1 for unknown).")
    return [predict_one(outcome, query_x, query_y, (known or {}).get(name)) for name, outcome in outcomes.items()]


AdaptKey = tuple[Any, ...]


class AdaptedCache:
    """Adapted learners kept per (algorithm, loaded model, support set, resolved settings): a
    bounded, thread-safe LRU shared by every session of a process.

    Adding, deleting or relabelling a query reuses what is kept (only predicting and scoring
    again); a new support set or new settings give a new key, hence a new adaptation. Kept
    outcomes are never mutated (:func:`predict_one` copies), and ``adapt`` never writes a
    learner's meta-parameters, so sharing them between sessions is safe. The learner itself is
    part of each entry and compared by identity, so a reloaded checkpoint is never confused with
    the one it replaced."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._entries: OrderedDict[AdaptKey, tuple[Learner, AdaptOutcome]] = OrderedDict()
        self._lock = threading.Lock()
        self.adaptations = 0
        """Adaptations run through :meth:`get_or_adapt` (tests and benchmarks count them)."""

    @staticmethod
    def key(name: str, learner: Learner, fingerprint: str, settings: AdaptSettings) -> AdaptKey:
        try:
            resolved = settings_key(learner, settings)
        except Exception:  # noqa: BLE001 - adapt_one reports the settings' problem as the algorithm's error
            resolved = ("unresolved", settings)
        return (name, id(learner), fingerprint, resolved)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: AdaptKey, learner: Learner) -> AdaptOutcome | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not learner:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: AdaptKey, learner: Learner, outcome: AdaptOutcome) -> None:
        if not outcome.ok:
            return  # a failure is retried next time (it may have been a passing problem)
        with self._lock:
            self._entries[key] = (learner, outcome)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_or_adapt(self, name: str, learner: Learner, task: PreparedTask, fingerprint: str,
                     settings: AdaptSettings) -> AdaptOutcome:
        key = self.key(name, learner, fingerprint, settings)
        outcome = self.get(key, learner)
        if outcome is None:
            outcome = adapt_one(name, learner, task.support_x, task.support_y, task.ways, settings)
            with self._lock:
                self.adaptations += 1
            self.put(key, learner, outcome)
        return outcome

    def get_or_adapt_all(self, learners: Mapping[str, Learner], task: PreparedTask, fingerprint: str,
                         settings: AdaptSettings) -> dict[str, AdaptOutcome]:
        """:meth:`get_or_adapt` for several learners in one call: those not kept adapt together
        where they can (:func:`adapt_batched`), as one job."""
        outcomes = {name: self.get(self.key(name, learner, fingerprint, settings), learner)
                    for name, learner in learners.items()}
        missing = {name: learners[name] for name, outcome in outcomes.items() if outcome is None}
        if missing:
            adapted = adapt_batched(missing, task.support_x, task.support_y, task.ways, dict.fromkeys(missing, settings))
            with self._lock:
                self.adaptations += len(adapted)
            for name, outcome in adapted.items():
                self.put(self.key(name, missing[name], fingerprint, settings), missing[name], outcome)
                outcomes[name] = outcome
        return {name: outcome for name, outcome in outcomes.items() if outcome is not None}

    def adaptation_jobs(self, learners: Mapping[str, Learner], task: PreparedTask, fingerprint: str,
                        settings: AdaptSettings) -> list[tuple[list[str], Callable[[], dict[str, AdaptOutcome]]]]:
        """Jobs that adapt ``learners`` and keep the outcomes, for a caller that runs them itself (the
        app's shared queue): learners that can share a batched inner loop (``engine.batched``) share one
        job (:meth:`get_or_adapt_all`), every other learner has its own (:meth:`get_or_adapt`). Each job
        returns its learners' outcomes by name; the costliest job comes first, so that quick ones fill
        the tail on other workers."""
        jobs: list[tuple[list[str], Callable[[], dict[str, AdaptOutcome]]]] = []
        groups = job_groups(learners, task.ways, dict.fromkeys(learners, settings))
        for names, _ in sorted(groups, key=lambda group: -group[1]):
            if len(names) > 1:
                jobs.append((names, functools.partial(self.get_or_adapt_all, {name: learners[name] for name in names},
                                                      task, fingerprint, settings)))
            else:
                jobs.append((names, functools.partial(self._get_or_adapt_named, names[0], learners[names[0]], task,
                                                      fingerprint, settings)))
        return jobs

    def _get_or_adapt_named(self, name: str, learner: Learner, task: PreparedTask, fingerprint: str,
                            settings: AdaptSettings) -> dict[str, AdaptOutcome]:
        return {name: self.get_or_adapt(name, learner, task, fingerprint, settings)}

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def compare(learners: Mapping[str, Learner], support_images: ImageBatch,
            support_labels: Tensor | np.ndarray | Sequence[int], ways: int, query_images: ImageBatch | None = None,
            settings: AdaptSettings | Mapping[str, AdaptSettings] | None = None,
            query_labels: Tensor | np.ndarray | Sequence[int] | None = None,
            workers: int = 1) -> list[AlgorithmResult]:
    """Adapt every learner to the same support set and predict the same queries.

    ``support_images``: ``[N*K, 28, 28]`` or ``[N*K, 1, 28, 28]`` floats in [0, 1], ink high;
    ``support_labels``: ``[N*K]`` in 0..ways-1 (classes may have different numbers of examples, but
    each needs at least one). ``query_labels`` (optional) holds each query's class, or -1 for an
    unlabelled query; with labels each result carries its query accuracy. ``settings`` is one
    :class:`AdaptSettings` for all or a mapping name -> settings. Results come back in the order of
    ``learners``. Raises :class:`TaskInputError` only for problems with the task itself.

    ``workers > 1`` adapts that many learners at once, in threads (PyTorch releases the GIL inside
    its kernels). With one PyTorch thread each, this spreads the comparison over free cores with
    no synchronisation between them, unlike PyTorch's own intra-op threads, whose barriers collapse
    when the cores are shared. Each result's times are then wall times while sharing the machine.
    Learners adapted in one batched loop (:func:`adapt_batched`) are one job; each one's adapt time
    is its share of the batch's.
    """
    task = prepare_task(support_images, support_labels, ways, query_images, query_labels)
    jobs, cost = _adaptation_jobs(learners, task, settings)

    def predicted(job: Callable[[], dict[str, AdaptOutcome]]) -> dict[str, AlgorithmResult]:
        return {name: predict_one(outcome, task.query_x, task.query_y) for name, outcome in job().items()}

    results: dict[str, AlgorithmResult] = {}
    for part in _in_threads({key: functools.partial(predicted, job) for key, job in jobs.items()}, workers,
                            cost).values():
        results.update(part)
    return [results[name] for name in learners]


def compare_task(learners: Mapping[str, Learner], task: "Task",
                 settings: AdaptSettings | Mapping[str, AdaptSettings] | None = None,
                 workers: int = 1) -> list[AlgorithmResult]:
    """:func:`compare` on an engine :class:`~engine.data.tasks.Task` (labelled queries)."""
    return compare(learners, task.support_x, task.support_y, task.ways, task.query_x, settings, task.query_y,
                   workers)


def warm_up(learner: Learner) -> None:
    """One tiny adaptation and prediction, so the first real request does not pay PyTorch's one-off
    start-up costs (allocator, autograd and thread-pool initialisation)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 28, generator=generator)
    labels = torch.tensor([0, 0, 1, 1])
    run_one("warm-up", learner, images, labels, 2, images[:1], AdaptSettings(steps=2))


def ranked(results: Sequence[AlgorithmResult]) -> list[AlgorithmResult]:
    """Best first: highest query accuracy, then lowest final support loss, then fastest; failures last."""

    def key(result: AlgorithmResult) -> tuple[int, float, float, float]:
        accuracy = result.query_accuracy if result.query_accuracy is not None else -1.0
        loss = result.final_loss if result.final_loss is not None and math.isfinite(result.final_loss) else math.inf
        return (0 if result.ok else 1, -accuracy, loss, result.total_ms)

    return sorted(results, key=key)


__all__ = [
    "AdaptOutcome", "AdaptedCache", "AlgorithmResult", "PreparedTask", "QueryScore", "TaskInputError", "adapt_all",
    "adapt_batched", "adapt_one",
    "as_images", "compare", "compare_task", "effective_settings", "predict_all", "predict_one", "prepare_task",
    "ranked", "rescored", "run_one", "score_queries", "settings_key", "support_fingerprint", "validate_support",
    "warm_up",
]
