"""The Conv-4 support loss and its gradient, derived by hand, for inner loops that need no graph.

Test-time adaptation (and the inner loops of first-order MAML, Reptile and iMAML) only need the
support loss's value and its gradient at each step, never a graph through the step, for which
autograd records ~60 nodes per step. Here the forward pass calls
PyTorch's fused kernels (convolution, native batch norm, ReLU in place) and the backward pass
calls their backward kernels directly (``convolution_backward``, ``native_batch_norm_backward``,
``threshold_backward``), in the order autograd would, without recording anything. The result is
the same function and the same gradient (``tests/test_performance_paths.py`` pins both against
autograd in float64), with less per-step overhead. The step-0 backbone backward is skipped
outright: through the zero head the backbone's gradient is exactly zero.

It also returns each layer's batch-norm statistics on the support set, so queries can be
predicted with the support set's statistics without running the support set through the network
again (:func:`logits_with_stats`).

``with fused(False):`` switches off every fast path (these kernels, and the closed-form first
inner step of the MAML family): tests and the benchmark compare against that autograd reference.
The switch is a context variable: it holds for the calling thread (and the worker threads
``engine.compare`` starts from it), never for another thread running at the same time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.nets import BN_EPS, BackboneConfig, Params, conv3x3

# Whether inner loops take the fused path in the current context (thread): see ``fused``.
_FUSED: contextvars.ContextVar[bool] = contextvars.ContextVar("engine_kernels_fused", default=True)

# Per layer: the support set's batch-norm mean and 1/sqrt(var + eps), each [channels].
LayerStats = tuple[Tensor, Tensor]

# Batches of at least this many images run layers 1-3 in channels-last layout, whose oneDNN
# convolutions are faster for these shapes. In an ad-hoc A/B of single support passes the two
# layouts were about equal at 5 images and channels-last 9-16% faster from 10 on; the benchmark's
# --no-channels-last measures the whole effect (docs/performance.md).
CHANNELS_LAST_MIN_IMAGES = 8


def layout_for(x: Tensor) -> torch.memory_format:
    """The memory layout the convolutions after the first run in for the batch ``x``."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] >= CHANNELS_LAST_MIN_IMAGES:
        return torch.channels_last
    return torch.contiguous_format


def enabled() -> bool:
    """Whether inner loops in the current context use the fused path (on by default)."""
    return _FUSED.get()


@contextlib.contextmanager
def fused(on: bool) -> Iterator[None]:
    """Switch the fused path on or off for the code inside (the reference is plain autograd), in
    this thread's context only: learners adapting in other threads meanwhile are not affected."""
    token = _FUSED.set(on)
    try:
        yield
    finally:
        _FUSED.reset(token)


def applies(params: Params, backbone: BackboneConfig, head: bool = True) -> bool:
    """Whether the fused path is on and ``params`` is exactly the Conv-4 (plus a linear head if
    ``head``): what these kernels implement. Anything else goes through autograd."""
    expected = {f"{kind}{layer}.{field}" for layer in range(backbone.layers)
                for kind, field in (("conv", "weight"), ("bn", "weight"), ("bn", "bias"))}
    if head:
        expected |= {"head.weight", "head.bias"}
    return enabled() and set(params) == expected


@dataclass
class _Layer:
    """What one layer's backward needs from its forward."""

    conv_input: Tensor
    conv_weight: Tensor  # in the layout the convolution ran in
    conv_output: Tensor
    activation: Tensor  # after ReLU, before any pooling
    mean: Tensor
    invstd: Tensor
    pool_indices: Tensor | None
    output_shape: torch.Size  # what the next layer (or the average pooling) receives
    # The first layer's im2col rows when it ran as a matrix product (:func:`_first_conv_channels_last`).
    patches: Tensor | None = None


@dataclass
class SupportPass:
    """The support loss at some fast weights, its logits, gradient (None if not asked) and the
    support set's batch-norm statistics per layer (None when autograd computed the rest)."""

    loss: Tensor
    logits: Tensor
    grads: Params | None
    stats: list[LayerStats] | None
    # Computes ``grads`` later from what the forward pass kept (set when evaluated without them).
    complete: Callable[[], Params] | None = None

    def gradient(self) -> Params:
        """``grads``, computed now if the pass was made without them (only once)."""
        if self.grads is None:
            if self.complete is None:
                raise ValueError("this evaluation was made without its gradient and cannot complete it")
            self.grads, self.complete = self.complete(), None
        return self.grads


def _conv(x: Tensor, weight: Tensor, backbone: BackboneConfig, bias: Tensor | None = None) -> Tensor:
    return conv3x3(x, weight, backbone.conv_stride, bias)


def _first_conv_patches(x: Tensor, stride: int) -> Tensor:
    """im2col of a one-channel batch for a 3x3 convolution with padding 1: one row of 9 pixels per
    output position, positions in (image, row, column) order, i.e. channels-last order."""
    return F.unfold(x, 3, padding=1, stride=stride).transpose(1, 2).reshape(-1, 9)


def _first_conv_weight_grad(grad_output: Tensor, patches: Tensor) -> Tensor:
    """The first layer's weight gradient as one matrix product of the channels-last output gradient
    (read as it lies, no copy) with the input's patches from the forward pass."""
    channels = grad_output.shape[1]
    flat_grad = grad_output.permute(0, 2, 3, 1).reshape(-1, channels)
    return (flat_grad.t() @ patches).view(channels, 1, 3, 3)


def _first_conv_channels_last(x: Tensor, weight: Tensor, stride: int, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """The first layer's 3x3 convolution (one input channel) as im2col and one matrix product whose
    result is already in channels-last order, so no copy into that layout follows (in an ad-hoc A/B
    35-50% faster than PyTorch's NCHW kernel plus the copy, at 5 to 75 images); and the patches,
    which the weight's gradient reuses."""
    images, _, height, width = x.shape
    out_height, out_width = (height - 1) // stride + 1, (width - 1) // stride + 1
    patches = _first_conv_patches(x, stride)
    flat_weight = weight.reshape(weight.shape[0], 9).t()
    out = patches @ flat_weight if bias is None else torch.addmm(bias, patches, flat_weight)
    return out.view(images, out_height, out_width, -1).permute(0, 3, 1, 2), patches


def _conv_in_layout(h: Tensor, weight: Tensor, layer: int, layout: torch.memory_format,
                    backbone: BackboneConfig, bias: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Layer ``layer``'s convolution with its output in ``layout``, the weight as it ran, and the
    im2col patches when the first layer (one input channel) ran by :func:`_first_conv_channels_last`
    (else it keeps PyTorch's own NCHW kernel)."""
    if layer:
        weight = weight.contiguous(memory_format=layout)
        return _conv(h, weight, backbone, bias).contiguous(memory_format=layout), weight, None
    if layout == torch.channels_last and h.shape[1] == 1:
        output, patches = _first_conv_channels_last(h, weight, backbone.conv_stride, bias)
        return output, weight, patches
    return _conv(h, weight, backbone, bias), weight, None


def _forward(params: Params, x: Tensor, backbone: BackboneConfig) -> tuple[Tensor, Tensor, list[_Layer]]:
    """Embeddings and logits with batch statistics of ``x`` itself, plus what backward needs."""
    layers: list[_Layer] = []
    layout = layout_for(x)
    h = x
    for layer in range(backbone.layers):
        conv_output, weight, patches = _conv_in_layout(h, params[f"conv{layer}.weight"], layer, layout, backbone)
        normalised, mean, invstd = torch.native_batch_norm(
            conv_output, params[f"bn{layer}.weight"], params[f"bn{layer}.bias"], None, None, True, 0.0, BN_EPS)
        activation = normalised.clamp_min_(0.0)  # ReLU in place: the normalised copy is not needed
        indices = None
        if backbone.downsample == "maxpool":
            pooled, indices = F.max_pool2d_with_indices(activation, 2)
        else:
            pooled = activation
        layers.append(_Layer(h, weight, conv_output, activation, mean, invstd, indices, pooled.shape, patches))
        h = pooled
    features = h.mean(dim=(2, 3))
    logits = torch.addmm(params["head.bias"], features, params["head.weight"].t())
    return features, logits, layers


def _grad_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """d mean-CE / d logits = (softmax - one_hot) / n."""
    grad_logits = torch.softmax(logits, dim=1)
    grad_logits[torch.arange(logits.shape[0], device=labels.device), labels] -= 1.0
    return grad_logits.div_(logits.shape[0])


def _backward(params: Params, labels: Tensor, backbone: BackboneConfig, features: Tensor, logits: Tensor,
              layers: list[_Layer]) -> Params:
    """The gradient of mean cross-entropy w.r.t. every entry of ``params``, layer by layer."""
    grad_logits = _grad_logits(logits, labels)
    grads: Params = {"head.weight": grad_logits.t() @ features, "head.bias": grad_logits.sum(dim=0)}
    grad_features = grad_logits @ params["head.weight"]
    if grad_features.device.type == "cpu" and not grad_features.any():
        # The zero-initialised head at step 0: nothing reaches the backbone, whose gradient is
        # exactly zero. Skipping its backward saves one of the inner loop's backward passes.
        # (Not on GPUs, where the test would cost a synchronisation.)
        grads.update({name: torch.zeros_like(value) for name, value in params.items() if name not in grads})
        return {name: grads[name] for name in params}
    shape = layers[-1].output_shape
    layout = layout_for(layers[0].conv_input)
    grad_h = (grad_features / (shape[2] * shape[3]))[:, :, None, None].expand(shape)
    if layout != torch.contiguous_format:
        grad_h = grad_h.contiguous(memory_format=layout)
    stride = [backbone.conv_stride] * 2
    for layer in reversed(range(backbone.layers)):
        saved = layers[layer]
        if saved.pool_indices is not None:
            grad_h = torch.ops.aten.max_pool2d_with_indices_backward(
                grad_h.contiguous(), saved.activation, [2, 2], [2, 2], [0, 0], [1, 1], False, saved.pool_indices)
        grad_normalised = torch.ops.aten.threshold_backward(grad_h, saved.activation, 0.0)
        weight = params[f"bn{layer}.weight"]
        grad_conv, grads[f"bn{layer}.weight"], grads[f"bn{layer}.bias"] = torch.ops.aten.native_batch_norm_backward(
            grad_normalised, saved.conv_output, weight, None, None, saved.mean, saved.invstd, True, BN_EPS,
            [True, True, True])
        if saved.patches is not None:
            grads["conv0.weight"] = _first_conv_weight_grad(grad_conv, saved.patches)
            continue
        if layer == 0:
            grad_conv = grad_conv.contiguous()  # the first layer's input and weight are plain NCHW
        # The images need no gradient: layer 0 computes only its weight's.
        grad_h, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_conv, saved.conv_input, saved.conv_weight, None, stride, [1, 1], [1, 1], False, [0, 0], 1,
            [layer > 0, True, False])
        grads[f"conv{layer}.weight"] = grad_weight.contiguous()
    return {name: grads[name] for name in params}


@dataclass
class FrozenBackbone:
    """The support embedding of one inner loop whose backbone does not move (e.g. pretrain's linear
    probe: every backbone step size 0): computed once, reused while the backbone's values are
    bitwise the same (checked at every use, so reuse is exact by construction)."""

    backbone_values: Params | None = None
    features: Tensor | None = None
    stats: list[LayerStats] | None = None

    def embedding(self, values: Params, inputs: Tensor, backbone: BackboneConfig) -> tuple[Tensor, list[LayerStats]]:
        current = {name: value for name, value in values.items() if not name.startswith("head.")}
        cached = self.backbone_values
        if (cached is None or self.features is None or self.stats is None or cached.keys() != current.keys()
                or not all(torch.equal(cached[name], value) for name, value in current.items())):
            self.features, self.stats = support_embedding(current, inputs, backbone)
            self.backbone_values = current
        assert self.features is not None and self.stats is not None
        return self.features, self.stats


@dataclass
class LastBackbonePass:
    """The last full support pass of one inner loop (features, logits' inputs and what backward
    needs), reused while the backbone's values are bitwise the same (checked at every use): the
    step from the zero head moves only the head, since the backbone's gradient through a zero head
    is exactly zero, so the evaluation after it needs only the head's logits."""

    backbone_values: Params | None = None
    features: Tensor | None = None
    layers: list[_Layer] | None = None

    def forward(self, values: Params, inputs: Tensor, backbone: BackboneConfig) -> tuple[Tensor, Tensor, list[_Layer]]:
        """``_forward(values, inputs, backbone)``, from the kept pass where the backbone is the same."""
        current = {name: value for name, value in values.items() if not name.startswith("head.")}
        cached = self.backbone_values
        if (cached is not None and self.features is not None and self.layers is not None
                and cached.keys() == current.keys()
                and all(torch.equal(cached[name], value) for name, value in current.items())):
            logits = torch.addmm(values["head.bias"], self.features, values["head.weight"].t())
            return self.features, logits, self.layers
        features, logits, layers = _forward(values, inputs, backbone)
        self.backbone_values, self.features, self.layers = current, features, layers
        return features, logits, layers


def _head_only_pass(values: Params, inputs: Tensor, labels: Tensor, backbone: BackboneConfig, with_grads: bool,
                    frozen_backbone: FrozenBackbone) -> SupportPass:
    """``support_pass`` when no backbone gradient is wanted: the (cached) embedding, the head's
    logits and the head's gradient; the backbone's entries get zeros."""
    features, stats = frozen_backbone.embedding(values, inputs, backbone)
    logits = torch.addmm(values["head.bias"], features, values["head.weight"].t())
    loss = F.cross_entropy(logits, labels)

    def head_grads() -> Params:
        grad_logits = _grad_logits(logits, labels)
        grads = {name: torch.zeros_like(value) for name, value in values.items()}
        grads["head.weight"] = grad_logits.t() @ features
        grads["head.bias"] = grad_logits.sum(dim=0)
        return grads

    if with_grads:
        return SupportPass(loss, logits, head_grads(), stats)
    return SupportPass(loss, logits, None, stats, head_grads)


def support_pass(params: Params, inputs: Tensor, labels: Tensor, backbone: BackboneConfig,
                 with_grads: bool = True, frozen: frozenset[str] = frozenset(),
                 frozen_backbone: FrozenBackbone | None = None,
                 last_pass: LastBackbonePass | None = None) -> SupportPass:
    """Mean support cross-entropy at ``params`` (batch statistics of the support set), its logits,
    its gradient w.r.t. every entry of ``params`` (if ``with_grads``) and the per-layer statistics.
    Builds no autograd graph; the gradient equals autograd's through ``engine.nets.classify``.

    Without ``with_grads`` the result can still compute its gradient later (``SupportPass.gradient``,
    one backward pass from the kept forward), e.g. for a line-search trial that turns out accepted.

    ``frozen`` names entries whose gradient the caller will not use (returned as zeros): when it
    covers the whole backbone and ``frozen_backbone`` is given, no backward pass runs below the
    head and the support embedding is computed once per backbone value. ``last_pass``: the inner
    loop's last full pass, reused when the backbone has not moved since (:class:`LastBackbonePass`).
    """
    with torch.no_grad():
        values = {name: value.detach() for name, value in params.items()}
        if frozen_backbone is not None and all(name in frozen for name in values if not name.startswith("head.")):
            return _head_only_pass(values, inputs, labels, backbone, with_grads, frozen_backbone)
        if last_pass is not None:
            features, logits, layers = last_pass.forward(values, inputs, backbone)
        else:
            features, logits, layers = _forward(values, inputs, backbone)
        loss = F.cross_entropy(logits, labels)
        grads = _backward(values, labels, backbone, features, logits, layers) if with_grads else None

    def complete() -> Params:
        with torch.no_grad():
            return _backward(values, labels, backbone, features, logits, layers)

    return SupportPass(loss, logits, grads, [(saved.mean, saved.invstd) for saved in layers],
                       None if with_grads else complete)


def embed_with_stats(params: Params, x: Tensor, backbone: BackboneConfig, stats: list[LayerStats]) -> Tensor:
    """Embeddings of ``x`` normalised with given per-layer statistics (e.g. the support set's): the
    same as ``engine.nets.embed`` on ``[support; x]`` with ``stats_count=len(support)``, without
    running the support set again. No graph."""
    with torch.no_grad():
        layout = layout_for(x)
        h = x
        for layer in range(backbone.layers):
            mean, invstd = stats[layer]
            scale = invstd * params[f"bn{layer}.weight"].detach()
            shift = params[f"bn{layer}.bias"].detach() - mean * scale
            # With fixed statistics batch norm is a per-channel affine map: folded into the
            # convolution's weight and bias it costs no pass of its own over the activations.
            weight = params[f"conv{layer}.weight"].detach() * scale.view(-1, 1, 1, 1)
            h, _, _ = _conv_in_layout(h, weight, layer, layout, backbone, bias=shift)
            h = h.clamp_min_(0.0)
            if backbone.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
        return h.mean(dim=(2, 3))


def logits_with_stats(params: Params, x: Tensor, backbone: BackboneConfig, stats: list[LayerStats]) -> Tensor:
    """Head logits of :func:`embed_with_stats`."""
    features = embed_with_stats(params, x, backbone, stats)
    return torch.addmm(params["head.bias"].detach(), features, params["head.weight"].detach().t())


def support_embedding(params: Params, inputs: Tensor, backbone: BackboneConfig) -> tuple[Tensor, list[LayerStats]]:
    """Embeddings of the support set with its own batch statistics, and those statistics (no graph)."""
    with torch.no_grad():
        values = {name: value.detach() for name, value in params.items()}
        layout = layout_for(inputs)
        h = inputs
        stats: list[LayerStats] = []
        for layer in range(backbone.layers):
            conv_output, _, _ = _conv_in_layout(h, values[f"conv{layer}.weight"], layer, layout, backbone)
            h, mean, invstd = torch.native_batch_norm(
                conv_output, values[f"bn{layer}.weight"],
                values[f"bn{layer}.bias"], None, None, True, 0.0, BN_EPS)
            h = h.clamp_min_(0.0)
            if backbone.downsample == "maxpool":
                h = F.max_pool2d(h, 2)
            stats.append((mean, invstd))
        return h.mean(dim=(2, 3)), stats


__all__ = ["CHANNELS_LAST_MIN_IMAGES", "FrozenBackbone", "LastBackbonePass", "LayerStats", "SupportPass", "applies", "embed_with_stats",
           "enabled", "fused", "layout_for", "logits_with_stats", "support_embedding", "support_pass"]
