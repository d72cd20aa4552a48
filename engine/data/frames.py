"""The image operations every 28x28 the network sees ends with, dataset and user images alike.

Kept apart from :mod:`engine.data.omniglot` (loading) and :mod:`engine.data.preprocess` (user images)
because both use them: the loader runs each Omniglot drawing through the user-image pipeline.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SOURCE_SIZE = 105
"""Side of the original Omniglot drawings, in pixels."""
IMAGE_SIZE = 28
"""Side of the images every model sees."""


def omniglot_to_28(img105_float_inkhigh: np.ndarray) -> np.ndarray:
    """Resize an ink-high float frame (105x105 for Omniglot) to 28x28 in [0, 1].

    The single resize used for the dataset *and* for user images, so both share
    exactly the same anti-aliasing (Pillow LANCZOS on a float 'F' image).
    """
    frame = np.ascontiguousarray(img105_float_inkhigh, dtype=np.float32)
    if frame.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {frame.shape}")
    small = Image.fromarray(frame).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)


def to_uint8(images_float: np.ndarray) -> np.ndarray:
    """Quantise [0, 1] floats to uint8 (rounding, not truncating)."""
    return np.rint(np.clip(images_float, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]: the one conversion behind every tensor the network sees
    (task sampling, :func:`engine.data.omniglot.to_tensor`, user images), so that a drawing reaches
    the network as the same float32 values whichever way it came in."""
    return np.asarray(images_uint8).astype(np.float32) / np.float32(255.0)
