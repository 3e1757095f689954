"""The one additive update type that clipping, noising, masking and summing act on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Update:
    """A client's model update: privacy-sensitive arrays plus public metadata.

    Attributes:
        arrays: The model delta (local weights minus global weights), one array per
            parameter tensor. These are the privacy-sensitive values.
        num_examples: Number of local training examples (public metadata).
        weight: Aggregation weight (public metadata); FedAvg uses ``num_examples``.

    """

    arrays: tuple[np.ndarray, ...]
    num_examples: int
    weight: float = 1.0

    def l2_norm(self) -> float:
        """Return the L2 norm of all arrays taken together as one vector.

        >>> Update((np.array([3.0]), np.array([4.0])), num_examples=1).l2_norm()
        5.0
        """
        return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in self.arrays)))


def weighted_mean(updates: list[Update]) -> list[np.ndarray]:
    """Return the weighted mean of the updates' arrays, weighted by ``weight``.

    Args:
        updates: Non-empty list of updates with identical array shapes.

    Returns:
        One float32 array per parameter tensor.

    Raises:
        ValueError: If ``updates`` is empty, the shapes differ or all weights are 0.

    >>> a = Update((np.array([1.0, 1.0]),), num_examples=1, weight=1.0)
    >>> b = Update((np.array([4.0, 7.0]),), num_examples=3, weight=3.0)
    >>> [x.tolist() for x in weighted_mean([a, b])]
    [[3.25, 5.5]]

    """
    if not updates:
        raise ValueError("cannot average zero updates")
    shapes = [tuple(a.shape for a in u.arrays) for u in updates]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("updates have different array shapes")
    total = float(sum(u.weight for u in updates))
    if total <= 0.0:
        raise ValueError("sum of update weights must be positive")
    out = [np.zeros(a.shape, dtype=np.float64) for a in updates[0].arrays]
    for u in updates:
        for acc, arr in zip(out, u.arrays, strict=True):
            acc += (u.weight / total) * arr.astype(np.float64)
    return [a.astype(np.float32) for a in out]


def example_weight(num_examples: int, cap: int | None) -> float:
    """A client's weight in plain secure FedAvg: min(examples, cap) / cap, in [0, 1]; 1 if uniform.

    The client multiplies its delta by it before encoding (so the clip range still bounds every
    encoded value) and the server divides the secure sum by the included clients' total weight,
    which it computes from their public example counts.

    >>> example_weight(250, 1000), example_weight(5000, 1000), example_weight(7, None)
    (0.25, 1.0, 1.0)
    """
    if cap is None:
        return 1.0
    if cap < 1 or num_examples < 0:
        raise ValueError(f"need cap >= 1 and num_examples >= 0, got {cap}, {num_examples}")
    return min(num_examples, cap) / cap
