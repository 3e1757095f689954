"""Federated averaging of additive updates (McMahan et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedlab.core.update import Update, weighted_mean


def apply_fedavg(global_weights: Sequence[np.ndarray], updates: Sequence[Update]) -> list[np.ndarray]:
    """Return the new global weights: the old ones plus the weighted mean of the deltas.

    Each update carries a delta (local weights minus the global weights it was trained
    from) and its weight (FedAvg weights by number of examples).

    Args:
        global_weights: The global model the clients started from.
        updates: The clients' deltas, at least one.

    Returns:
        New global weights, float32.

    Raises:
        ValueError: If there are no updates or their shapes do not match the model.

    >>> g = [np.zeros(2, dtype=np.float32)]
    >>> u = [Update((np.array([1.0, 2.0]),), num_examples=1, weight=1.0),
    ...      Update((np.array([3.0, 2.0]),), num_examples=3, weight=3.0)]
    >>> apply_fedavg(g, u)[0].tolist()
    [2.5, 2.0]

    """
    return apply_delta(global_weights, fedavg_delta(global_weights, updates))


def fedavg_delta(global_weights: Sequence[np.ndarray], updates: Sequence[Update]) -> list[np.ndarray]:
    """The weighted mean of the deltas (float64), checked against the model's shapes.

    Raises:
        ValueError: If there are no updates or their shapes do not match the model.

    >>> u = [Update((np.array([1.0]),), num_examples=1, weight=1.0),
    ...      Update((np.array([4.0]),), num_examples=2, weight=2.0)]
    >>> fedavg_delta([np.zeros(1)], u)[0].tolist()
    [3.0]
    """
    mean = weighted_mean(list(updates))
    if [m.shape for m in mean] != [np.shape(g) for g in global_weights]:
        raise ValueError("update shapes do not match the global model")
    return mean


def apply_delta(weights: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The new global weights ``weights + delta``, added in float64 and stored as float32.

    >>> apply_delta([np.ones(2, np.float32)], [np.array([0.5, -1.0])])[0].tolist()
    [1.5, 0.0]
    """
    return [
        (np.asarray(w, dtype=np.float64) + d).astype(np.float32) for w, d in zip(weights, delta, strict=True)
    ]
