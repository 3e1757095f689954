from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedlab.core.config import DataSection
from fedlab.core.errors import DataError
from fedlab.data import (
    FederatedData,
    build_federated_data,
    check_batch_size,
    load_digits_dataset,
    make_synthetic,
)


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards"])
def test_digits_end_to_end_with_ten_clients(partitioner: str) -> None:
    data = build_federated_data(
        DataSection(dataset="digits", num_clients=10, partitioner=partitioner), seed=0
    )
    assert isinstance(data, FederatedData)
    assert data.num_clients == 10 and data.num_classes == 10 and data.feature_shape == (1, 8, 8)
    sizes = [data.client_size(i) for i in range(10)]
    assert len(data.test) == 360 and sum(sizes) == 1797 - 360
    assert min(sizes) >= 10
    assert all(len(data.client(i)) == sizes[i] for i in range(10))
    # Same multiset of examples as the whole data set: nothing lost or duplicated.
    all_x = np.concatenate([data.client(i).x for i in range(10)] + [data.test.x])
    assert np.array_equal(
        np.sort(all_x.reshape(len(all_x), -1), axis=0),
        np.sort(load_digits_dataset().x.reshape(1797, -1), axis=0),
    )


def test_build_is_deterministic_per_seed() -> None:
    section = DataSection(num_clients=5, partitioner="dirichlet")
    a, b, c = (build_federated_data(section, seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.client(3).y, b.client(3).y) and np.array_equal(a.test.x, b.test.x)
    assert not np.array_equal(a.test.x, c.test.x)


def test_files_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"]).assign(y=rng.integers(0, 4, 200))
    frame.to_csv(tmp_path / "t.csv", index=False)
    section = DataSection(dataset="files", path=str(tmp_path / "t.csv"), label_column="y", num_clients=4)
    data = build_federated_data(section, seed=0)
    assert data.feature_shape == (3,) and data.num_classes == 4 and len(data.test) == 40
    assert not _rows(data.test.x) & _rows(np.concatenate([data.client(i).x for i in range(4)]))


def test_synthetic_through_config() -> None:
    section = DataSection(dataset="synthetic", num_clients=20, partitioner="iid", min_partition_size=15)
    data = build_federated_data(section, seed=0)
    assert data.num_clients == 20 and data.feature_shape == (60,)
    assert min(data.client_size(i) for i in range(20)) >= 15


def test_too_many_clients_for_digits_names_num_clients() -> None:
    with pytest.raises(DataError, match=r"^data\.num_clients: "):
        build_federated_data(DataSection(num_clients=500), seed=0)


def test_check_batch_size() -> None:
    data = build_federated_data(DataSection(num_clients=10, partitioner="dirichlet"), seed=0)
    smallest = min(data.client_size(i) for i in range(10))
    check_batch_size(data, smallest)
    with pytest.raises(DataError) as info:
        check_batch_size(data, smallest + 1)
    assert str(info.value) == (
        f"train.batch_size: {smallest + 1} is larger than the smallest client partition ({smallest} examples)"
    )


def test_check_batch_size_on_a_million_synthetic_clients_uses_sizes_only() -> None:
    data = make_synthetic(alpha=1.0, beta=1.0, num_clients=1_000_000, mean_samples=100, seed=0)
    check_batch_size(data, 10)  # every client has at least 10 examples
    with pytest.raises(DataError, match=r"\(10 examples\)"):
        check_batch_size(data, 11)
