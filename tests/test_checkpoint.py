"""Checkpoints round-trip exactly and fail loudly (CheckpointError) when broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import CheckpointError, load_learner, read_metadata, save_learner
from engine.learners import LEARNERS, get_learner_class
from engine.nets import BackboneConfig

TINY = BackboneConfig(channels=4)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    cls = get_learner_class(name)
    learner = cls(config=cls.config_class(meta_lr=0.123), backbone=TINY, seed=3)
    save_learner(tmp_path / "model", learner, {"val_accuracy": 0.5})
    for spelling in ("model", "model.safetensors", "model.json"):
        loaded = load_learner(tmp_path / spelling)
        assert type(loaded) is cls
        assert loaded.config == learner.config and loaded.backbone == learner.backbone
        assert loaded.params.keys() == learner.params.keys()
        for key, value in learner.params.items():
            assert torch.equal(loaded.params[key], value.detach())
    assert read_metadata(tmp_path / "model")["val_accuracy"] == 0.5
    assert load_learner(tmp_path).name == name  # a folder holding model.*


def saved(tmp_path: Path) -> Path:
    learner = get_learner_class("maml")(backbone=TINY)
    save_learner(tmp_path / "model", learner)
    return tmp_path / "model"


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_learner(tmp_path / "nothing")
    stem = saved(tmp_path)
    stem.with_suffix(".safetensors").unlink()
    with pytest.raises(CheckpointError, match="do not exist"):
        load_learner(stem)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights(tmp_path: Path, damage: str) -> None:
    weights = saved(tmp_path).with_suffix(".safetensors")
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_learner(tmp_path / "model")


def test_corrupt_or_wrong_metadata(tmp_path: Path) -> None:
    stem = saved(tmp_path)
    meta = stem.with_suffix(".json")
    good = json.loads(meta.read_text())
    meta.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_learner(stem)
    meta.write_text(json.dumps({**good, "algorithm": "alchemy"}))
    with pytest.raises(CheckpointError, match="unknown algorithm"):
        load_learner(stem)
    meta.write_text(json.dumps({**good, "backbone": {**good["backbone"], "channels": 8}}))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_learner(stem)


def test_non_finite_weights_are_rejected(tmp_path: Path) -> None:
    learner = get_learner_class("protonet")(backbone=TINY)
    learner.params["bn0.weight"] = torch.full_like(learner.params["bn0.weight"], float("nan"))
    save_learner(tmp_path / "model", learner)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_learner(tmp_path / "model")
