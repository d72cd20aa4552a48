"""Measure the two Conv-4 downsampling choices side by side: stride-2 convs vs 2x2 max-pool.

    python -m benchmarks.bench_backbones [--train-steps 300] [--data-dir DIR]

Prints, for each, the time of a second-order MAML meta-step (32 tasks, 5-way 1-shot, 1 query per
class, 1 inner step), of a 10-step 5-way 1-shot adaptation with 20 queries, and, with Omniglot
present, the validation accuracy (5-way 1-shot) of a ProtoNet trained for --train-steps 20-way
episodes from the same seed: the speed/accuracy trade-off behind the backbone choice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from engine.data.omniglot import DatasetNotFoundError, load_splits
from engine.data.tasks import fixed_tasks, sample_task
from engine.evaluate import score, task_accuracies
from engine.learners import AdaptSettings, get_learner_class
from engine.learners.gradient import GradientConfig
from engine.nets import BackboneConfig
from engine.paths import resolve_data_dir


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def random_tasks(count: int, ways: int, shots: int, queries: int) -> list:
    from engine.data.tasks import Task

    def one() -> Task:
        return Task(support_x=torch.rand(ways * shots, 1, 28, 28), support_y=torch.arange(ways).repeat_interleave(shots),
                    query_x=torch.rand(ways * queries, 1, 28, 28), query_y=torch.arange(ways).repeat_interleave(queries),
                    ways=ways, shots=shots, class_names=tuple(map(str, range(ways))))
    return [one() for _ in range(count)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_backbones", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=300, help="ProtoNet episodes per backbone (0: skip)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    splits = None
    if args.train_steps > 0:
        try:
            splits = load_splits(resolve_data_dir(args.data_dir))
        except DatasetNotFoundError as error:
            print(f"(no accuracy comparison: {error})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'downsample':<10} {'MAML meta-step':>15} {'10-step adapt':>14} {'ProtoNet val acc':>17}")
    for downsample in ("stride", "maxpool"):
        backbone = BackboneConfig(downsample=downsample)
        maml = get_learner_class("maml")(config=GradientConfig(inner_steps=1), backbone=backbone)
        batch = random_tasks(32, 5, 1, 1)
        meta_ms = median_ms(lambda: maml.meta_loss(batch).loss.backward(), args.repeats)
        task = random_tasks(1, 5, 1, 4)[0]
        adapt_ms = median_ms(lambda: maml.adapt(task.support_x, task.support_y, 5, AdaptSettings(steps=10))
                             .predict_proba(task.query_x), args.repeats)
        accuracy = "-"
        if splits is not None:
            protonet = get_learner_class("protonet")(backbone=backbone, seed=0)
            optimizer = protonet.meta_optimizer()
            rng = np.random.default_rng(0)
            for _ in range(args.train_steps):
                optimizer.zero_grad()
                protonet.meta_loss([sample_task(splits.train, 20, 1, 5, rng, rotations=True)]).loss.backward()
                optimizer.step()
            val = fixed_tasks(splits.val, 5, 1, 5, 200, seed=2017)
            accuracy = f"{100 * score(task_accuracies(protonet, val)).accuracy:.1f}%"
        print(f"{downsample:<10} {meta_ms:>12.0f} ms {adapt_ms:>11.0f} ms {accuracy:>17}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
