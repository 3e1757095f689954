import numpy as np
import pytest

from fedlab.algorithms.fedavg import apply_fedavg
from fedlab.algorithms.sampling import sample_fraction
from fedlab.core.update import Update


def test_fedavg_of_deltas_equals_weighted_average_of_local_models():
    rng = np.random.default_rng(3)
    global_w = [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)]
    local_models = [[g + rng.normal(size=g.shape).astype(np.float32) for g in global_w] for _ in range(5)]
    sizes = [3, 10, 1, 7, 4]
    updates = [
        Update(tuple(lw - g for lw, g in zip(m, global_w, strict=True)), num_examples=n, weight=float(n))
        for m, n in zip(local_models, sizes, strict=True)
    ]
    new = apply_fedavg(global_w, updates)
    expected = [
        sum(n * m[i] for m, n in zip(local_models, sizes, strict=True)) / sum(sizes) for i in range(2)
    ]
    for got, want in zip(new, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fedavg_rejects_mismatched_shapes_and_empty_rounds():
    with pytest.raises(ValueError):
        apply_fedavg([np.zeros(2)], [])
    with pytest.raises(ValueError):
        apply_fedavg([np.zeros(2)], [Update((np.zeros(3),), num_examples=1)])


def test_sampling_is_seeded_distinct_and_sized():
    ids = [str(i) for i in range(100)]
    a = sample_fraction(ids, fraction=0.2, rng=np.random.default_rng(1))
    b = sample_fraction(ids, fraction=0.2, rng=np.random.default_rng(1))
    c = sample_fraction(ids, fraction=0.2, rng=np.random.default_rng(2))
    assert a == b != c
    assert len(a) == 20 == len(set(a))
    assert sample_fraction(ids, fraction=0.001, rng=np.random.default_rng(0)) != []
    shuffled = list(reversed(ids))
    assert sample_fraction(shuffled, fraction=0.2, rng=np.random.default_rng(1)) == a, (
        "listing order is irrelevant"
    )
