"""How much of an adaptation is the convolution kernels: the floor the speed budgets stand on.

    python -m benchmarks.bench_floor [--shape 5w1s] [--repeats 20] [--threads 1]

For every registered algorithm, on its shipped checkpoint's backbone as ``benchmarks.bench`` times it,
runs ``adapt`` (10 inner steps) + ``predict_proba`` (20 queries) under ``torch.profiler`` and
splits the CPU time into the convolution operators (forward and backward with what they call,
PyTorch's oneDNN kernels, which no change in this project's Python makes cheaper) and the self time
of every other operator, beside the unprofiled median wall time. Summed over the gradient-based
algorithms plus ProtoNet (the set the comparison budgets time) it says how much of that set's time
is left to optimise at all. The profiler's own per-operator cost lands in "other operators", an upper bound.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench import ADAPT_STEPS, SHAPES, adapt_and_predict, adaptation_task, build_learners, shipped_backbones, \
    gradient_and_protonet
from benchmarks.bench_backbones import median_ms
from engine.device import keep_freed_memory
from engine.nets import BackboneConfig
from engine.paths import REPO_ROOT


# The top-level convolution operators, forward and backward, whatever the path (our fused kernels
# call them directly, autograd through conv2d and ConvolutionBackward0); their total time includes
# what they call (oneDNN's weight reorders, PyTorch's own NCHW kernel for one input channel).
CONVOLUTION_OPERATORS = frozenset({"aten::convolution", "aten::convolution_backward"})


def profiled_ms(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Per call: CPU ms inside the convolution operators, and in all other operators (self time)."""
    run()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            run()
    events = prof.key_averages()
    conv_us = sum(event.cpu_time_total for event in events if event.key in CONVOLUTION_OPERATORS)
    all_us = sum(event.self_cpu_time_total for event in events)
    return conv_us / repeats / 1000, (all_us - conv_us) / repeats / 1000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="5w1s", help="task shape")
    parser.add_argument("--repeats", type=int, default=20, help="calls per figure")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    parser.add_argument("--channels", type=int, default=64, help="channels per layer (64: the shipped networks)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as benchmarks.bench runs
    device = torch.device("cpu")
    backbones = shipped_backbones(REPO_ROOT / "models", BackboneConfig(channels=args.channels))
    learners, failed = build_learners(backbones, device)
    task = adaptation_task(args.shape, device)
    print(f"benchmarks.bench_floor: torch {torch.__version__}, {args.threads} thread(s), {args.shape}, "
          f"{ADAPT_STEPS} inner steps + 20 queries; ms per adaptation")
    print("| algorithm | wall (unprofiled) | convolution kernels (profiled) | other operators (profiled) |")
    print("|---|---:|---:|---:|")
    totals = [0.0, 0.0, 0.0]
    subset = gradient_and_protonet(learners)
    for name, learner in learners.items():
        run = adapt_and_predict(learner, task)
        wall = median_ms(run, args.repeats)
        conv, other = profiled_ms(run, args.repeats)
        if name in subset:
            totals = [totals[0] + wall, totals[1] + conv, totals[2] + other]
        print(f"| {name} | {wall:.1f} | {conv:.1f} | {other:.1f} |")
    for name, reason in failed.items():
        print(f"| {name} | {reason} | | |")
    print(f"| **gradient-based + protonet** ({', '.join(subset)}) | **{totals[0]:.0f}** | **{totals[1]:.0f}** | "
          f"**{totals[2]:.0f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
