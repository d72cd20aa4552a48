"""Malformed checkpoints: each writes a broken ``<folder>/model.*`` and names the words of its refusal."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.checkpoint import save_learner
from engine.learners import LEARNERS
from engine.nets import BackboneConfig

CHANNELS = 8


@dataclass(frozen=True)
class CheckpointCase:
    name: str
    algorithm: str
    damage: Callable[[Path], None]
    says: str


def write_good(folder: Path, algorithm: str) -> Path:
    stem = folder / "model"
    save_learner(stem, LEARNERS[algorithm](backbone=BackboneConfig(channels=CHANNELS)), {"meta_step": 0})
    return stem


def _weights(stem: Path) -> Path:
    return stem.with_suffix(".safetensors")


def _edit_metadata(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(stem: Path) -> None:
        path = stem.with_suffix(".json")
        metadata = json.loads(path.read_text())
        change(metadata)
        path.write_text(json.dumps(metadata))
    return damage


def truncate(stem: Path) -> None:
    data = _weights(stem).read_bytes()
    _weights(stem).write_bytes(data[: len(data) // 2])


def absurd_header(stem: Path) -> None:
    data = _weights(stem).read_bytes()
    _weights(stem).write_bytes(struct.pack("<Q", 2**62) + data[8:])


def wrong_shapes(stem: Path) -> None:
    algorithm = json.loads(stem.with_suffix(".json").read_text())["algorithm"]
    params = LEARNERS[algorithm](backbone=BackboneConfig(channels=CHANNELS)).params
    save_file({name: torch.zeros(3) for name in params}, str(_weights(stem)))


def nan_weights(stem: Path) -> None:
    algorithm = json.loads(stem.with_suffix(".json").read_text())["algorithm"]
    learner = LEARNERS[algorithm](backbone=BackboneConfig(channels=CHANNELS))
    params = {k: v.detach().clone() for k, v in learner.params.items()}
    first = next(iter(params))
    params[first].view(-1)[0] = float("nan")
    save_file(params, str(_weights(stem)))


def checkpoint_cases() -> list[CheckpointCase]:
    return [
        CheckpointCase("truncated", "maml", truncate, "corrupt or not safetensors"),
        CheckpointCase("absurd-header-length", "protonet", absurd_header, "corrupt or not safetensors"),
        CheckpointCase("wrong-shapes", "reptile", wrong_shapes, "wrong shapes"),
        CheckpointCase("nan-weights", "fomaml", nan_weights, "non-finite"),
        CheckpointCase("unknown-algorithm", "imaml", _edit_metadata(lambda m: m.update(algorithm="alchemy")),
                       "alchemy"),
        CheckpointCase("config-not-object", "pretrain", _edit_metadata(lambda m: m.update(config=[1, 2])),
                       "must be JSON objects"),
        CheckpointCase("config-wrong-type", "metasgd",
                       _edit_metadata(lambda m: m["config"].update(inner_steps="many")), "must be int"),
        CheckpointCase("negative-channels", "blackbox",
                       _edit_metadata(lambda m: m.update(backbone={"channels": -4})), "at least one"),
        CheckpointCase("giant-network", "mc2",
                       _edit_metadata(lambda m: m.update(backbone={"channels": 20000, "layers": 40})),
                       "larger network than the weights file"),
        CheckpointCase("metadata-not-json", "mc1", lambda stem: stem.with_suffix(".json").write_text("{nope"),
                       "not valid JSON"),
    ]
