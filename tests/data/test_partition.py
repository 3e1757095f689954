import numpy as np
import pytest

from fedlab.core.errors import DataError
from fedlab.data import load_digits_dataset, partition_indices, train_test_split_indices

KINDS = ["iid", "dirichlet", "shards"]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return load_digits_dataset().y


def _label_histograms(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    counts = np.stack([np.bincount(labels[p], minlength=10) for p in parts]).astype(float)
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
def test_partitions_are_disjoint_cover_and_respect_min_size(labels: np.ndarray, kind: str) -> None:
    parts = partition_indices(labels, kind=kind, num_partitions=10, seed=1, min_partition_size=20)
    joined = np.concatenate(parts)
    assert len(parts) == 10
    assert joined.size == labels.size and np.array_equal(np.sort(joined), np.arange(labels.size))
    assert min(p.size for p in parts) >= 20
    assert all(p.dtype == np.int64 for p in parts)


@pytest.mark.parametrize("kind", KINDS)
def test_partitions_are_deterministic_per_seed_and_differ_across_seeds(labels: np.ndarray, kind: str) -> None:
    a = partition_indices(labels, kind=kind, num_partitions=8, seed=5)
    b = partition_indices(labels, kind=kind, num_partitions=8, seed=5)
    c = partition_indices(labels, kind=kind, num_partitions=8, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_differ_by_at_most_one(labels: np.ndarray) -> None:
    sizes = [p.size for p in partition_indices(labels, kind="iid", num_partitions=7, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_visibly_non_iid(labels: np.ndarray) -> None:
    global_hist = np.bincount(labels, minlength=10) / labels.size

    def mean_tv_distance(parts: list[np.ndarray]) -> float:
        return float(0.5 * np.abs(_label_histograms(labels, parts) - global_hist).sum(axis=1).mean())

    iid = mean_tv_distance(partition_indices(labels, kind="iid", num_partitions=10, seed=0))
    skewed = mean_tv_distance(
        partition_indices(labels, kind="dirichlet", num_partitions=10, seed=0, dirichlet_alpha=0.1)
    )
    assert iid < 0.1 and skewed > 0.4


def test_shards_give_few_labels_per_client(labels: np.ndarray) -> None:
    parts = partition_indices(labels, kind="shards", num_partitions=10, seed=0, shards_per_partition=2)
    # Two label-sorted shards span at most four labels (each may straddle a boundary).
    assert max(np.unique(labels[p]).size for p in parts) <= 4


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"kind": "iid", "num_partitions": 2000}, "data.num_clients"),
        ({"kind": "shards", "num_partitions": 180, "min_partition_size": 10}, "data.num_clients"),
        ({"kind": "dirichlet", "num_partitions": 100, "dirichlet_alpha": 0.05}, "data.min_partition_size"),
        ({"kind": "shards", "num_partitions": 170, "shards_per_partition": 2}, "data.min_partition_size"),
        ({"kind": "pathological", "num_partitions": 2}, "data.partitioner"),
        ({"kind": "iid", "num_partitions": 0}, "data.num_clients"),
        ({"kind": "dirichlet", "num_partitions": 2, "dirichlet_alpha": 0.0}, "data.dirichlet_alpha"),
    ],
)
def test_impossible_partitions_raise_data_error_naming_the_key(
    labels: np.ndarray, kwargs: dict[str, object], key: str
) -> None:
    with pytest.raises(DataError, match=f"^{key}: ") as info:
        partition_indices(labels, seed=0, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_train_test_split_is_disjoint_covering_and_stratified(labels: np.ndarray) -> None:
    train, test = train_test_split_indices(labels.size, test_fraction=0.2, seed=3, labels=labels)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(labels.size))
    assert test.size == int(np.ceil(0.2 * labels.size))
    expected = np.bincount(labels) * 0.2
    assert np.all(np.abs(np.bincount(labels[test], minlength=10) - expected) <= 1)


def test_train_test_split_deterministic_and_seed_dependent() -> None:
    a = train_test_split_indices(100, test_fraction=0.3, seed=1)
    b = train_test_split_indices(100, test_fraction=0.3, seed=1)
    c = train_test_split_indices(100, test_fraction=0.3, seed=2)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])


def test_train_test_split_falls_back_when_a_class_is_a_singleton() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    train, test = train_test_split_indices(9, test_fraction=0.34, seed=0, labels=y)
    assert train.size + test.size == 9 and test.size == 4


@pytest.mark.parametrize(("n", "fraction", "key"), [(1, 0.5, "data: "), (10, 1.0, "data.test_fraction: ")])
def test_train_test_split_rejects_bad_arguments(n: int, fraction: float, key: str) -> None:
    with pytest.raises(DataError, match=f"^{key}"):
        train_test_split_indices(n, test_fraction=fraction, seed=0)
