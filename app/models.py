"""Which algorithms the app can run: one checkpoint per registered algorithm in the models folder.

``<models>/<algorithm>/model.safetensors`` + ``model.json``, where ``<models>`` is
``$META_PLAYGROUND_MODELS`` or ``<repo>/models``. An algorithm without a checkpoint (or with a
broken one) is listed as unavailable with the reason, never run with untrained weights.
No Streamlit here: the UI caches :func:`load_models` once per process (``st.cache_resource``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import CheckpointError, checkpoint_paths, load_learner, read_metadata
from engine.compare import warm_up
from engine.learners import LEARNERS, Learner

MODELS_ENV = "META_PLAYGROUND_MODELS"
NOT_META_TRAINED = frozenset({"pretrain"})
"""Trained as ordinary classifiers: their checkpoints count training steps, not meta-steps."""


def models_dir() -> Path:
    from engine.paths import REPO_ROOT

    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else REPO_ROOT / "models"


@dataclass
class ModelEntry:
    """One registered algorithm and the state of its checkpoint."""

    name: str
    path: Path
    learner: Learner | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Why the algorithm cannot run (no checkpoint, corrupt checkpoint, ...); None when it can.
    problem: str | None = None
    missing: bool = False

    @property
    def available(self) -> bool:
        return self.learner is not None

    @property
    def meta_steps(self) -> int | None:
        value = self.metadata.get("meta_step")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def untrained(self) -> bool:
        """A checkpoint saved before any meta-training step (e.g. a smoke-test file)."""
        return self.meta_steps == 0

    @property
    def val_accuracy(self) -> float | None:
        value = self.metadata.get("val_accuracy")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def summary(self) -> str:
        """One line for the model list."""
        if not self.available:
            return self.problem or "unavailable"
        parts = []
        word = "training" if self.name in NOT_META_TRAINED else "meta"
        if self.meta_steps is not None:
            parts.append(f"{self.meta_steps:,} {word}-step{'' if self.meta_steps == 1 else 's'}")
        if self.val_accuracy is not None:
            setting = self.metadata.get("val_setting")
            where = f" on {_setting_text(setting)}" if setting else ""
            parts.append(f"val. accuracy {self.val_accuracy:.1%}{where}")
        seconds = self.metadata.get("wall_clock_seconds")
        if isinstance(seconds, (int, float)) and seconds > 0:
            parts.append(f"trained {_duration(seconds)}")
        if self.untrained:
            return f"untrained checkpoint (0 {word}-steps): expect chance-level predictions"
        return ", ".join(parts) or "checkpoint loaded"

    @property
    def has_inner_loop(self) -> bool:
        return bool(LEARNERS[self.name].has_inner_loop) if self.name in LEARNERS else False

    @property
    def finetune_modes(self) -> tuple[str, ...]:
        """What ``AdaptSettings.finetune`` may choose for this algorithm (empty: no such choice)."""
        return tuple(LEARNERS[self.name].finetune_modes) if self.name in LEARNERS else ()


def _setting_text(setting: Any) -> str:
    """``"5-way 1-shot, 50 tasks from ..."`` or ``{"ways": 5, "shots": 1}`` -> ``"5-way 1-shot"``."""
    if isinstance(setting, dict):
        ways, shots = setting.get("ways"), setting.get("shots")
        if ways and shots:
            return f"{ways}-way {shots}-shot"
    return str(setting).split(",")[0].strip()[:40]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Identity of the checkpoints on disk (paths, sizes, mtimes): a new or retrained checkpoint
    gives a new fingerprint, so the process-wide cache reloads it without a restart."""
    items: list[tuple[str, int, int]] = []
    for name in sorted(LEARNERS):
        for path in checkpoint_paths(directory / name):
            try:
                stat = path.stat()
                items.append((str(path), stat.st_size, stat.st_mtime_ns))
            except OSError:
                items.append((str(path), -1, -1))
    return tuple(items)


def load_models(directory: Path, device: torch.device | str = "cpu") -> dict[str, ModelEntry]:
    """Every registered algorithm, loaded from ``directory`` when its checkpoint is there and sound."""
    entries: dict[str, ModelEntry] = {}
    for name in sorted(LEARNERS):
        folder = directory / name
        entry = ModelEntry(name=name, path=folder)
        weights, meta = checkpoint_paths(folder)
        if not weights.exists() and not meta.exists():
            entry.missing = True
            entry.problem = (f"no checkpoint in {folder}/. Train one with `python -m engine.train --algorithm {name} "
                             f"--out runs/{name}` and copy runs/{name}/model.* there.")
            entries[name] = entry
            continue
        try:
            entry.metadata = read_metadata(folder)
            if entry.metadata.get("algorithm") != name:
                raise CheckpointError(f"{meta} is a {entry.metadata.get('algorithm')!r} checkpoint, "
                                      f"not {name!r}")
            learner = load_learner(folder, device=device)
            for value in learner.params.values():  # shared between sessions: never trained here
                value.requires_grad_(False)
            warm_up(learner)
            entry.learner = learner
        except CheckpointError as error:
            entry.problem = f"checkpoint cannot be used: {error}"
        except Exception as error:  # noqa: BLE001 - one broken file must not take the app down
            entry.problem = f"checkpoint cannot be used: {type(error).__name__}: {error}"
        entries[name] = entry
    return entries
