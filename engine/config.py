"""Configuration types shared by the library and its commands.

``TrainConfig`` (the training run's own settings) lives here rather than in ``engine.train``'s
command-line module, so the learners can take it as an argument without importing the CLI.
The algorithms' hyper-parameters live in their config classes (``engine.learners``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.data.omniglot import DEFAULT_PIPELINE, LEGACY_PIPELINE


@dataclass
class TrainConfig:
    """Settings of the training run itself (the algorithm's own live in its config class)."""

    ways: int = 5
    shots: int = 1
    queries: int = 5
    meta_batch: int = 16
    meta_steps: int = 1000
    rotations: bool = True
    val_ways: int = 5
    val_shots: int = 1
    val_queries: int = 5
    val_tasks: int = 100
    val_every: int = 100
    checkpoint_minutes: float = 3.0
    seed: int = 0
    # Which characters train, validate and test (engine.data.omniglot.load_splits): "alphabets"
    # (ours: unseen test alphabets), "background" (ours, training on the validation alphabets too)
    # or "characters" (the papers' random character split).
    split_scheme: str = "alphabets"
    # How each drawing becomes a 28x28 (engine.data.omniglot.PIPELINES): "canonical" is the app's own
    # preprocessing, so training sees what users' drawings look like to the network.
    pipeline: str = DEFAULT_PIPELINE
    # Strength of the handwriting augmentation of every training image (engine.data.augment); 0: none.
    augment: float = 1.0
    # Fraction of training episodes whose classes all come from one alphabet (engine.data.tasks'
    # sample_training_task): the look-alike classes of Lake et al.'s within-alphabet benchmark.
    within_alphabet: float = 0.0


LEGACY_TRAIN_SETTINGS: dict[str, Any] = {"pipeline": LEGACY_PIPELINE, "augment": 0.0, "within_alphabet": 0.0}
"""What a run whose saved settings predate a field did: resuming it keeps doing that, and results compare it so."""


__all__ = ["LEGACY_TRAIN_SETTINGS", "TrainConfig"]
