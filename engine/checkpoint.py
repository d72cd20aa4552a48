"""Checkpoints: safetensors for tensors, JSON beside it for everything else. Never pickles.

A model is ``<stem>.safetensors`` + ``<stem>.json``; the JSON names the algorithm and holds its full
configuration, so ``load_learner`` can rebuild it without any other input.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine.learners import Learner, get_learner_class
from engine.nets import BackboneConfig


OVERSIZE_FACTOR = 64
"""Metadata describing a network this many times larger than its weights file cannot match it: it is
refused before anything is allocated (near misses get the shape check's detailed message)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match its algorithm; the message says which."""


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(tensors, metadata) paths for a checkpoint given as its stem, .safetensors or .json path."""
    path = Path(path)
    if path.is_dir():
        path = path / "model"
    stem = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint metadata {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint metadata {path} is not valid JSON ({error})") from None


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint weights {path} are corrupt or not safetensors ({error})") from None


def read_tensor_metadata(path: Path) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (empty when there is none)."""
    try:
        with safe_open(path, framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint weights {path} are corrupt or not safetensors ({error})") from None


def save_learner(path: str | os.PathLike[str], learner: Learner, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``learner``'s meta-parameters and a metadata JSON; returns the weights path."""
    weights, meta_path = checkpoint_paths(path)
    save_tensors(weights, learner.params, metadata={"algorithm": learner.name})
    write_json(meta_path, {**learner.describe(), **(metadata or {})})
    return weights


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    metadata = read_json(checkpoint_paths(path)[1])
    if not isinstance(metadata, dict) or "algorithm" not in metadata:
        raise CheckpointError(f"{checkpoint_paths(path)[1]} does not name an algorithm")
    return metadata


def _typed(fields: Mapping[str, Any], values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The known ``values``, each of its field's default type (an int is a float too): a wrong type
    in hand-edited metadata is refused here, not deep inside adaptation."""
    chosen = {}
    for key, value in values.items():
        if key not in fields:
            continue
        default = fields[key].default
        expected = float if type(default) is float else type(default)
        if expected in (bool, int, float, str):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = number if expected is float else type(value) is expected
            if not ok:
                raise CheckpointError(f"checkpoint metadata's {what}.{key} must be {expected.__name__}, not {value!r}")
        chosen[key] = value
    return chosen


def build_learner(metadata: Mapping[str, Any], max_elements: int | None = None) -> Learner:
    """An untrained learner with the algorithm and configuration that ``metadata`` describes.

    ``max_elements`` (the weights file's tensor sizes) refuses a configuration describing a larger
    network before any of it is allocated.
    """
    try:
        cls = get_learner_class(metadata["algorithm"])
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    config_values, backbone_values = metadata.get("config", {}), metadata.get("backbone", {})
    if not isinstance(config_values, dict) or not isinstance(backbone_values, dict):
        raise CheckpointError("checkpoint metadata's config and backbone must be JSON objects")
    try:
        config = cls.config_class(**_typed(cls.config_class.__dataclass_fields__, config_values, "config"))
        backbone = BackboneConfig(**_typed(BackboneConfig.__dataclass_fields__, backbone_values, "backbone"))
        if backbone.channels < 1 or backbone.layers < 1:
            raise ValueError("the backbone needs at least one layer and one channel")
        implied = backbone.channels ** 2 * 9 * (backbone.layers - 1)  # the 3x3 convolutions after the first
        if max_elements is not None and implied > OVERSIZE_FACTOR * max(max_elements, 1):
            raise ValueError("the metadata describes a larger network than the weights file holds")
        return cls(config=config, backbone=backbone)
    except (TypeError, ValueError, RuntimeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint metadata does not describe a usable {cls.name} ({error})") from None


def tensor_elements(path: Path) -> int:
    """Elements in every tensor of a safetensors file, read from its header alone."""
    if not path.exists():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint weights {path} are corrupt or not safetensors ({error})") from None


def load_learner(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Learner:
    """Rebuild a learner from its checkpoint, checking every tensor's name and shape."""
    weights_path, _ = checkpoint_paths(path)
    metadata = read_metadata(path)
    learner = build_learner(metadata, max_elements=tensor_elements(weights_path))
    tensors = load_tensors(weights_path, device)
    expected = {k: tuple(v.shape) for k, v in learner.params.items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))
        unexpected = sorted(set(found) - set(expected))
        mismatched = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise CheckpointError(
            f"checkpoint {weights_path} does not fit algorithm {learner.name!r}: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {mismatched}")
    for name, value in tensors.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"checkpoint {weights_path} has non-finite values in {name}")
    learner.params = {k: tensors[k].to(torch.float32).requires_grad_(True) for k in expected}
    return learner
