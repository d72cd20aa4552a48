"""Several gradient learners adapted to one support set in one batched inner loop.

Comparing algorithms runs, on the same support images, inner loops that are the same computation on
different weights: plain gradient descent from a zero head on the Conv-4 (MAML, first-order MAML,
Reptile; Meta-SGD with its per-weight rates; Meta-Curvature with its gradient transform). Stacked,
their networks run as one network whose convolutions are grouped (``groups`` = number of networks;
the first layer, whose one-channel input they share, one ordinary convolution with every network's
filters), whose batch norm has every network's channels side by side (per-channel statistics, so
the same ones) and whose heads are one batched matrix product. Each operator then runs once per
step for all of them, instead of once per learner: the per-call costs and the Python of the inner
loop are paid once. The first step from the zero heads moves only the heads (through a zero head the
backbones' gradient is exactly zero), so the pass after it reuses the backbones' pass, checked
bitwise: a one-step adaptation (Meta-SGD's, Meta-Curvature's) runs the backbones once.

Only what gives the same result as ``GradientLearner.adapt`` joins a batch (:func:`batch_plan`):
the learner's own ``adapt`` and inner problem, plain ``sgd``, the zero head, no augmentation, no
frozen entries (pretrain's linear probe has its own cheaper path), the fused kernels on. A network
whose support loss rises or stops being finite at any step (where ``adapt``'s undo guard, or its
divergence handling, would act) leaves the batch: its learner adapts again on its own
(:func:`adapt_together` returns None for it). Results match the per-learner path to float
rounding (``tests/test_batched.py``); the trace's times are each network's share of the batch's.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine import kernels
from engine.learners.base import AdaptSettings, Adapted, Learner, StepRecord, Stopwatch
from engine.learners.gradient import GradientLearner, GradientTransform, finished_adaptation, frozen_entries
from engine.nets import BN_EPS, BackboneConfig, Params


# Whether comparisons in the current context (thread) batch inner loops: see ``batching``.
_BATCHING: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_batched_loops", default=True)


@contextlib.contextmanager
def batching(on: bool) -> Iterator[None]:
    """Switch batched inner loops on or off for the code inside, in this thread's context only
    (the benchmark times the per-learner path with it off)."""
    token = _BATCHING.set(on)
    try:
        yield
    finally:
        _BATCHING.reset(token)


@dataclass(frozen=True)
class BatchPlan:
    """What one learner's adaptation runs, when it can join a batched inner loop."""

    learner: GradientLearner
    steps: int
    step_sizes: float | Params
    transform: GradientTransform | None
    start: Params  # the meta-parameters' network values plus the zero head

    def key(self) -> tuple[object, ...]:
        """Plans with equal keys can share one batched loop."""
        reference = self.start["conv0.weight"]
        return (self.learner.backbone, self.steps, reference.dtype, reference.device, self.start["head.weight"].shape)


def batch_plan(learner: Learner, ways: int, settings: AdaptSettings | None) -> BatchPlan | None:
    """The learner's batched-loop plan, or None when it must adapt on its own (anything in its
    adaptation that the batched loop does not do exactly as ``GradientLearner.adapt``)."""
    if not isinstance(learner, GradientLearner) or not kernels.enabled() or not _BATCHING.get():
        return None
    # Its own adapt and inner problem (not iMAML's proximal one), also on the instance (a wrapper).
    if (getattr(learner.adapt, "__func__", None) is not GradientLearner.adapt
            or getattr(learner.inner_problem, "__func__", None) is not GradientLearner.inner_problem):
        return None
    resolved = learner.resolve_settings(settings)
    if (resolved.optimizer != "sgd" or resolved.head_init != "zero" or resolved.support_augment
            or resolved.steps is None or resolved.step_sizes is None):
        return None
    transform = learner.gradient_transform(learner.detached_params())
    if frozen_entries(resolved.step_sizes, resolved.optimizer, transform):
        return None  # pretrain's linear probe: its own path embeds the support set once
    start = {name: value.detach() for name, value in learner.detached_start(ways).items()}
    if not kernels.applies(start, learner.backbone):
        return None
    return BatchPlan(learner, resolved.steps, resolved.step_sizes, transform, start)


def batchable_groups(plans: Mapping[str, BatchPlan | None]) -> list[list[str]]:
    """Names whose plans share a key, in groups of two or more (a lone network gains nothing)."""
    groups: dict[tuple[object, ...], list[str]] = {}
    for name, plan in plans.items():
        if plan is not None:
            groups.setdefault(plan.key(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


# -- the stacked network -----------------------------------------------------------------------------

def _is_head(name: str) -> bool:
    return name.startswith("head.")


def stack(networks: Sequence[Params]) -> Params:
    """One network's entries per name: convolution filters and batch-norm channels concatenated
    (network g's are block g), heads stacked along a new first dimension."""
    return {name: torch.stack([net[name] for net in networks]) if _is_head(name)
            else torch.cat([net[name] for net in networks]) for name in networks[0]}


def unstack(stacked: Params, count: int) -> list[Params]:
    """The inverse of :func:`stack` (views)."""
    parts = {name: value.unbind(0) if _is_head(name) else value.chunk(count) for name, value in stacked.items()}
    return [{name: parts[name][g] for name in stacked} for g in range(count)]


@dataclass
class _Layer:
    conv_input: Tensor
    conv_weight: Tensor
    conv_output: Tensor
    activation: Tensor
    mean: Tensor
    invstd: Tensor
    pool_indices: Tensor | None
    output_shape: torch.Size
    patches: Tensor | None


@dataclass
class StackedPass:
    """Every network's support loss [G], logits [G, n, ways] and per-layer statistics ([G*C] each)."""

    losses: Tensor
    logits: Tensor
    features: Tensor  # [G, n, C]
    layers: list[_Layer]


def _forward(params: Params, x: Tensor, labels: Tensor, backbone: BackboneConfig, count: int) -> StackedPass:
    """``kernels._forward`` on the stacked network: each network's support statistics and logits."""
    layout = kernels.layout_for(x)
    stride = backbone.conv_stride
    layers: list[_Layer] = []
    h = x
    for layer in range(backbone.layers):
        weight = params[f"conv{layer}.weight"]
        if layer == 0:  # the shared one-channel input: one ordinary convolution with every network's filters
            conv_output, weight, patches = kernels._conv_in_layout(h, weight, 0, layout, backbone)
        else:
            weight = weight.contiguous(memory_format=layout)
            conv_output = F.conv2d(h, weight, None, stride, 1, 1, count).contiguous(memory_format=layout)
            patches = None
        normalised, mean, invstd = torch.native_batch_norm(
            conv_output, params[f"bn{layer}.weight"], params[f"bn{layer}.bias"], None, None, True, 0.0, BN_EPS)
        activation = normalised.clamp_min_(0.0)
        indices = None
        if backbone.downsample == "maxpool":
            pooled, indices = F.max_pool2d_with_indices(activation, 2)
        else:
            pooled = activation
        layers.append(_Layer(h, weight, conv_output, activation, mean, invstd, indices, pooled.shape, patches))
        h = pooled
    images = x.shape[0]
    features = h.mean(dim=(2, 3)).view(images, count, -1).transpose(0, 1)
    return _with_heads(params, features, layers, labels)


def _with_heads(params: Params, features: Tensor, layers: list[_Layer], labels: Tensor) -> StackedPass:
    """The pass of the heads in ``params`` on the backbones' ``features`` (and their ``layers``)."""
    count = features.shape[0]
    logits = torch.baddbmm(params["head.bias"].unsqueeze(1), features, params["head.weight"].transpose(1, 2))
    ways = logits.shape[2]
    losses = F.cross_entropy(logits.reshape(-1, ways), labels.repeat(count), reduction="none").view(count, -1).mean(1)
    return StackedPass(losses, logits, features, layers)


def _same_backbones(fast: Params, before: Params) -> bool:
    """Whether every backbone entry is bitwise what it was (the heads may differ)."""
    return all(torch.equal(value, before[name]) for name, value in fast.items() if not _is_head(name))


def _backward(params: Params, labels: Tensor, backbone: BackboneConfig, count: int, forward: StackedPass) -> Params:
    """``kernels._backward`` on the stacked network: every network's gradient of its own mean
    support cross-entropy (the networks do not interact, so this is each one's own gradient)."""
    logits, features, layers = forward.logits, forward.features, forward.layers
    images = logits.shape[1]
    grad_logits = torch.softmax(logits, dim=2)
    grad_logits[:, torch.arange(images, device=labels.device), labels] -= 1.0
    grad_logits.div_(images)
    grads: Params = {"head.weight": torch.bmm(grad_logits.transpose(1, 2), features),
                     "head.bias": grad_logits.sum(dim=1)}
    grad_features = torch.bmm(grad_logits, params["head.weight"])  # [G, n, C]
    if grad_features.device.type == "cpu" and not grad_features.any():
        # Every head zero (step 0): nothing reaches the backbones, whose gradients are exactly zero.
        grads.update({name: torch.zeros_like(value) for name, value in params.items() if name not in grads})
        return {name: grads[name] for name in params}
    shape = layers[-1].output_shape
    layout = kernels.layout_for(layers[0].conv_input)
    flat = grad_features.transpose(0, 1).reshape(images, -1)
    grad_h = (flat / (shape[2] * shape[3]))[:, :, None, None].expand(shape)
    if layout != torch.contiguous_format:
        grad_h = grad_h.contiguous(memory_format=layout)
    stride = [backbone.conv_stride] * 2
    for layer in reversed(range(backbone.layers)):
        saved = layers[layer]
        if saved.pool_indices is not None:
            grad_h = torch.ops.aten.max_pool2d_with_indices_backward(
                grad_h.contiguous(), saved.activation, [2, 2], [2, 2], [0, 0], [1, 1], False, saved.pool_indices)
        grad_normalised = torch.ops.aten.threshold_backward(grad_h, saved.activation, 0.0)
        grad_conv, grads[f"bn{layer}.weight"], grads[f"bn{layer}.bias"] = torch.ops.aten.native_batch_norm_backward(
            grad_normalised, saved.conv_output, params[f"bn{layer}.weight"], None, None, saved.mean, saved.invstd,
            True, BN_EPS, [True, True, True])
        if saved.patches is not None:
            grads["conv0.weight"] = kernels._first_conv_weight_grad(grad_conv, saved.patches)
            continue
        if layer == 0:
            grad_conv = grad_conv.contiguous()
        grad_h, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_conv, saved.conv_input, saved.conv_weight, None, stride, [1, 1], [1, 1], False, [0, 0],
            1 if layer == 0 else count, [layer > 0, True, False])
        grads[f"conv{layer}.weight"] = grad_weight.contiguous()
    return {name: grads[name] for name in params}


def _stacked_rates(plans: Sequence[BatchPlan], stacked: Params) -> float | Params:
    """The step sizes of the stacked network: one float when every network has the same one, else
    one tensor per entry (network g's rates in block g, a learned per-weight rate as it is)."""
    sizes = [plan.step_sizes for plan in plans]
    first = sizes[0]
    if not isinstance(first, dict) and all(not isinstance(size, dict) and size == first for size in sizes):
        return float(first)
    networks = [plan.start for plan in plans]

    def rate(size: float | Params, name: str) -> Tensor:
        like = networks[0][name]
        value = size[name] if isinstance(size, dict) else torch.tensor(size, dtype=like.dtype, device=like.device)
        return value.to(like.dtype).expand(like.shape)

    return stack([{name: rate(size, name) for name in networks[0]} for size in sizes])


def _transformed(grads: Params, plans: Sequence[BatchPlan]) -> Params:
    """Each network's gradient through its learner's transform (Meta-Curvature), restacked."""
    if all(plan.transform is None for plan in plans):
        return grads
    parts = unstack(grads, len(plans))
    return stack([part if plan.transform is None else plan.transform(part) for part, plan in zip(parts, plans)])


def _sgd_step(fast: Params, grads: Params, rates: float | Params) -> Params:
    """``engine.optim.SGD.step`` on the stacked weights (the same kernels, so the same rounding)."""
    names = list(fast)
    if isinstance(rates, float):
        updated = torch._foreach_add([fast[name] for name in names], [grads[name] for name in names], alpha=-rates)
    else:
        steps = torch._foreach_mul([rates[name] for name in names], [grads[name] for name in names])
        updated = torch._foreach_sub([fast[name] for name in names], steps)
    return dict(zip(names, updated))


def adapt_together(plans: Sequence[BatchPlan], support_x: Tensor, support_y: Tensor, ways: int) -> list[Adapted | None]:
    """Each plan's :class:`Adapted`, as its learner's ``adapt`` gives it, from one batched inner
    loop; None for a network whose support loss rose or stopped being finite (its learner's own
    ``adapt`` must run: the undo guard or the divergence handling acts there)."""
    count = len(plans)
    backbone = plans[0].learner.backbone
    watch = Stopwatch(support_x.device)
    traces: list[list[StepRecord]] = [[] for _ in plans]
    left = [False] * count  # left the batch
    kept_losses = [math.inf] * count
    steps = plans[0].steps
    with torch.no_grad():
        fast = stack([plan.start for plan in plans])
        rates = _stacked_rates(plans, fast)
        forward: StackedPass | None = None
        before: Params = {}
        for step in range(steps + 1):
            if forward is not None and _same_backbones(fast, before):
                # The step from the zero heads moves only the heads (the backbones' gradient through a
                # zero head is exactly zero): the backbones' pass is the same, bitwise, so it is reused.
                forward = _with_heads(fast, forward.features, forward.layers, support_y)
            else:
                forward = _forward(fast, support_x, support_y, backbone, count)
            before = fast
            losses = forward.losses.tolist()
            correct = (forward.logits.argmax(dim=2) == support_y).float().mean(dim=1).tolist()
            share = watch.ms() / count
            for g, loss in enumerate(losses):
                if not math.isfinite(loss) or loss > kept_losses[g]:
                    left[g] = True
                kept_losses[g] = loss
                traces[g].append(StepRecord(step, loss, correct[g], share))
            if all(left) or step == steps:
                break
            grads = _transformed(_backward(fast, support_y, backbone, count, forward), plans)
            fast = _sgd_step(fast, grads, rates)
    assert forward is not None  # steps + 1 >= 1 passes
    networks = unstack(fast, count)
    statistics = [(layer.mean.chunk(count), layer.invstd.chunk(count)) for layer in forward.layers]
    adapted: list[Adapted | None] = []
    elapsed = watch.ms() / count
    for g, plan in enumerate(plans):
        if left[g]:
            adapted.append(None)
            continue
        stats = [(mean[g], invstd[g]) for mean, invstd in statistics]
        last = kernels.SupportPass(forward.losses[g], forward.logits[g], None, stats)
        adapted.append(finished_adaptation(networks[g], last, traces[g], ways, support_x, backbone, elapsed, []))
    return adapted


__all__ = ["BatchPlan", "adapt_together", "batch_plan", "batchable_groups", "batching", "stack", "unstack"]
