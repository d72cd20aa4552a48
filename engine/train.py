"""Meta-train any registered algorithm on the Omniglot background split.

    python -m engine.train --algorithm maml --out runs/maml --meta-steps 10000
    python -m engine.train --algorithm maml --out runs/maml --resume     # after an interruption

Writes into ``--out``: ``model.*`` (best validation accuracy: the checkpoint to ship; the latest validated
step under ``--split-scheme background``, which trains on the validation characters too),
``resume.safetensors`` (latest state, all that ``--resume`` reads; ``last.*`` and ``resume.json`` are
readable copies of it), and ``curve.jsonl`` (the learning curve).
Validation uses a fixed set of tasks from the validation split (the held-out background alphabets, or the
character split's validation characters), never the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from engine.checkpoint import (
    CheckpointError, load_learner, load_tensors, read_json, read_metadata, read_tensor_metadata, save_learner,
    save_tensors, write_json,
)
from engine.config import LEGACY_TRAIN_SETTINGS, TrainConfig
from engine.data.augment import augment_task
from engine.data.omniglot import VALIDATION_SOURCES, DatasetNotFoundError, Splits, load_splits
from engine.data.tasks import fixed_tasks
from engine.device import describe_device, keep_freed_memory, resolve_device
from engine.evaluate import score, task_accuracies
from engine.learners import LEARNERS, Learner, get_learner_class
from engine.nets import BackboneConfig
from engine.paths import resolve_data_dir
from engine.provenance import dataset_fingerprint, git_commit


VALIDATION_SEED = 2017  # the same validation tasks for every run, so curves are comparable


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
    """The meta-training loop shared by every algorithm: sample tasks, ``meta_loss``, backward, step."""

    def __init__(self, learner: Learner, config: TrainConfig, splits: Splits, out: Path, device: torch.device,
                 provenance: dict[str, Any], progress: bool = True) -> None:
        self.learner = learner.to(device)
        self.config = config
        self.splits = splits
        self.out = out
        self.device = device
        self.provenance = provenance
        self.progress = progress
        self.optimizer = learner.meta_optimizer()
        final = learner.config.meta_lr_final
        ratio = 1.0 if final is None else final / learner.config.meta_lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 1.0 + (ratio - 1.0) * min(step / max(config.meta_steps, 1), 1.0))
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.model_val = -1.0  # validation accuracy of the checkpoint in model.*
        self.train_seconds = 0.0
        self.pieces: list[dict[str, Any]] = []
        self.val_tasks = [t.to(device) for t in fixed_tasks(
            splits.val, config.val_ways, config.val_shots, config.val_queries, config.val_tasks, VALIDATION_SEED)]

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
                 "scheduler": self.scheduler.state_dict(), "rng": self.rng.bit_generator.state,
                 "train": dataclasses.asdict(self.config)}
        save_learner(self.out / "last", self.learner, self.metadata())
        save_tensors(self.out / "resume.safetensors", tensors, metadata={"state": json.dumps(state)})
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
        self.optimizer = self.learner.meta_optimizer()
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in optimizer_tensors.items():
            index, name = key.split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.scheduler.lr_lambdas[0])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.bit_generator.state = state["rng"]
        self.step, self.model_val = state["step"], state["best_val"]
        self.train_seconds, self.pieces = state["train_seconds"], state["pieces"]
        self.truncate_curve()

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

    def train_step(self) -> tuple[float, float]:
        c = self.config
        tasks = [augment_task(task, self.rng, c.augment).to(self.device)
                 for task in self.learner.training_batch(self.splits.train, c, self.rng)]
        self.optimizer.zero_grad(set_to_none=True)
        result = self.learner.meta_loss(tasks)
        result.loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return result.query_loss, result.query_accuracy

    def run(self, max_minutes: float | None = None) -> float:
        """Train until ``meta_steps`` (or ``max_minutes`` of this piece); the state is saved either way."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        piece = {"hardware": describe_device(self.device), "start_step": self.step, "seconds": 0.0,
                 "commit": self.provenance.get("git_commit")}
        self.pieces.append(piece)
        last_save = time.monotonic()
        piece_seconds = 0.0
        bar = tqdm(total=c.meta_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True)
        val_accuracy = float("nan")
        while self.step < c.meta_steps:
            if max_minutes is not None and piece_seconds >= 60 * max_minutes:
                break
            started = time.perf_counter()
            loss, query_accuracy = self.train_step()
            self.step += 1
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            piece_seconds += elapsed
            piece["seconds"] = round(piece_seconds, 1)  # rounded for the record only: steps can be < 0.05 s
            piece["end_step"] = self.step
            record: dict[str, Any] = {"step": self.step, "seconds": round(self.train_seconds, 2), "loss": loss,
                                      "query_accuracy": query_accuracy}
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
        bar.close()
        self.save_state()
        return self.model_val


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    learner_cls = get_learner_class(args.algorithm)
    config = pick(args, TrainConfig)
    device = resolve_device(args.device)
    keep_freed_memory()
    torch.manual_seed(config.seed)
    data_dir = resolve_data_dir(args.data_dir)
    out: Path = args.out
    metadata: dict[str, Any] = {}
    if args.resume:
        try:
            metadata = read_metadata(out / "last")
        except CheckpointError as error:
            print(f"error: nothing to resume in {out}: {error}", file=sys.stderr)
            return 2
        if metadata["algorithm"] != args.algorithm:
            print(f"error: {out} holds a {metadata['algorithm']} run, not {args.algorithm}", file=sys.stderr)
            return 2
        # The run's own settings win over the command line, except how long to train.
        config = TrainConfig(**{**LEGACY_TRAIN_SETTINGS, **metadata["train"], "meta_steps": config.meta_steps})
    elif (out / "resume.json").exists():
        print(f"error: {out} already holds a run; pass --resume to continue it or choose another --out",
              file=sys.stderr)
        return 2
    try:
        splits = load_splits(data_dir, scheme=config.split_scheme, pipeline=config.pipeline)  # the run's own
    except (DatasetNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    trainer = Trainer(learner, config, splits, out, device, provenance, progress=not args.no_progress)
    if args.resume:
        try:
            trainer.restore_state()
        except CheckpointError as error:  # killed before its first complete save
            print(f"error: nothing to resume in {out}: {error}", file=sys.stderr)
            return 2
    model_val = trainer.run(args.max_minutes)
    print(f"{'done' if trainer.step >= config.meta_steps else 'paused'}: {trainer.step} meta-steps, checkpoint's validation accuracy {model_val:.4f}; checkpoint {out / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
