import tracemalloc

import numpy as np
import pytest

from fedlab.core.errors import DataError
from fedlab.data import FederatedData, make_synthetic


def _pool(data: FederatedData, clients: range) -> tuple[np.ndarray, np.ndarray]:
    parts = [data.client(k) for k in clients]
    return np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])


def test_synthetic_shapes_and_sizes() -> None:
    d = make_synthetic(alpha=0.5, beta=0.5, num_clients=30, mean_samples=50, seed=0)
    assert isinstance(d, FederatedData)
    assert d.num_classes == 10 and d.feature_shape == (60,) and d.num_clients == 30
    c = d.client(3)
    assert c.x.shape == (d.client_size(3), 60) and c.x.dtype == np.float32 and c.y.dtype == np.int64
    assert d.client_sizes().min() >= 10
    # Test set: 20 fresh examples from each of the first min(num_clients, 50) clients.
    assert len(d.test) == 30 * 20 and d.test.feature_shape == (60,)


def test_client_data_is_deterministic_in_seed_and_index() -> None:
    kw = {"alpha": 1.0, "beta": 1.0, "num_clients": 100, "mean_samples": 40}
    a = make_synthetic(seed=7, **kw).client(42)
    b = make_synthetic(seed=7, **kw).client(42)
    c = make_synthetic(seed=8, **kw).client(42)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)


def test_client_does_not_depend_on_other_materialized_clients() -> None:
    kw = {"alpha": 1.0, "beta": 1.0, "num_clients": 50, "mean_samples": 40, "seed": 1}
    fresh = make_synthetic(**kw).client(9)
    busy = make_synthetic(**kw)
    for k in (0, 30, 9, 49, 8):
        busy.client(k)
    again = busy.client(9)
    assert np.array_equal(fresh.x, again.x) and np.array_equal(fresh.y, again.y)


def test_test_set_is_held_out_from_training_samples() -> None:
    d = make_synthetic(alpha=0.0, beta=0.0, num_clients=3, mean_samples=30, seed=2)
    train_rows = {row.tobytes() for k in range(3) for row in d.client(k).x}
    assert not any(row.tobytes() in train_rows for row in d.test.x)


def _fit_linear(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares linear classifier on one-hot targets (with a bias column)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    return np.linalg.lstsq(design, np.eye(10)[y], rcond=None)[0]


def _accuracy(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(np.hstack([x, np.ones((len(x), 1))]) @ weights, axis=1) == y).mean())


def test_iid_variant_shares_one_model_and_non_iid_does_not() -> None:
    kw = {"alpha": 1.0, "beta": 1.0, "num_clients": 40, "mean_samples": 60, "seed": 1}
    scores = {}
    for iid in (True, False):
        data = make_synthetic(iid=iid, **kw)
        weights = _fit_linear(*_pool(data, range(20)))
        scores[iid] = _accuracy(weights, *_pool(data, range(20, 40)))  # clients never seen in the fit
    assert scores[True] > 0.5  # chance is 0.1; measured 0.62-0.70 over seeds 0-4
    assert scores[False] < 0.25  # measured 0.03-0.14


def test_million_clients_construct_lazily() -> None:
    # No client's examples exist until asked for: a million clients' metadata fits in 64 MiB,
    # where their examples (about 10^8 of them) would take gigabytes. (Timings: benchmarks/sim_scale.py.)
    tracemalloc.start()
    d = make_synthetic(alpha=1.0, beta=1.0, num_clients=1_000_000, mean_samples=100, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20
    assert d.num_clients == 1_000_000 and len(d.client(999_999)) == d.client_size(999_999)
    assert 80 < d.client_sizes().mean() < 130


def test_client_sizes_view_is_read_only() -> None:
    d = make_synthetic(alpha=1.0, beta=1.0, num_clients=5, mean_samples=20, seed=0)
    with pytest.raises(ValueError):
        d.client_sizes()[0] = 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"alpha": -1.0}, "data.synthetic_alpha"),
        ({"beta": float("nan")}, "data.synthetic_beta"),
        ({"num_clients": 0}, "data.num_clients"),
        ({"mean_samples": 0}, "data.synthetic_mean_samples"),
    ],
)
def test_bad_synthetic_arguments_raise_data_error(kwargs: dict[str, float], key: str) -> None:
    args = {"alpha": 1.0, "beta": 1.0, "num_clients": 5, "mean_samples": 20, "seed": 0} | kwargs
    with pytest.raises(DataError, match=f"^{key}: "):
        make_synthetic(**args)  # type: ignore[arg-type]


def test_client_index_out_of_range() -> None:
    d = make_synthetic(alpha=1.0, beta=1.0, num_clients=5, mean_samples=20, seed=0)
    with pytest.raises(IndexError):
        d.client(5)


def test_non_iid_labels_carry_no_signal_to_unseen_clients_but_iid_labels_do() -> None:
    """Why a user-level-DP global model cannot learn non-IID Synthetic(alpha, beta).

    The offset u_k adds the same amount to every class score, so it cancels in the argmax: each
    client labels with its own independent random linear model. A model trained centrally on 200
    clients' pooled data is no better than chance on 50 clients it never saw; on Synthetic-IID
    (one shared model) the same learner generalises.
    """
    from sklearn.linear_model import LogisticRegression

    for iid, low, high in ((False, 0.0, 0.2), (True, 0.7, 1.0)):
        fed = make_synthetic(alpha=0.5, beta=0.5, num_clients=250, mean_samples=50, seed=0, iid=iid)
        x, y = _pool(fed, range(200))
        x_unseen, y_unseen = _pool(fed, range(200, 250))
        model = LogisticRegression(max_iter=500).fit(x, y)
        assert low <= model.score(x_unseen, y_unseen) <= high, iid
