"""The Conv-4 backbone of the MAML / ProtoNet papers, as pure functions over parameter dicts.

Every algorithm shares this network: 4 x [3x3 conv (no bias), batch norm, ReLU, 2x downsampling]
on 1x28x28 inputs, giving a 64-d embedding; gradient-based learners add a linear head.

Batch norm is hand-written and always uses batch statistics (MAML-style, no running averages):
PyTorch's built-in batch norm gives wrong second-order gradients under ``torch.func.vmap``, and a
conv bias before batch norm has an exactly zero gradient, so convs have none.

Which images supply the statistics is explicit (``stats_count``): predictions normalise queries
with the *support set's* statistics, so a single query is predicted as well as a batch, and one
query never changes another's prediction. ``stats_count=None`` uses the whole batch (transductive).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

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


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, stats_count: int | None) -> Tensor:
    """Normalise ``x`` per channel with the mean/variance of its first ``stats_count`` rows.

    Written out by hand so that vmap and double backward are exact.
    """
    ref = x if stats_count is None else x[:stats_count]
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    var = ref.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) * torch.rsqrt(var + BN_EPS)
    return x_hat * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


# Sees (layer, conv input, conv output) and returns the output to continue with: lets K-FAC read
# each layer's activations without a second copy of the forward pass.
ConvHook = Callable[[int, Tensor, Tensor], Tensor]


def embed(params: Params, x: Tensor, config: BackboneConfig, stats_count: int | None = None,
          conv_hook: ConvHook | None = None) -> Tensor:
    """Images [B,1,28,28] -> embeddings [B, channels].

    ``stats_count``: batch-norm statistics come from the first ``stats_count`` images (e.g. the
    support set placed before the queries); ``None`` uses the whole batch.
    """
    h = x
    for layer in range(config.layers):
        conv_input = h
        h = F.conv2d(h, params[f"conv{layer}.weight"], stride=config.conv_stride, padding=1)
        if conv_hook is not None:
            h = conv_hook(layer, conv_input, h)
        h = batch_norm(h, params[f"bn{layer}.weight"], params[f"bn{layer}.bias"], stats_count)
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
