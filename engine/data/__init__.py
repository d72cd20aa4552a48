"""Omniglot data: loading, few-shot task sampling, user-image preprocessing, download.

Submodules: :mod:`~engine.data.omniglot` (loader + cache), :mod:`~engine.data.tasks`
(episode sampling), :mod:`~engine.data.loader` (meta-training batches keyed by step, drawn in
DataLoader workers, split across processes), :mod:`~engine.data.preprocess` (user images -> 28x28),
:mod:`~engine.data.download` (official release); ``python -m engine.data`` is the CLI.
"""

from engine.data.omniglot import (
    VALIDATION_ALPHABETS,
    CharacterSet,
    DatasetNotFoundError,
    Splits,
    load_split,
    load_splits,
    omniglot_to_28,
    to_tensor,
)
from engine.data.preprocess import ImagePreprocessError, preprocess_image, preprocess_many
from engine.data.tasks import Task, fixed_tasks, sample_task, task_stream

__all__ = [
    "VALIDATION_ALPHABETS",
    "CharacterSet",
    "DatasetNotFoundError",
    "ImagePreprocessError",
    "Splits",
    "Task",
    "fixed_tasks",
    "load_split",
    "load_splits",
    "omniglot_to_28",
    "preprocess_image",
    "preprocess_many",
    "sample_task",
    "task_stream",
    "to_tensor",
]
