"""Evaluate a checkpoint on tasks from the Omniglot evaluation split.

    python -m engine.evaluate --checkpoint models/maml --ways 5 --shots 1 --tasks 600 --seed 0

prints the mean query accuracy with its 95% confidence interval; ``--json FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.checkpoint import CheckpointError, load_learner, read_metadata
from engine.data.augment import augment_images
from engine.data.omniglot import (DEFAULT_PIPELINE, PIPELINES, SCHEMES_TESTING_ON_EVALUATION, SPLIT_SCHEMES,
                                  DatasetNotFoundError, load_split, load_splits)
from engine.data.tasks import Task, alphabet_task_stream, task_stream
from engine.device import keep_freed_memory, resolve_device
from engine.learners import AdaptSettings, Learner
from engine.paths import resolve_data_dir


@dataclass(frozen=True)
class Score:
    accuracy: float
    ci95: float
    tasks: int


def score(accuracies: Sequence[float]) -> Score:
    """Mean accuracy and the half-width of its normal-approximation 95% confidence interval."""
    values = np.asarray(accuracies, dtype=np.float64)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return Score(float(values.mean()), float(1.96 * spread / math.sqrt(len(values))), len(values))


def task_accuracies(learner: Learner, tasks: Iterable[Task], settings: AdaptSettings | None = None,
                    transductive: bool = False, progress: bool = False, total: int | None = None,
                    query_augment: int = 0, seed: int = 0) -> list[float]:
    """Query accuracy of ``learner`` adapted to each task in turn. ``query_augment`` K > 0: each query's
    probabilities averaged over the query itself and K augmented copies of it (test-time augmentation;
    copies drawn from a generator seeded by ``seed`` and the task's index)."""
    accuracies = []
    for index, task in enumerate(tqdm(tasks, total=total, disable=not progress, desc="evaluating", unit="task",
                                      leave=False)):
        task = task.to(learner.device)
        adapted = learner.adapt(task.support_x, task.support_y, task.ways, settings)
        probabilities = adapted.predict_proba(task.query_x, transductive=transductive)
        if query_augment > 0:
            rng = np.random.default_rng((seed, index))
            copies = augment_images(task.query_x.repeat(query_augment, 1, 1, 1), rng)
            for copy in copies.split(task.query_x.shape[0]):  # one copy of every query at a time
                probabilities = probabilities + adapted.predict_proba(copy, transductive=transductive)
            probabilities = probabilities / (query_augment + 1)
        accuracies.append((probabilities.argmax(-1) == task.query_y).float().mean().item())
    return accuracies


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint stem, .safetensors, .json, or a folder with model.*")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15, help="query examples per class (default 15)")
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inner-steps", type=int, default=None, help="test-time inner steps (default: the checkpoint's)")
    parser.add_argument("--inner-lr", type=float, default=None, help="test-time inner learning rate")
    parser.add_argument("--optimizer", default=None,
                        help="inner-loop optimizer (default: the one the checkpoint was meta-trained with)")
    parser.add_argument("--undo-rising-steps", choices=["on", "off"], default="on",
                        help="take back an inner step that raises the support loss and halve the step size (on: the "
                             "app's default) or run the plain inner loop, as the papers do (off)")
    parser.add_argument("--finetune", default=None,
                        help="which weights adaptation changes, for learners that offer a choice (pretrain: head "
                             "or all; default: the checkpoint's)")
    parser.add_argument("--head-init", choices=["zero", "prototypes"], default="zero",
                        help="the gradient learners' starting head: zero (default) or prototypes (Proto-MAML: "
                             "step 0 is ProtoNet on the learner's backbone)")
    parser.add_argument("--support-augment", type=int, default=0,
                        help="test-time augmentation: adapt on the support set plus this many augmented copies of "
                             "each image (default 0)")
    parser.add_argument("--query-augment", type=int, default=0,
                        help="test-time augmentation: average each query's probabilities over it and this many "
                             "augmented copies (default 0)")
    parser.add_argument("--transductive", action="store_true",
                        help="normalise queries with the query batch's statistics (MAML paper) instead of the support set's")
    parser.add_argument("--split", choices=["evaluation", "validation"], default="evaluation",
                        help="the test characters (final numbers) or the validation characters (model selection)")
    parser.add_argument("--split-scheme", choices=SPLIT_SCHEMES, default=None,
                        help="which characters the splits hold (default: the one the checkpoint was trained "
                             "with): alphabets (ours: unseen test alphabets), background (ours, training on the validation "
                             "alphabets too) or characters (the papers' split)")
    parser.add_argument("--within-alphabet", action="store_true",
                        help="draw every task's classes from one alphabet (Lake et al. 2015's 20-way benchmark)")
    parser.add_argument("--pipeline", choices=PIPELINES, default=DEFAULT_PIPELINE,
                        help="how drawings become 28x28s: canonical (the app's preprocessing, default) or raw "
                             "(plain resize, as checkpoints trained before the canonical pipeline saw them)")
    parser.add_argument("--data-dir", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR, then known places)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    keep_freed_memory()
    torch.manual_seed(args.seed)
    try:
        learner = load_learner(args.checkpoint, device)
        if args.split_scheme is None:
            args.split_scheme = read_metadata(args.checkpoint).get("train", {}).get("split_scheme", "alphabets")
        if args.split == "evaluation" and args.split_scheme in SCHEMES_TESTING_ON_EVALUATION:
            chars = load_split(resolve_data_dir(args.data_dir), "evaluation", pipeline=args.pipeline)  # test split alone
        else:
            splits = load_splits(resolve_data_dir(args.data_dir), scheme=args.split_scheme, pipeline=args.pipeline)
            chars = splits.test if args.split == "evaluation" else splits.val
    except (CheckpointError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.finetune is not None and args.finetune not in learner.finetune_modes:
        choices = ", ".join(learner.finetune_modes) or "none"
        print(f"error: {learner.name} cannot fine-tune {args.finetune!r} (choices: {choices})", file=sys.stderr)
        return 2
    settings = AdaptSettings(steps=args.inner_steps, lr=args.inner_lr, optimizer=args.optimizer,
                             finetune=args.finetune, undo_rising_steps=args.undo_rising_steps == "on",
                             head_init=args.head_init, support_augment=args.support_augment)
    # A generator, not a list: 600 tasks of 20-way 5-shot would hold ~1 GB of images at once.
    stream = alphabet_task_stream if args.within_alphabet else task_stream
    try:
        tasks = itertools.islice(stream(chars, args.ways, args.shots, args.queries, args.seed), args.tasks)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    result = score(task_accuracies(learner, tasks, settings, args.transductive, progress=True, total=args.tasks,
                                   query_augment=args.query_augment, seed=args.seed))
    seconds_per_task = (time.perf_counter() - started) / max(result.tasks, 1)  # drawing the tasks included
    steps, _, optimizer = learner.resolve_settings(settings).summary()
    steps = steps or 0  # None: no inner loop
    bn = "query-batch statistics (transductive)" if args.transductive else "support-set statistics"
    finetune = "" if args.finetune is None else f" fine-tuning {args.finetune}"
    within = " within one alphabet" if args.within_alphabet else ""
    print(f"{learner.name} {args.ways}-way {args.shots}-shot{within}: {100 * result.accuracy:.2f}% "
          f"+/- {100 * result.ci95:.2f}% (95% CI over {result.tasks} tasks, {steps} inner steps"
          f"{'' if optimizer is None else f' ({optimizer})'}{finetune}, "
          f"batch norm: {bn}; {args.pipeline} pipeline; head {args.head_init}, support augment "
          f"{args.support_augment}, query augment {args.query_augment}; {seconds_per_task:.3f} s/task)")
    if args.json is not None:
        payload = {"algorithm": learner.name, "ways": args.ways, "shots": args.shots, "queries": args.queries,
                   "tasks": result.tasks, "accuracy": result.accuracy, "ci95": result.ci95, "inner_steps": steps,
                   "optimizer": optimizer,
                   "transductive": args.transductive, "finetune": args.finetune, "split": args.split,
                   "split_scheme": args.split_scheme, "within_alphabet": args.within_alphabet,
                   "pipeline": args.pipeline, "undo_rising_steps": args.undo_rising_steps == "on",
                   "head_init": args.head_init, "support_augment": args.support_augment,
                   "query_augment": args.query_augment, "seconds_per_task": seconds_per_task,
                   "threads": torch.get_num_threads(), "device": str(device),
                   "seed": args.seed, "checkpoint": str(args.checkpoint)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
