"""Sampling by index draws the same clients as sampling over id strings."""

import numpy as np
import pytest

from fedlab.algorithms.sampling import sample_fraction, sample_indices, sample_poisson


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [1, 7, 100, 20000])
@pytest.mark.parametrize("fraction", [0.01, 0.3, 1.0])
def test_fraction_and_poisson_sampling_match_the_id_samplers(seed, n, fraction):
    available = np.sort(np.random.default_rng(seed + 99).choice(3 * n, size=n, replace=False))
    ids = [str(i) for i in available[::-1]]  # any listing order
    for pool in (available, n):
        names = ids if isinstance(pool, np.ndarray) else [str(i) for i in range(n)]
        got = sample_indices(pool, mode="fraction", fraction=fraction, rng=np.random.default_rng(seed))
        assert [str(i) for i in got] == sample_fraction(
            names, fraction=fraction, rng=np.random.default_rng(seed)
        )
        got = sample_indices(pool, mode="poisson", fraction=fraction, rng=np.random.default_rng(seed))
        assert [str(i) for i in got] == sample_poisson(names, rate=fraction, rng=np.random.default_rng(seed))
