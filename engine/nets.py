"""The Conv-4 backbone of the MAML / ProtoNet papers, as pure functions over parameter dicts.

Every algorithm shares this network: 4 x [3x3 conv (no bias), batch norm, ReLU, 2x downsampling]
on 1x28x28 inputs, giving a 64-d embedding; gradient-based learners add a linear head.

Batch norm always uses batch statistics (MAML-style, no running averages) and is hand-written:
PyTorch's built-in batch norm gives wrong second-order gradients under ``torch.func.vmap``, and it
cannot normalise a batch with the statistics of only part of it. (Where neither matters, the
built-in kernel computes the same function faster: see ``batch_norm``.) A conv bias before batch
norm has an exactly zero gradient, so convs have none.

Which images supply the statistics is explicit (``stats_count``): predictions normalise queries
with the *support set's* statistics, so a single query is predicted as well as a batch, and one
query never changes another's prediction. ``stats_count=None`` uses the whole batch (transductive).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

Params = dict[str, Tensor]

BN_EPS = 1e-5
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class BackboneConfig:
    """Shape of the Conv-4 backbone; stored in every checkpoint's metadata."""

    channels: int = 64
    layers: int = 4
    # "stride": stride-2 convs (MAML's Omniglot net); "maxpool": 2x2 max-pool (ProtoNet's).
    downsample: Literal["stride", "maxpool"] = "stride"

    @property
    def embedding_dim(self) -> int:
        return self.channels

    @property
    def conv_stride(self) -> int:
        return 2 if self.downsample == "stride" else 1


def init_backbone(config: BackboneConfig, generator: torch.Generator | None = None) -> Params:
    """Conv weights as PyTorch initialises them, BN scale 1 and shift 0."""
    params: Params = {}
    in_channels = IMAGE_SHAPE[0]
    for layer in range(config.layers):
        fan_in = in_channels * 9
        # nn.Conv2d's default, kaiming_uniform_(a=sqrt(5)), is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        bound = 1.0 / math.sqrt(fan_in)
        weight = (torch.rand(config.channels, in_channels, 3, 3, generator=generator) * 2 - 1) * bound
        params[f"conv{layer}.weight"] = weight
        params[f"bn{layer}.weight"] = torch.ones(config.channels)
        params[f"bn{layer}.bias"] = torch.zeros(config.channels)
        in_channels = config.channels
    return params


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, stats_count: int | None, groups: int = 1) -> Tensor:
    """Normalise ``x`` per channel with the mean/variance of its first ``stats_count`` rows.

    ``groups``: ``x`` is that many equal consecutive batches (e.g. tasks sharing the weights),
    each normalised with the statistics of its own first ``stats_count`` rows, as if one by one.

    Outside torch.func transforms, the same function in fewer kernels and autograd nodes: PyTorch's
    fused kernel when the whole batch supplies the statistics (its double backward is exact too),
    :class:`PartialStatsBatchNorm` otherwise; both pinned against :func:`batch_norm_by_hand` in
    ``tests/test_performance_paths.py``. Under transforms (vmap), the hand-written form, which they
    handle exactly.
    """
    rows = x.shape[0] // groups
    count = rows if stats_count is None else min(stats_count, rows)
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return batch_norm_by_hand(x, weight, bias, count, groups)
    if groups == 1 and count == rows:
        return F.batch_norm(x, None, None, weight, bias, training=True, momentum=0.0, eps=BN_EPS)
    return PartialStatsBatchNorm.apply(x, weight, bias, count, groups)


def _grouped(x: Tensor, groups: int) -> Tensor:
    """[groups * rows, C, H, W] viewed as [groups, rows, C, H, W]."""
    return x.view(groups, x.shape[0] // groups, *x.shape[1:])


class PartialStatsBatchNorm(torch.autograd.Function):
    """Batch norm with the statistics of the first ``count`` rows of each of ``groups`` equal slices
    of the batch (queries normalised by their task's support set), with its backward in closed
    form: a handful of kernels instead of autograd's ~20 nodes.

    Per slice, with g = dL/dy * weight, x_hat = (x - mean) * invstd and m = count * H * W elements
    per channel: dL/dx_i = invstd * g_i - [i < count] * invstd / m * (sum(g) + x_hat_i * sum(g * x_hat)),
    sums over the slice's rows and positions. The backward is not itself differentiable
    (``once_differentiable`` raises rather than return a wrong second derivative): these passes
    are differentiated once (the query loss of a meta-gradient); inner loops normalise with the
    whole batch.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, count: int, groups: int) -> Tensor:
        grouped = _grouped(x, groups)
        mean = grouped[:, :count].mean(dim=(1, 3, 4), keepdim=True)
        centred = grouped - mean
        invstd = torch.rsqrt(centred[:, :count].square().mean(dim=(1, 3, 4), keepdim=True) + BN_EPS)
        x_hat = centred.mul_(invstd)  # centred is not needed beyond this
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.count = count
        return torch.addcmul(bias.view(1, 1, -1, 1, 1), x_hat, weight.view(1, 1, -1, 1, 1)).view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        x_hat, invstd, weight = ctx.saved_tensors
        count = ctx.count
        grad = grad.reshape(x_hat.shape)
        grad_weight = (grad * x_hat).sum(dim=(0, 1, 3, 4))
        grad_bias = grad.sum(dim=(0, 1, 3, 4))
        g = grad * weight.view(1, 1, -1, 1, 1)
        elements = count * x_hat.shape[3] * x_hat.shape[4]
        sum_g = g.sum(dim=(1, 3, 4), keepdim=True)
        sum_g_x_hat = (g * x_hat).sum(dim=(1, 3, 4), keepdim=True)
        grad_x = g.mul_(invstd)
        grad_x[:, :count] -= (invstd / elements) * (sum_g + x_hat[:, :count] * sum_g_x_hat)
        return grad_x.view(-1, *x_hat.shape[2:]), grad_weight, grad_bias, None, None


def batch_norm_by_hand(x: Tensor, weight: Tensor, bias: Tensor, stats_count: int | None, groups: int = 1) -> Tensor:
    """:func:`batch_norm` written out in elementary ops, so that vmap and double backward are exact."""
    grouped = _grouped(x, groups)
    ref = grouped if stats_count is None else grouped[:, :stats_count]
    mean = ref.mean(dim=(1, 3, 4), keepdim=True)
    centred = grouped - mean
    ref_centred = centred if stats_count is None else centred[:, :stats_count]
    # Two passes (mean, then mean of squared deviations) rather than Tensor.var: on CPU its
    # reduction over several dims is a slow scalar kernel, ~40x a mean of the same tensor.
    var = ref_centred.square().mean(dim=(1, 3, 4), keepdim=True)
    # Per-channel scale first, so the full-size tensor sees one fused multiply-add.
    scale = torch.rsqrt(var + BN_EPS) * weight.view(1, 1, -1, 1, 1)
    return torch.addcmul(bias.view(1, 1, -1, 1, 1), centred, scale).view(x.shape)


def conv3x3(x: Tensor, weight: Tensor, stride: int, bias: Tensor | None = None) -> Tensor:
    """A 3x3 convolution, padding 1 (the Conv-4 has no bias; :mod:`engine.kernels` folds batch norm into one)."""
    if x.shape[1] == 1 and x.device.type == "cpu" and not torch._C._functorch.is_functorch_wrapped_tensor(x):
        # The first layer (one input channel): oneDNN's kernel is 4-7x slower than PyTorch's own
        # im2col + GEMM beyond a few images (320 images: 29 ms vs 7 ms forward + backward, one
        # thread), which also has an exact double backward.
        return torch.ops.aten._slow_conv2d_forward(x, weight, [3, 3], bias, [stride, stride], [1, 1])
    return F.conv2d(x, weight, bias, stride=stride, padding=1)


# Sees (layer, conv input, conv output) and returns the output to continue with: lets K-FAC read
# each layer's activations without a second copy of the forward pass.
ConvHook = Callable[[int, Tensor, Tensor], Tensor]


def embed(params: Params, x: Tensor, config: BackboneConfig, stats_count: int | None = None,
          conv_hook: ConvHook | None = None, groups: int = 1) -> Tensor:
    """Images [B,1,28,28] -> embeddings [B, channels].

    ``stats_count``: batch-norm statistics come from the first ``stats_count`` images (e.g. the
    support set placed before the queries); ``None`` uses the whole batch. ``groups``: the batch is
    that many equal consecutive batches (e.g. tasks) embedded at once, each normalised with its own
    statistics (``stats_count`` then counts within each): the same as embedding them one by one.
    """
    h = x
    for layer in range(config.layers):
        conv_input = h
        h = conv3x3(h, params[f"conv{layer}.weight"], config.conv_stride)
        if conv_hook is not None:
            h = conv_hook(layer, conv_input, h)
        h = batch_norm(h, params[f"bn{layer}.weight"], params[f"bn{layer}.bias"], stats_count, groups)
        h = F.relu(h)
        if config.downsample == "maxpool":
            h = F.max_pool2d(h, 2)
    # stride: 28->14->7->4->2, averaged as in MAML's Omniglot net; maxpool: 28->14->7->3->1.
    return h.mean(dim=(2, 3))


def zero_head(ways: int, config: BackboneConfig, like: Tensor) -> Params:
    """A zero-initialised linear head for ``ways`` classes.

    Zero initialisation is what lets one checkpoint serve any N (2-20): every class starts equal,
    so labels are exchangeable and the first gradient step moves each class's weights toward the
    mean embedding of its own support examples.
    """
    return {
        "head.weight": torch.zeros(ways, config.embedding_dim, dtype=like.dtype, device=like.device),
        "head.bias": torch.zeros(ways, dtype=like.dtype, device=like.device),
    }


def classify(params: Params, x: Tensor, config: BackboneConfig, stats_count: int | None = None) -> Tensor:
    """Logits of the backbone followed by the linear head in ``params``."""
    features = embed(params, x, config, stats_count)
    return F.linear(features, params["head.weight"], params["head.bias"])


def backbone_only(params: Params) -> Params:
    """The entries of ``params`` that belong to the backbone (drops any head)."""
    return {name: value for name, value in params.items() if not name.startswith("head.")}
