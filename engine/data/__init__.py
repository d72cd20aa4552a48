"""Omniglot data: loading, few-shot task sampling, user-image preprocessing, download."""

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

__all__ = [
    "VALIDATION_ALPHABETS",
    "CharacterSet",
    "DatasetNotFoundError",
    "Splits",
    "load_split",
    "load_splits",
    "omniglot_to_28",
    "to_tensor",
]
