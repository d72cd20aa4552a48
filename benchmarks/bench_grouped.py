"""Would one batched pass over several algorithms' networks beat adapting them one after another?

    python -m benchmarks.bench_grouped [--networks 8] [--repeats 100] [--threads 1]

Comparing algorithms means adapting several stride-2 Conv-4s (one per algorithm, different
weights) on the same support set. Stacked, their convolutions become one grouped convolution
(``groups`` = number of networks; the first layer, whose input all share, one ordinary convolution
with every network's filters). This times, per layer and for the support sizes of 5-way 1-shot and
5-way 5-shot, one inner step's convolution work: the forward convolution and its backward
(``convolution_backward``: weight gradient, and input gradient below the first layer), for one
network and for the stacked networks, in NCHW and channels-last layouts. The ratio is the
stacked time over the time of that many single-network calls: below 1 the batched pass would
save time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from benchmarks.bench_backbones import median_ms

CHANNELS = 64
STRIDE = 2
# (support images, name) and the input size of each stride-2 layer of the 28x28 Conv-4.
SUPPORT_SIZES = ((5, "5w1s"), (25, "5w5s"))
LAYER_INPUTS = (28, 14, 7, 4)


def conv_step(images: int, size: int, networks: int, first: bool, layout: torch.memory_format
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Input, weight and output gradient of one layer for ``networks`` stacked networks, and its groups."""
    generator = torch.Generator().manual_seed(0)
    in_channels = 1 if first else CHANNELS * networks
    groups = 1 if first else networks
    x = torch.randn(images, in_channels, size, size, generator=generator).contiguous(memory_format=layout)
    weight = torch.randn(CHANNELS * networks, in_channels // groups, 3, 3,
                         generator=generator).contiguous(memory_format=layout)
    out = F.conv2d(x, weight, stride=STRIDE, padding=1, groups=groups)
    return x, weight, torch.randn(out.shape, generator=generator).contiguous(memory_format=layout), groups


def layer_ms(images: int, size: int, networks: int, first: bool, layout: torch.memory_format, repeats: int) -> float:
    """Median ms of one layer's forward convolution plus its backward."""
    x, weight, grad_out, groups = conv_step(images, size, networks, first, layout)

    def run() -> None:
        F.conv2d(x, weight, stride=STRIDE, padding=1, groups=groups)
        torch.ops.aten.convolution_backward(grad_out, x, weight, None, [STRIDE] * 2, [1, 1], [1, 1], False, [0, 0],
                                            groups, [not first, True, False])

    return median_ms(run, repeats)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_grouped", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", type=int, default=8, help="networks stacked (the gradient-based algorithms)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per figure (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stacked = args.networks
    print(f"benchmarks.bench_grouped: torch {torch.__version__}, {args.threads} thread(s), {stacked} networks stacked; "
          "median ms of one layer's forward + backward convolution")
    print(f"| support | layout | layer (input) | 1 network | {stacked} stacked | ratio to {stacked} x 1 |")
    print("|---|---|---|---:|---:|---:|")
    for images, shape in SUPPORT_SIZES:
        for layout_name, layout in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
            single_total = stacked_total = 0.0
            for layer, size in enumerate(LAYER_INPUTS):
                single = layer_ms(images, size, 1, layer == 0, layout, args.repeats)
                together = layer_ms(images, size, stacked, layer == 0, layout, args.repeats)
                single_total, stacked_total = single_total + single, stacked_total + together
                print(f"| {shape} ({images}) | {layout_name} | conv{layer} ({size}x{size}) | {single:.3f} | "
                      f"{together:.3f} | {together / (stacked * single):.2f} |")
            print(f"| {shape} ({images}) | {layout_name} | **all four** | {single_total:.3f} | {stacked_total:.3f} | "
                  f"**{stacked_total / (stacked * single_total):.2f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
