"""How much of the machine a timed call uses: its floating-point work against a measured peak.

``count_flops`` counts the arithmetic of the matrix products and convolutions one call runs
(forward and backward, ``torch.utils.flop_counter``; elementwise work such as batch norm or ReLU
is not counted: it is memory-bound and small in FLOPs). ``measured_peak`` times a large float32
matrix product on the threads the benchmark runs with. Their ratio over a call's time,
:func:`peak_fraction`, says how far a figure is from what the arithmetic alone would take.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

# The matrix product whose speed stands for the machine's peak: large enough for the BLAS to reach
# its best speed, small enough to time many times in a second.
PEAK_SIZE = 1024


def _slow_conv2d_flop(x_shape: torch.Size, w_shape: torch.Size, kernel_size: Any, bias: Any, stride: Any,
                      padding: Any, out_shape: torch.Size | None = None, **kwargs: Any) -> int:
    """PyTorch's own im2col convolution (the Conv-4's first layer): 2 FLOPs per multiply-add.
    torch's registry maps it to the generic convolution formula, whose arguments it does not have."""
    assert out_shape is not None
    out_elements = 1
    for size in out_shape:
        out_elements *= int(size)
    per_output = 1
    for size in w_shape[1:]:
        per_output *= int(size)
    return 2 * out_elements * per_output


def _convolution_backward_flop(grad_out_shape: torch.Size, x_shape: torch.Size, w_shape: torch.Size, bias: Any,
                               stride: Any, padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                               groups: int, output_mask: Sequence[bool], out_shape: Any = None, **kwargs: Any) -> int:
    """A convolution's backward: the forward's FLOPs for each of the input's and the weight's
    gradients asked for. (torch's formula ignores ``groups`` and counts a grouped convolution's
    backward ``groups`` times over; the stacked networks of ``engine.batched`` run grouped ones.)"""
    if transposed:
        raise NotImplementedError("transposed convolutions are not used here")
    forward = 2 * int(grad_out_shape[0]) * int(w_shape[0])  # images x output channels
    for size in (*grad_out_shape[2:], *w_shape[1:]):  # output positions, inputs per output (C_in / groups, kernel)
        forward *= int(size)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(call: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions ``call`` runs (one call, counted, not timed)."""
    formulas = {aten._slow_conv2d_forward: _slow_conv2d_flop, aten.convolution_backward: _convolution_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=formulas) as counter:
        call()
    return int(counter.get_total_flops())


def measured_peak(device: torch.device, repeats: int = 15, size: int = PEAK_SIZE) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` float32 matrix product on the current threads: the median and
    the best of ``repeats`` timed calls after warm-up."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    flops = 2.0 * size ** 3
    rates = []
    for index in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= 2:  # the first two are warm-up
            rates.append(flops / (time.perf_counter() - start) / 1e9)
    return {"median_gflops": float(statistics.median(rates)), "best_gflops": float(max(rates)), "size": size,
            "repeats": repeats}


def peak_fraction(flops: float | None, ms: float | None, peak_gflops: float | None) -> float | None:
    """The fraction of the peak a call of ``flops`` FLOPs in ``ms`` milliseconds ran at."""
    if not flops or not ms or not peak_gflops:
        return None
    return flops / (ms / 1000.0) / (peak_gflops * 1e9)


__all__ = ["PEAK_SIZE", "count_flops", "measured_peak", "peak_fraction"]
