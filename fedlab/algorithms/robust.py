"""Combining a round's updates: FedAvg, or an aggregate a minority of bad clients cannot steer.

``median`` and ``trimmed_mean`` work coordinate by coordinate and ignore example counts (a client
could lie about them); ``norm_bounded`` scales each update to L2 norm at most the bound before
FedAvg, so no client moves the model by more than its weight times the bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedlab.algorithms.fedavg import apply_delta, fedavg_delta
from fedlab.core.choices import AggregationKind
from fedlab.core.update import Update


def _stacked(updates: Sequence[Update], index: int) -> np.ndarray:
    return np.stack([np.asarray(u.arrays[index], dtype=np.float64) for u in updates])


def coordinate_median(updates: Sequence[Update]) -> list[np.ndarray]:
    """The coordinate-wise median of the updates' arrays.

    >>> ups = [Update((np.array([1.0, 0.0]),), 1), Update((np.array([2.0, 5.0]),), 1),
    ...        Update((np.array([100.0, 1.0]),), 1)]
    >>> coordinate_median(ups)[0].tolist()
    [2.0, 1.0]
    """
    return [np.median(_stacked(updates, i), axis=0) for i in range(len(updates[0].arrays))]


def trimmed_mean(updates: Sequence[Update], trim_fraction: float) -> list[np.ndarray]:
    """The coordinate-wise mean after dropping ``floor(trim_fraction * n)`` values at each end.

    >>> ups = [Update((np.array([v]),), 1) for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    >>> trimmed_mean(ups, 0.2)[0].tolist()
    [3.0]
    """
    n = len(updates)
    cut = math.floor(trim_fraction * n)
    out = []
    for i in range(len(updates[0].arrays)):
        values = np.sort(_stacked(updates, i), axis=0)
        out.append(values[cut : n - cut].mean(axis=0))
    return out


def norm_bounded(updates: Sequence[Update], bound: float) -> list[Update]:
    """Each update scaled to L2 norm at most ``bound`` (its weight kept).

    >>> norm_bounded([Update((np.array([3.0, 4.0]),), 1)], 1.0)[0].l2_norm()
    1.0
    """
    scaled = []
    for u in updates:
        norm = u.l2_norm()
        factor = min(1.0, bound / norm) if norm > 0.0 else 1.0
        scaled.append(
            Update(tuple(np.asarray(a, np.float64) * factor for a in u.arrays), u.num_examples, u.weight)
        )
    return scaled


def aggregate(
    weights: Sequence[np.ndarray],
    updates: Sequence[Update],
    *,
    kind: AggregationKind = AggregationKind.FEDAVG,
    trim_fraction: float = 0.1,
    norm_bound: float | None = None,
) -> list[np.ndarray]:
    """The new global weights: ``weights`` plus the ``kind`` aggregate of the (valid) updates.

    Raises:
        ValueError: If there are no updates, or ``norm_bounded`` has no bound.

    >>> g = [np.zeros(1, np.float32)]
    >>> ups = [Update((np.array([v]),), 1) for v in (1.0, 2.0, 30.0)]
    >>> aggregate(g, ups, kind=AggregationKind.MEDIAN)[0].tolist()
    [2.0]
    """
    return apply_delta(
        weights,
        aggregate_delta(weights, updates, kind=kind, trim_fraction=trim_fraction, norm_bound=norm_bound),
    )


def aggregate_delta(
    weights: Sequence[np.ndarray],
    updates: Sequence[Update],
    *,
    kind: AggregationKind = AggregationKind.FEDAVG,
    trim_fraction: float = 0.1,
    norm_bound: float | None = None,
) -> list[np.ndarray]:
    """The ``kind`` aggregate of the (valid) updates: the round's delta for the server optimizer.

    Raises:
        ValueError: If there are no updates, their shapes do not match ``weights``, or
            ``norm_bounded`` has no bound.

    >>> ups = [Update((np.array([v]),), 1) for v in (1.0, 2.0, 30.0)]
    >>> aggregate_delta([np.zeros(1)], ups, kind=AggregationKind.TRIMMED_MEAN, trim_fraction=0.34)[0].tolist()
    [2.0]
    """
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    if kind is AggregationKind.FEDAVG:
        return fedavg_delta(weights, updates)
    if kind is AggregationKind.NORM_BOUNDED:
        if norm_bound is None:
            raise ValueError("norm_bounded aggregation needs a bound")
        return fedavg_delta(weights, norm_bounded(updates, norm_bound))
    if kind is AggregationKind.MEDIAN:
        return coordinate_median(updates)
    return trimmed_mean(updates, trim_fraction)
