"""Looking inside an adaptation: what the app's "Inside the adaptation" views show, computed here.

* :func:`inspect_learner` adapts a learner to a support set again, as ``engine.compare`` did, and keeps
  what the comparison throws away: the fast weights after every inner step (so the queries' class
  probabilities at each step) and a differentiable model of the adapted network.
* :meth:`InspectedModel.embeddings` gives the support and query embeddings and the class prototypes
  before and after adaptation; :func:`pca_projection` projects them to 2-D (fitted per task).
* :func:`saliency` (gradient of the predicted class's score with respect to the input) and
  :func:`occlusion` (how much erasing each patch lowers that class's probability) show where the
  network looks.

The per-step weights are recorded without touching the learners' inner loops: the inner loop asks
``learner.inner_problem`` for the problem it solves, so adaptation here runs on a shallow copy of the
learner whose problem logs every point it evaluates; the points the loop itself used are the ones
whose loss the trace recorded. Should that ever fail to line up (a future inner loop evaluating
differently), :func:`inspect_learner` falls back to re-running adaptation with 0, 1, ..., K steps
(learners are deterministic), which costs about K/2 adaptations more.

Pure PyTorch/NumPy; nothing here is run unless a view asks.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine import kernels
from engine.learners import AdaptSettings, Adapted, Learner, StepRecord
from engine.learners import blackbox as blackbox_module
from engine.learners.blackbox import BlackBox
from engine.learners.gradient import META_PREFIX, GradientLearner
from engine.learners.protonet import ProtoNet, prototype_logits, prototypes
from engine.nets import Params, backbone_only, classify, embed
from engine.optim import InnerProblem

OCCLUSION_PATCH = 6
"""Side (pixels) of the square erased by :func:`occlusion`: about a stroke's width and a bend."""
OCCLUSION_STRIDE = 2
"""Step between occluded patches: 12x12 positions on a 28x28 input, one batch."""


@dataclass(frozen=True)
class Embeddings:
    """Support and query embeddings and the class prototypes, before and after adaptation.

    Rows of ``support_*`` follow the support set, of ``query_*`` the queries, of ``prototypes_*`` the
    classes. ``changes`` is False when adaptation leaves the embedding as it is (ProtoNet, or
    pretrain fine-tuning its head alone): then "before" and "after" are the same points.
    """

    support_before: np.ndarray
    support_after: np.ndarray
    query_before: np.ndarray
    query_after: np.ndarray
    prototypes_before: np.ndarray
    prototypes_after: np.ndarray
    # What the two embeddings are, in words (e.g. "Conv-4 features" / "Transformer outputs").
    before_label: str
    after_label: str
    changes: bool


class InspectedModel:
    """The adapted network as functions of the query images, differentiable with respect to them.

    ``logits_fn`` maps images ``[Q,1,28,28]`` to logits ``[Q, ways]`` exactly as the adapted model's
    ``predict_logits`` (batch norm with the support set's statistics, so queries are independent);
    ``embeddings_fn`` computes the :class:`Embeddings` of the task (None: not available for this
    learner, e.g. a learner this module does not know the internals of).
    """

    def __init__(self, logits_fn: Callable[[Tensor], Tensor],
                 embeddings_fn: Callable[[Tensor], Embeddings] | None, device: torch.device) -> None:
        self._logits = logits_fn
        self._embeddings = embeddings_fn
        self.device = device

    def logits(self, query_x: Tensor) -> Tensor:
        return self._logits(query_x.to(self.device))

    @property
    def has_embeddings(self) -> bool:
        return self._embeddings is not None

    def embeddings(self, query_x: Tensor) -> Embeddings:
        if self._embeddings is None:
            raise ValueError("this learner's embeddings are not available")
        return self._embeddings(query_x.to(self.device))


@dataclass
class Inspection:
    """One algorithm's adaptation to one task, step by step."""

    name: str
    # Support loss and accuracy per inner step (step 0 = before any update), as the run's trace.
    trace: list[StepRecord]
    # Per step of ``trace``: the queries' class probabilities [Q, ways] with the weights of that step.
    step_probabilities: list[np.ndarray]
    model: InspectedModel | None
    has_inner_loop: bool
    # How the per-step weights were had: "recorded" (one adaptation), "re-run" (K+1 adaptations),
    # "single step" (no inner loop).
    method: str
    inspect_ms: float
    warning: str | None = None

    @property
    def steps(self) -> int:
        """The last step of the trace (0 for learners without an inner loop)."""
        return self.trace[-1].step if self.trace else 0


# --------------------------------------------------------------------------- recording the inner loop


@dataclass(frozen=True)
class LoggedPoint:
    """One evaluation of the inner problem: the fast weights, the loss there, and the support set's
    batch-norm statistics at them when the fused kernels computed them (else None)."""

    params: Params
    loss: float
    stats: list[kernels.LayerStats] | None


def recording_learner(learner: GradientLearner) -> tuple[GradientLearner, list[LoggedPoint]]:
    """A shallow copy of ``learner`` (sharing its read-only meta-parameters) whose inner problem logs
    every point it evaluates, in order, into the returned list."""
    log: list[LoggedPoint] = []
    original = learner.inner_problem

    def inner_problem(support_x: Tensor, support_y: Tensor, start: Params, create_graph: bool = False) -> InnerProblem:
        problem = original(support_x, support_y, start, create_graph)
        base = type(problem)

        def evaluate(self: InnerProblem, params: Params, *args: object, **kwargs: object) -> object:
            result = base.evaluate(self, params, *args, **kwargs)
            log.append(LoggedPoint({name: value.detach() for name, value in params.items()},
                                   float(result.loss.item()), result.stats))
            return result

        # A subclass, not a wrapper: optimizers look at the problem's class (``type(problem).objective``).
        recording = copy.copy(problem)
        object.__setattr__(recording, "__class__", type(f"Recording{base.__name__}", (base,), {"evaluate": evaluate}))
        return recording

    recorder = copy.copy(learner)
    recorder.inner_problem = inner_problem  # type: ignore[method-assign]  # this copy only
    return recorder, log


def steps_from_log(trace: Sequence[StepRecord], log: Sequence[LoggedPoint]) -> list[LoggedPoint] | None:
    """The fast weights of each trace step: in evaluation order, the next logged point whose loss is
    the one the trace recorded (optimizers also evaluate trial points, e.g. a line search's). None
    when some step has no such point."""
    found: list[LoggedPoint] = []
    position = 0
    for record in trace:
        while position < len(log) and log[position].loss != record.loss:
            position += 1
        if position == len(log):
            return None
        found.append(log[position])
        position += 1
    return found


def gradient_logits(learner: GradientLearner, params: Params, support_x: Tensor) -> Callable[[Tensor], Tensor]:
    """Query logits at fast weights ``params`` as ``GradientLearner.adapt``'s predictions compute them."""
    count = support_x.shape[0]

    def logits(query_x: Tensor) -> Tensor:
        return classify(params, torch.cat([support_x, query_x]), learner.backbone, stats_count=count)[count:]

    return logits


def class_means(rows: Tensor, labels: Tensor, ways: int) -> Tensor:
    return prototypes(rows, labels, ways)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


def gradient_embeddings(learner: GradientLearner, final: Params, support_x: Tensor, support_y: Tensor,
                        ways: int) -> Callable[[Tensor], Embeddings]:
    """Embeddings of the backbone at the meta-parameters (before) and at the adapted weights (after)."""
    count = support_x.shape[0]
    start = {k: v for k, v in backbone_only(learner.detached_params()).items() if not k.startswith(META_PREFIX)}
    adapted = backbone_only(final)
    changes = any(not torch.equal(start[name], adapted[name]) for name in start if name in adapted)

    def compute(query_x: Tensor) -> Embeddings:
        with torch.no_grad():
            both = torch.cat([support_x, query_x])
            before = embed(start, both, learner.backbone, stats_count=count)
            after = embed(adapted, both, learner.backbone, stats_count=count) if changes else before
        return Embeddings(
            support_before=_numpy(before[:count]), support_after=_numpy(after[:count]),
            query_before=_numpy(before[count:]), query_after=_numpy(after[count:]),
            prototypes_before=_numpy(class_means(before[:count], support_y, ways)),
            prototypes_after=_numpy(class_means(after[:count], support_y, ways)),
            before_label="backbone at the meta-learned weights", after_label="backbone after the inner steps",
            changes=changes)

    return compute


def protonet_model(learner: ProtoNet, support_x: Tensor, support_y: Tensor, ways: int) -> InspectedModel:
    params, backbone, count = learner.detached_params(), learner.backbone, support_x.shape[0]
    with torch.no_grad():
        protos = prototypes(embed(params, support_x, backbone), support_y, ways)

    def logits(query_x: Tensor) -> Tensor:
        features = embed(params, torch.cat([support_x, query_x]), backbone, stats_count=count)
        return prototype_logits(features[count:], protos)

    def embeddings(query_x: Tensor) -> Embeddings:
        with torch.no_grad():
            features = embed(params, torch.cat([support_x, query_x]), backbone, stats_count=count)
        support, query, centres = _numpy(features[:count]), _numpy(features[count:]), _numpy(protos)
        return Embeddings(support, support, query, query, centres, centres, "embedding", "embedding", changes=False)

    return InspectedModel(logits, embeddings, learner.device)


def blackbox_outputs(params: Params, query_features: Tensor, memory: blackbox_module.Memory) -> Tensor:
    """The output vectors that ``blackbox.answer`` scores against the class vectors (its steps up to
    the distance; ``tests/test_views.py`` checks the two agree)."""
    prefix = blackbox_module.PREFIX
    tokens = blackbox_module.linear(params, prefix + "in.", query_features) + params[prefix + "unknown"]
    for block, (keys, values) in enumerate(memory):
        block_prefix = f"{prefix}block{block}."
        normed = blackbox_module.layer_norm(params, block_prefix + "norm1.", tokens)
        tokens = tokens + blackbox_module.attend(params, block_prefix, normed, keys, values)
        tokens = tokens + blackbox_module.mlp(params, block_prefix, tokens)
    return blackbox_module.output_vectors(params, tokens)


def blackbox_model(learner: BlackBox, support_x: Tensor, support_y: Tensor, ways: int) -> InspectedModel:
    params, backbone = learner.detached_params(), learner.backbone
    slots = learner.slot_tensor(blackbox_module.default_slots(ways))
    with torch.no_grad():
        support_features = embed(params, support_x, backbone)
        memory, classes = blackbox_module.read_support(params, support_features, support_y, ways, slots,
                                                       learner.config)

    def logits(query_x: Tensor) -> Tensor:
        _, query_features = blackbox_module.features(params, support_x, query_x, backbone)
        return blackbox_module.answer(params, query_features, memory, classes)

    def embeddings(query_x: Tensor) -> Embeddings:
        with torch.no_grad():
            support_f, query_f = blackbox_module.features(params, support_x, query_x, backbone)
            # The support images read as queries (as adapt's trace classifies them).
            support_out = blackbox_outputs(params, support_f, memory)
            query_out = blackbox_outputs(params, query_f, memory)
        return Embeddings(
            support_before=_numpy(support_f), support_after=_numpy(support_out),
            query_before=_numpy(query_f), query_after=_numpy(query_out),
            prototypes_before=_numpy(class_means(support_f, support_y, ways)), prototypes_after=_numpy(classes),
            before_label="Conv-4 features", after_label="Transformer outputs (having read the support set)",
            changes=True)

    return InspectedModel(logits, embeddings, learner.device)


def step_probabilities(learner: GradientLearner, point: LoggedPoint, support_x: Tensor,
                       query_x: Tensor) -> np.ndarray:
    """The queries' class probabilities at one step's weights: with the support statistics the
    fused kernels kept at that step (as ``GradientLearner.adapt``'s predictions do), else by
    normalising the queries with the support set's statistics in one pass."""
    if not query_x.shape[0]:
        return np.zeros((0, point.params["head.weight"].shape[0]), np.float32)
    if point.stats is not None:
        with torch.no_grad():
            logits = kernels.logits_with_stats(point.params, query_x, learner.backbone, point.stats)
        return _numpy(torch.softmax(logits, dim=-1))
    return probabilities_of(gradient_logits(learner, point.params, support_x), query_x)


def probabilities_of(logits_fn: Callable[[Tensor], Tensor], query_x: Tensor) -> np.ndarray:
    with torch.no_grad():
        return _numpy(torch.softmax(logits_fn(query_x), dim=-1))


def inspect_learner(name: str, learner: Learner, support_x: Tensor, support_y: Tensor, ways: int,
                    query_x: Tensor, settings: AdaptSettings | None = None) -> Inspection:
    """Adapt ``learner`` to the support set as ``engine.compare.run_one`` does, keeping each step.

    Images ``[n,1,28,28]`` (see ``engine.compare.as_images``), labels ``[n]`` in 0..ways-1.
    """
    settings = settings or AdaptSettings()
    started = time.perf_counter()
    device = learner.device
    sx, sy, qx = support_x.to(device), support_y.to(device), query_x.to(device)
    if isinstance(learner, GradientLearner):
        recorder, log = recording_learner(learner)
        adapted = recorder.adapt(sx, sy, ways, settings)
        per_step = steps_from_log(adapted.trace, log)
        if per_step is not None:
            final = per_step[-1].params
            logits_fn = gradient_logits(learner, final, sx)
            model = InspectedModel(logits_fn, gradient_embeddings(learner, final, sx, sy, ways), device)
            probabilities = [step_probabilities(learner, point, sx, qx) for point in per_step]
            method = "recorded"
        else:
            probabilities = rerun_probabilities(learner, sx, sy, ways, qx, settings, adapted)
            model = InspectedModel(lambda q: adapted.predict_logits(q, False), None, device)
            method = "re-run"
        return Inspection(name, list(adapted.trace), probabilities, model, True, method,
                          (time.perf_counter() - started) * 1000.0, adapted.warning)
    model_for: dict[type[Learner], Callable[[Learner, Tensor, Tensor, int], InspectedModel]] = {
        ProtoNet: protonet_model, BlackBox: blackbox_model}  # type: ignore[dict-item]
    adapted = learner.adapt(sx, sy, ways, settings if learner.has_inner_loop else None)
    build = next((build for kind, build in model_for.items() if isinstance(learner, kind)), None)
    if build is not None:
        model = build(learner, sx, sy, ways)
    else:  # a learner this module does not know: its own predictions, no embeddings
        model = InspectedModel(lambda q: adapted.predict_logits(q, False), None, device)
    probabilities = [probabilities_of(model.logits, qx)]
    return Inspection(name, list(adapted.trace)[-1:], probabilities, model, bool(learner.has_inner_loop),
                      "single step", (time.perf_counter() - started) * 1000.0, adapted.warning)


def rerun_probabilities(learner: Learner, support_x: Tensor, support_y: Tensor, ways: int, query_x: Tensor,
                        settings: AdaptSettings, adapted: Adapted) -> list[np.ndarray]:
    """Each step's query probabilities by adapting again with 0, 1, ..., K steps (the fallback)."""
    probabilities = []
    for record in adapted.trace:
        again = learner.adapt(support_x, support_y, ways, dataclasses.replace(settings, steps=record.step))
        probabilities.append(_numpy(again.predict_proba(query_x)))
    return probabilities


def inspect_all(learners: Mapping[str, Learner], support_x: Tensor, support_y: Tensor, ways: int, query_x: Tensor,
                settings: AdaptSettings | Mapping[str, AdaptSettings] | None = None,
                workers: int = 1) -> dict[str, Inspection | str]:
    """:func:`inspect_learner` for every learner (that many at once with ``workers``, as
    ``engine.compare.compare`` runs them); a learner's failure becomes its message instead."""

    def run(name: str, learner: Learner) -> Inspection | str:
        own = settings.get(name, AdaptSettings()) if isinstance(settings, Mapping) else settings
        try:
            return inspect_learner(name, learner, support_x, support_y, ways, query_x, own)
        except Exception as error:  # noqa: BLE001 - one algorithm's failure must not stop the others
            return f"{type(error).__name__}: {error}"

    if workers <= 1 or len(learners) < 2:
        return {name: run(name, learner) for name, learner in learners.items()}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(contextvars.copy_context().run, run, name, learner)
                   for name, learner in learners.items()}
        return {name: futures[name].result() for name in learners}


# --------------------------------------------------------------------------- projections and attributions


@dataclass(frozen=True)
class Projection:
    """A 2-D PCA of a set of embeddings: ``mean`` [D], ``components`` [2, D], and the share of the
    variance each component explains."""

    mean: np.ndarray
    components: np.ndarray
    explained: np.ndarray

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) - self.mean) @ self.components.T


def pca_projection(rows: np.ndarray, dimensions: int = 2) -> Projection:
    """PCA fitted on ``rows`` [n, D] (by SVD). Each component's sign is fixed so that its largest
    coefficient is positive, so the same embeddings always give the same picture. Fewer rows or
    dimensions than asked for give zero components beyond those the data has."""
    data = np.asarray(rows, dtype=np.float64)
    mean = data.mean(axis=0)
    centred = data - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    components = np.zeros((dimensions, data.shape[1]))
    kept = min(dimensions, vt.shape[0])
    components[:kept] = vt[:kept]
    for row in components:
        biggest = np.argmax(np.abs(row))
        if row[biggest] < 0:
            row *= -1
    variance = singular ** 2
    total = variance.sum()
    explained = np.zeros(dimensions)
    if total > 0:
        explained[:kept] = variance[:kept] / total
    return Projection(mean=mean, components=components, explained=explained)


def embedding_projections(embeddings: Embeddings) -> tuple[Projection, Projection]:
    """The planes of the "before" and "after" panels: one PCA for both (fitted on the support and
    query points of both) when the two embeddings live in the same space, so movement between the
    panels is movement in one plane; one PCA each when they do not (e.g. blackbox's Conv-4
    features and Transformer outputs differ in size)."""
    before = np.concatenate([embeddings.support_before, embeddings.query_before])
    after = np.concatenate([embeddings.support_after, embeddings.query_after])
    if before.shape[1] == after.shape[1]:
        shared = pca_projection(np.concatenate([before, after]))
        return shared, shared
    return pca_projection(before), pca_projection(after)


def target_class(model: InspectedModel, image: Tensor, target: int | None) -> tuple[int, Tensor]:
    with torch.no_grad():
        logits = model.logits(image)
    return (int(logits.argmax(dim=-1)[0]) if target is None else target), logits


def saliency(model: InspectedModel, image: Tensor, target: int | None = None) -> tuple[np.ndarray, int]:
    """The gradient of class ``target``'s logit (default: the predicted class) with respect to the
    28x28 input ``image`` [1,1,28,28] or [28,28], and that class. Positive: more ink there raises the score."""
    image = image.reshape(1, 1, 28, 28).to(model.device, torch.float32)
    target, _ = target_class(model, image, target)
    with torch.enable_grad():
        leaf = image.clone().requires_grad_(True)
        score = model.logits(leaf)[0, target]
        (gradient,) = torch.autograd.grad(score, leaf)
    return gradient.reshape(28, 28).to("cpu", torch.float32).numpy(), target


def occlusion(model: InspectedModel, image: Tensor, target: int | None = None, patch: int = OCCLUSION_PATCH,
              stride: int = OCCLUSION_STRIDE) -> tuple[np.ndarray, int]:
    """How much erasing each ``patch``-pixel square (setting it to background) lowers class
    ``target``'s probability (default: the predicted class), averaged per pixel over the patches
    that cover it: [28, 28], positive where the ink mattered. All occluded copies in one batch."""
    image = image.reshape(1, 1, 28, 28).to(model.device, torch.float32)
    target, _ = target_class(model, image, target)
    corners = [(row, col) for row in range(0, 28 - patch + 1, stride) for col in range(0, 28 - patch + 1, stride)]
    # The image itself first, in the same batch: its occluded copies are compared with the same arithmetic.
    batch = image.repeat(len(corners) + 1, 1, 1, 1)
    for index, (row, col) in enumerate(corners, start=1):
        batch[index, :, row:row + patch, col:col + patch] = 0.0
    with torch.no_grad():
        probabilities = torch.softmax(model.logits(batch), dim=-1)[:, target].to("cpu", torch.float64).numpy()
    drops = probabilities[0] - probabilities[1:]
    total, covered = np.zeros((28, 28)), np.zeros((28, 28))
    for drop, (row, col) in zip(drops, corners):
        total[row:row + patch, col:col + patch] += drop
        covered[row:row + patch, col:col + patch] += 1
    return (total / np.maximum(covered, 1)).astype(np.float32), target


__all__ = [
    "Embeddings", "InspectedModel", "Inspection", "Projection", "embedding_projections", "inspect_all",
    "inspect_learner", "occlusion", "pca_projection", "recording_learner", "saliency", "steps_from_log",
]
