"""Meta-train any registered algorithm on the Omniglot background split.

    python -m engine.train --algorithm maml --out runs/maml --meta-steps 10000
    python -m engine.train --algorithm maml --out runs/maml --resume     # after an interruption
    torchrun --nproc_per_node 2 -m engine.train --algorithm maml ...    # over 2 processes (docs/training-distributed.md)

Writes into ``--out``: ``model.*`` (best validation accuracy: the checkpoint to ship; the latest validated
step under ``--split-scheme background``, which trains on the validation characters too),
``resume.safetensors`` (latest state, all that ``--resume`` reads; ``last.*`` and ``resume.json`` are
readable copies of it), and ``curve.jsonl`` (the learning curve).
Each step's tasks are drawn ahead of it by ``--workers`` DataLoader processes, from streams keyed by the seed,
the step and the task (engine.data.loader): the same tasks whatever the number of workers or processes.
Validation uses a fixed set of tasks from the validation split (the held-out background alphabets, or the
character split's validation characters), never the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from engine.checkpoint import (
    CheckpointError, load_learner, load_tensors, read_json, read_metadata, read_tensor_metadata, save_learner,
    save_tensors, write_json,
)
from engine import distributed
from engine.config import LEGACY_TRAIN_SETTINGS, TrainConfig
from engine.data.loader import SAMPLING, StepBatches, step_batches
from engine.data.omniglot import VALIDATION_SOURCES, DatasetNotFoundError, Splits, load_splits
from engine.data.tasks import Task, fixed_tasks
from engine.device import describe_device, keep_freed_memory
from engine.distributed import Ranks
from engine.evaluate import score, task_accuracies
from engine.learners import LEARNERS, Learner, get_learner_class
from engine.nets import BackboneConfig
from engine.paths import resolve_data_dir
from engine.provenance import dataset_fingerprint, git_commit
from engine.schedules import meta_lr_factor


VALIDATION_SEED = 2017  # the same validation tasks for every run, so curves are comparable
# Sampling processes per training process: one keeps a batch ready while the step computes, without
# taking a core from a machine's other training processes.
DEFAULT_WORKERS = 1


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any],
                            title: str) -> None:
    """One ``--field-name`` option per dataclass field, typed from its default."""
    group = parser.add_argument_group(title)
    for spec in dataclasses.fields(cls):
        default = defaults.get(spec.name, getattr(cls(), spec.name))
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(default, bool):
            group.add_argument(flag, type=parse_bool, default=default, metavar="BOOL", help=f"(default {default})")
        elif default is None:  # an optional number: an int where the field is declared one
            parse = parse_optional_int if str(spec.type).startswith("int") else parse_optional_float
            group.add_argument(flag, type=parse, default=None, help="(default: none)")
        else:
            group.add_argument(flag, type=type(default), default=default, help=f"(default {default})")


def parse_bool(text: str) -> bool:
    if text.lower() in {"1", "true", "yes", "on"}:
        return True
    if text.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_optional_float(text: str) -> float | None:
    return None if text.lower() in {"none", ""} else float(text)


def parse_optional_int(text: str) -> int | None:
    return None if text.lower() in {"none", ""} else int(text)


def build_parser(algorithm: str | None) -> argparse.ArgumentParser:
    names = ", ".join(sorted(LEARNERS))
    parser = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", required=True, choices=sorted(LEARNERS), help=f"one of: {names}")
    parser.add_argument("--out", type=Path, required=True, help="output folder for checkpoints and the curve")
    parser.add_argument("--resume", action="store_true", help="continue from the latest state in --out")
    parser.add_argument("--data-dir", default=None, help="Omniglot folder (default: $OMNIGLOT_DIR, then known places)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu or cuda")
    parser.add_argument("--channels", type=int, default=BackboneConfig.channels, help="backbone width")
    parser.add_argument("--downsample", choices=["stride", "maxpool"], default=BackboneConfig.downsample)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop cleanly (state saved, resumable) after this much training time in this piece")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="DataLoader processes drawing tasks ahead of each training process (0: it draws them "
                             "itself); results do not depend on it")
    learner_cls = LEARNERS.get(algorithm or "")
    add_dataclass_arguments(parser, TrainConfig, learner_cls.train_defaults if learner_cls else {}, "training")
    if learner_cls is not None:
        add_dataclass_arguments(parser, learner_cls.config_class, {}, f"{learner_cls.name} hyper-parameters")
    else:
        parser.epilog = "Pass --algorithm NAME --help to see that algorithm's hyper-parameters."
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    # Two passes: the algorithm decides which hyper-parameter flags exist.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algorithm")
    known, _ = pre.parse_known_args(argv)
    return build_parser(known.algorithm).parse_args(argv)


def pick(namespace: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


class Trainer:
    """The meta-training loop shared by every algorithm: sample tasks, ``meta_loss``, backward, step.

    In a distributed run (``ranks``) every process runs this loop on its share of each batch's tasks
    and the gradients are summed across processes before the step (engine.distributed); rank 0 alone
    validates, logs and saves.
    """

    def __init__(self, learner: Learner, config: TrainConfig, splits: Splits, out: Path, device: torch.device,
                 provenance: dict[str, Any], progress: bool = True, ranks: Ranks | None = None,
                 workers: int = DEFAULT_WORKERS) -> None:
        self.ranks = ranks if ranks is not None else Ranks(device=device)
        if workers < 0:
            raise ValueError(f"--workers must be >= 0, got {workers}")
        self.workers = workers
        # Raises ValueError, before any training, when the batch cannot give every process a share.
        self.dataset = StepBatches(learner, splits.train, config, self.ranks.rank, self.ranks.world_size)
        self.learner = learner.to(device)
        self.config = config
        self.splits = splits
        self.out = out
        self.device = device
        self.provenance = provenance
        self.progress = progress and self.ranks.is_main
        self.optimizer = learner.meta_optimizer()
        rates = learner.config
        ratio = 1.0 if rates.meta_lr_final is None else rates.meta_lr_final / rates.meta_lr
        schedule = functools.partial(meta_lr_factor, total_steps=config.meta_steps, final_ratio=ratio,
                                     schedule=rates.meta_lr_schedule, warmup=rates.meta_lr_warmup)
        schedule(0)  # refuses an unknown schedule before any training
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.step = 0
        self.model_val = -1.0  # validation accuracy of the checkpoint in model.*
        self.train_seconds = 0.0
        self.pieces: list[dict[str, Any]] = []
        self.val_tasks: list[Task] = [t.to(device) for t in fixed_tasks(
            splits.val, config.val_ways, config.val_shots, config.val_queries, config.val_tasks, VALIDATION_SEED)
        ] if self.ranks.is_main else []  # only rank 0 validates

    # -- persistence ----------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {"train": dataclasses.asdict(self.config), "meta_step": self.step, "val_accuracy": self.model_val,
                "val_setting": f"{self.config.val_ways}-way {self.config.val_shots}-shot, {self.config.val_tasks} "
                               f"tasks from {VALIDATION_SOURCES[self.config.split_scheme]}",
                "wall_clock_seconds": round(self.train_seconds, 1), "pieces": self.pieces, **self.provenance}

    def save_state(self) -> None:
        """Latest weights + optimizer state + sampler state, enough for ``--resume``.

        ``--resume`` reads only ``resume.safetensors``, which holds all of it and is replaced atomically:
        a run killed between two separate files would otherwise resume the weights of one step with the
        sampler of another. ``last.*`` and ``resume.json`` are readable copies for people and scripts.
        """
        optimizer_state = self.optimizer.state_dict()
        tensors = {f"params.{name}": value for name, value in self.learner.params.items()}
        tensors.update({f"optimizer.{index}.{key}": value for index, state in optimizer_state["state"].items()
                        for key, value in state.items()})
        state = {"step": self.step, "best_val": self.model_val, "train_seconds": self.train_seconds,
                 "pieces": self.pieces, "param_groups": optimizer_state["param_groups"],
                 "scheduler": self.scheduler.state_dict(), "sampling": SAMPLING,
                 "train": dataclasses.asdict(self.config)}
        metadata = self.metadata()
        save_learner(self.out / "last", self.learner, metadata)
        # The run's metadata too, so that this one file is all a resumed run needs (the file a run still in
        # progress commits).
        save_tensors(self.out / "resume.safetensors", tensors,
                     metadata={"state": json.dumps(state), "run": json.dumps({**self.learner.describe(), **metadata})})
        write_json(self.out / "resume.json", state)

    def restore_state(self) -> None:
        path = self.out / "resume.safetensors"
        tensors = load_tensors(path, self.device)
        header = read_tensor_metadata(path)
        if "state" in header:
            state = json.loads(header["state"])
            params = {key.removeprefix("params."): value for key, value in tensors.items() if key.startswith("params.")}
            optimizer_tensors = {key.removeprefix("optimizer."): value for key, value in tensors.items()
                                 if key.startswith("optimizer.")}
        else:  # saved before the single-file format: weights in last.*, optimizer tensors unprefixed
            state = read_json(self.out / "resume.json")
            params, optimizer_tensors = load_learner(self.out / "last", self.device).params, tensors
        if params.keys() != self.learner.params.keys():
            raise CheckpointError(f"{path} does not hold this run's parameters")
        self.learner.params = {name: params[name].requires_grad_(True) for name in self.learner.params}
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in optimizer_tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        self.load_optimizer({"state": per_param, "param_groups": state["param_groups"]}, state["scheduler"])
        self.step, self.model_val = state["step"], state["best_val"]
        self.train_seconds, self.pieces = state["train_seconds"], state["pieces"]
        if state.get("sampling") != SAMPLING:
            # The former trainer drew every task from one generator, whose state is all it saved.
            print(f"note: {path} was saved by the former task sampler; from step {self.step} on this run draws its "
                  f"tasks {SAMPLING} (the same distribution, other tasks than an uninterrupted run would have had)",
                  file=sys.stderr)
        self.truncate_curve()

    def load_optimizer(self, optimizer_state: dict[str, Any], scheduler_state: dict[str, Any]) -> None:
        """A new meta-optimizer and schedule for the current parameters, in the saved states. The schedule
        is built first: building it sets the learning rate to its step-0 value, which the optimizer's
        state then replaces with the saved step's (the other way round, the first step after a resume
        took the step-0 rate of an annealed schedule)."""
        self.optimizer = self.learner.meta_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.scheduler.lr_lambdas[0])
        self.optimizer.load_state_dict(optimizer_state)  # moves the state onto the parameters' device
        self.scheduler.load_state_dict(scheduler_state)

    def shared_state(self) -> dict[str, Any]:
        """What every process must hold alike: the weights, the optimizer's and scheduler's state, the step."""
        return distributed.cpu_copy({
            "params": self.learner.params, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "best_val": self.model_val,
            "train_seconds": self.train_seconds, "pieces": self.pieces})

    def adopt_state(self, state: dict[str, Any]) -> None:
        device = self.learner.device
        self.learner.params = {name: value.to(device).requires_grad_(True) for name, value in state["params"].items()}
        self.load_optimizer(state["optimizer"], state["scheduler"])
        self.step, self.model_val = state["step"], state["best_val"]
        self.train_seconds, self.pieces = state["train_seconds"], state["pieces"]

    def synchronize(self) -> None:
        """Give every process rank 0's state (a fresh run's initial weights, or the state it resumed), as
        DistributedDataParallel does at its start. Nothing to do in a single process."""
        if self.ranks.distributed:
            state = self.ranks.broadcast(self.shared_state() if self.ranks.is_main else None)
            if not self.ranks.is_main:
                self.adopt_state(state)

    def truncate_curve(self) -> None:
        """Drop curve records written after the restored state (a killed run logs past its last save)."""
        path = self.out / "curve.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if record.get("step", 0) <= self.step:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        with (self.out / "curve.jsonl").open("a", encoding="utf-8") as curve:
            curve.write(json.dumps(record) + "\n")

    # -- training ------------------------------------------------------------------------------
    def validate(self) -> float:
        return score(task_accuracies(self.learner, self.val_tasks)).accuracy

    def train_step(self, tasks: list[Task], items: int) -> tuple[float, float]:
        """One meta-step on this process's ``tasks`` of a batch of ``items``; returns the whole batch's
        query loss and accuracy."""
        tasks = [task.to(self.device) for task in tasks]
        self.optimizer.zero_grad(set_to_none=True)
        result = self.learner.meta_loss(tasks)
        # meta_loss is a mean over this share: weighted by the share's size, the sum over processes is
        # the mean over the whole batch (exactly 1 in a single process).
        share = len(tasks) / items
        (result.loss if share == 1.0 else result.loss * share).backward()
        loss, accuracy = self.ranks.sum_gradients(list(self.learner.params.values()),
                                                  [result.query_loss * share, result.query_accuracy * share])
        self.optimizer.step()
        self.scheduler.step()
        return loss, accuracy

    def run(self, max_minutes: float | None = None) -> float:
        """Train until ``meta_steps`` (or ``max_minutes`` of this piece); the state is saved either way."""
        c = self.config
        main = self.ranks.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        piece = {"hardware": describe_device(self.device), "processes": self.ranks.world_size,
                 "start_step": self.step, "seconds": 0.0, "commit": self.provenance.get("git_commit")}
        self.pieces.append(piece)
        last_save = time.monotonic()
        piece_seconds = 0.0
        bar = tqdm(total=c.meta_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        val_accuracy = float("nan")
        batches = step_batches(self.dataset, self.step, c.meta_steps, self.workers)
        try:
            while self.step < c.meta_steps:
                # Every process must leave at the same step: rank 0's clock decides.
                if max_minutes is not None and self.ranks.agree(piece_seconds >= 60 * max_minutes):
                    break
                started = time.perf_counter()
                batch = next(batches)  # waiting for it counts as training time
                loss, query_accuracy = self.train_step(batch.tasks, batch.items)
                self.step += 1
                elapsed = time.perf_counter() - started
                self.train_seconds += elapsed
                piece_seconds += elapsed
                piece["seconds"] = round(piece_seconds, 1)  # rounded for the record only: steps can be < 0.05 s
                piece["end_step"] = self.step
                if not main:
                    continue
                record: dict[str, Any] = {"step": self.step, "seconds": round(self.train_seconds, 2),
                                          "loss": loss, "query_accuracy": query_accuracy}
                if self.step % c.val_every == 0 or self.step == c.meta_steps:
                    val_accuracy = self.validate()
                    record["val_accuracy"] = val_accuracy
                    # Validation characters that training also sees cannot select a checkpoint: keep the latest.
                    if val_accuracy > self.model_val or not self.splits.val_held_out:
                        self.model_val = val_accuracy
                        save_learner(self.out / "model", self.learner, self.metadata())
                    if not self.progress:
                        print(f"step {self.step}: loss {loss:.4f}, query acc {query_accuracy:.3f}, "
                              f"val acc {val_accuracy:.4f} (checkpoint's {self.model_val:.4f})", flush=True)
                self.log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{query_accuracy:.3f}", val=f"{val_accuracy:.3f}")
                if "val_accuracy" in record or time.monotonic() - last_save > 60 * c.checkpoint_minutes:
                    self.save_state()
                    last_save = time.monotonic()
        finally:
            del batches  # the last reference to the iterator: its worker processes stop now, even on an error
        bar.close()
        if main:
            self.save_state()
        return self.model_val


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ranks = distributed.start(args.device)  # one process unless torchrun started this one
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return run_training(args, ranks)
    finally:
        distributed.stop(ranks)


def resumed_metadata(out: Path) -> dict[str, Any]:
    """The metadata of the run in ``out``: from ``resume.safetensors`` when it holds it (so that file alone
    resumes a run), else from ``last.json`` (states saved before it did)."""
    state = out / "resume.safetensors"
    if state.exists():
        run = read_tensor_metadata(state).get("run")
        if run is not None:
            return json.loads(run)
    return read_metadata(out / "last")


def read_run(args: argparse.Namespace) -> tuple[dict[str, Any], str | None]:
    """The metadata of the run ``--resume`` continues (empty for a fresh run), or why there is none to
    continue or to start (an error for the command line)."""
    out: Path = args.out
    if args.resume:
        try:
            metadata = resumed_metadata(out)
        except CheckpointError as error:
            return {}, f"nothing to resume in {out}: {error}"
        if metadata["algorithm"] != args.algorithm:
            return {}, f"{out} holds a {metadata['algorithm']} run, not {args.algorithm}"
        return metadata, None
    if (out / "resume.safetensors").exists() or (out / "resume.json").exists():
        return {}, f"{out} already holds a run; pass --resume to continue it or choose another --out"
    return {}, None


def run_training(args: argparse.Namespace, ranks: Ranks) -> int:
    """The run ``args`` describe, as process ``ranks.rank``: rank 0 reads and writes ``--out`` and tells the
    others what it found, so only its machine needs the folder."""

    def fail(message: str) -> int:
        if ranks.is_main:
            print(f"error: {message}", file=sys.stderr)
        return 2

    learner_cls = get_learner_class(args.algorithm)
    config = pick(args, TrainConfig)
    device = ranks.device
    keep_freed_memory()
    torch.manual_seed(config.seed)
    data_dir = resolve_data_dir(args.data_dir)
    out: Path = args.out
    metadata, error = ranks.broadcast(read_run(args) if ranks.is_main else ({}, None))
    if error is not None:
        return fail(error)
    if args.resume:
        # The run's own settings win over the command line, except how long to train.
        config = TrainConfig(**{**LEGACY_TRAIN_SETTINGS, **metadata["train"], "meta_steps": config.meta_steps})
    try:
        splits = load_splits(data_dir, scheme=config.split_scheme, pipeline=config.pipeline)  # the run's own
    except (DatasetNotFoundError, ValueError) as error:
        return fail(str(error))
    if args.resume:
        learner = learner_cls(config=learner_cls.config_class(**metadata["config"]),
                              backbone=BackboneConfig(**metadata["backbone"]))
    else:
        # Completed from the data (e.g. pretrain's number of classes) and saved with the checkpoints.
        learner_config = learner_cls.config_for_data(pick(args, learner_cls.config_class), splits.train, config)
        learner = learner_cls(config=learner_config,
                              backbone=BackboneConfig(channels=args.channels, downsample=args.downsample),
                              seed=config.seed)
    provenance = {"git_commit": git_commit(), "dataset": dataset_fingerprint(data_dir),
                  "torch": torch.__version__}
    items = learner.batch_items(config)
    if items < ranks.world_size:
        return fail(f"{learner_cls.batch_items_flag} {items}: each step's {items} {learner_cls.name} items are split "
                    f"across the {ranks.world_size} processes, at least one each; pass {learner_cls.batch_items_flag} "
                    f"{ranks.world_size} or more, or start fewer processes")
    try:
        trainer = Trainer(learner, config, splits, out, device, provenance, progress=not args.no_progress,
                          ranks=ranks, workers=args.workers)
    except ValueError as error:
        return fail(str(error))
    if args.resume:
        restored: str | None = None
        try:
            if ranks.is_main:
                trainer.restore_state()
        except CheckpointError as failure:  # killed before its first complete save
            restored = f"nothing to resume in {out}: {failure}"
        restored = ranks.broadcast(restored)
        if restored is not None:
            return fail(restored)
    trainer.synchronize()
    model_val = trainer.run(args.max_minutes)
    if ranks.is_main:
        print(f"{'done' if trainer.step >= config.meta_steps else 'paused'}: {trainer.step} meta-steps, "
              f"checkpoint's validation accuracy {model_val:.4f}; checkpoint {out / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
