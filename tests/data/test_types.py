import numpy as np
import pytest

from fedlab.core.errors import DataError
from fedlab.data import ArrayDataset, FederatedData, PartitionedData


def _dataset(n: int = 6) -> ArrayDataset:
    return ArrayDataset(np.arange(n * 2, dtype=np.float64).reshape(n, 2), np.arange(n) % 3, num_classes=3)


def test_array_dataset_converts_dtypes_and_reports_shape() -> None:
    d = _dataset()
    assert d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert len(d) == 6 and d.feature_shape == (2,)


def test_subset_selects_rows_and_keeps_classes() -> None:
    d = _dataset()
    s = d.subset(np.array([4, 1]))
    assert s.y.tolist() == [1, 1] and s.x[0].tolist() == [8.0, 9.0] and s.num_classes == 3


@pytest.mark.parametrize(
    ("x", "y", "k"),
    [
        (np.zeros((3, 2)), np.zeros(2), 2),  # row mismatch
        (np.zeros((2, 2)), np.array([0, 2]), 2),  # label out of range
        (np.zeros((2, 2)), np.array([-1, 0]), 2),  # negative label
        (np.zeros((2, 2)), np.zeros((2, 1)), 2),  # labels not 1-D
        (np.zeros((2, 2)), np.zeros(2), 0),  # no classes
    ],
)
def test_array_dataset_rejects_inconsistent_arrays(x: np.ndarray, y: np.ndarray, k: int) -> None:
    with pytest.raises(DataError):
        ArrayDataset(x, y, num_classes=k)


def test_partitioned_data_is_federated_data_and_lazy_per_client() -> None:
    d = _dataset()
    fed = PartitionedData(
        train=d, partitions=(np.array([0, 1]), np.array([2, 3, 4])), test=d.subset(np.array([5]))
    )
    assert isinstance(fed, FederatedData)
    assert fed.num_clients == 2 and fed.num_classes == 3 and fed.feature_shape == (2,)
    assert fed.client_size(1) == 3 and fed.client(1).y.tolist() == [2, 0, 1]
    assert fed.client_sizes().tolist() == [2, 3]
    with pytest.raises(IndexError):
        fed.client(2)
