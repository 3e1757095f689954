"""Fixtures for the training tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def digits_like():
    """144 random 1x8x8 'images' with 10 labels, the size of one digits client."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(144, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=144).astype(np.int64)
    return x, y
