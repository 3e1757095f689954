"""Robust aggregates: a minority of arbitrary updates cannot move them outside the honest values."""

import numpy as np
import pytest

from fedlab.algorithms.robust import aggregate, coordinate_median, norm_bounded, trimmed_mean
from fedlab.core.choices import AggregationKind
from fedlab.core.update import Update


def updates(values) -> list[Update]:
    return [Update((np.asarray(v, dtype=np.float64),), num_examples=1, weight=1.0) for v in values]


@pytest.mark.parametrize("hostile", [1e6, -1e6, 3.0])
def test_median_and_trimmed_mean_stay_within_the_honest_range(hostile: float) -> None:
    rng = np.random.default_rng(0)
    honest = rng.normal(0.0, 1.0, size=(8, 5))
    values = [*honest, np.full(5, hostile), np.full(5, hostile)]  # 2 of 10 hostile
    low, high = honest.min(axis=0), honest.max(axis=0)
    for robust in (coordinate_median(updates(values))[0], trimmed_mean(updates(values), 0.2)[0]):
        assert np.all(robust >= low) and np.all(robust <= high)


def test_fedavg_is_moved_without_bound_by_one_client() -> None:
    mean = aggregate([np.zeros(1, np.float32)], updates([[0.0], [0.0], [1e6]]))[0]
    assert mean[0] > 1e5  # the reason for the robust choices


def test_trimmed_mean_with_no_trim_is_the_mean_and_median_of_an_odd_count_is_the_middle() -> None:
    values = [[1.0], [2.0], [9.0]]
    assert trimmed_mean(updates(values), 0.0)[0].tolist() == [4.0]
    assert coordinate_median(updates(values))[0].tolist() == [2.0]


def test_norm_bounded_moves_the_model_by_at_most_the_bound() -> None:
    ups = updates([[30.0, 40.0], [0.3, 0.4]])
    assert [round(u.l2_norm(), 9) for u in norm_bounded(ups, 1.0)] == [1.0, 0.5]
    new = aggregate([np.zeros(2, np.float32)], ups, kind=AggregationKind.NORM_BOUNDED, norm_bound=1.0)
    assert float(np.linalg.norm(new[0])) <= 1.0 + 1e-6
