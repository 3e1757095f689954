"""The scikit-learn digits data set (1797 8x8 grayscale images, bundled, no download)."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from fedlab.data.types import ArrayDataset

DIGITS_CLASSES = 10
_DIGITS_MAX_PIXEL = 16.0


def load_digits_dataset() -> ArrayDataset:
    """Load scikit-learn's digits as images.

    Returns:
        1797 examples, ``x`` of shape ``(n, 1, 8, 8)`` scaled from 0..16 to
        ``[0, 1]`` (float32), ``y`` the digit 0..9, 10 classes.

    """
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(_DIGITS_MAX_PIXEL)
    x = images.reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return ArrayDataset(x, y, num_classes=DIGITS_CLASSES)
