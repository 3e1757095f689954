"""Client sampling for a round, drawn from an explicit generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_fraction(ids: Sequence[int], *, fraction: float, rng: np.random.Generator) -> list[int]:
    """Sample ``max(1, round(fraction * len(ids)))`` distinct ids uniformly without replacement.

    Args:
        ids: The available client ids.
        fraction: Fraction of clients to take, in (0, 1].
        rng: The generator every draw comes from.

    Returns:
        The sampled ids in ascending order.

    >>> sample_fraction([5, 6, 7], fraction=1.0, rng=np.random.default_rng(0))
    [5, 6, 7]

    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    pool = sorted(ids)
    if not pool:
        return []
    count = max(1, round(fraction * len(pool)))
    chosen = rng.choice(len(pool), size=count, replace=False)
    return sorted(pool[i] for i in chosen)
