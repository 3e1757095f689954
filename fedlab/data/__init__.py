"""Data sets and their federated splits: the bottom layer, numpy only (no torch, no flwr).

A :class:`FederatedData` is per-client training data plus a central test set.
:func:`build_federated_data` turns a ``[data]`` config section into one: the bundled
scikit-learn digits, local files (an image folder per class, CSV or Parquet) split
with Flower Datasets' partitioners (IID, Dirichlet, shards), or FedProx's
Synthetic(alpha, beta) generated lazily per client (10^6 clients cost a few MB).
Every random draw is seeded explicitly; bad input raises
:class:`~fedlab.core.errors.DataError` with a one-line message naming the config key.
"""

from fedlab.data.digits import load_digits_dataset
from fedlab.data.federated import build_federated_data, check_batch_size, smallest_client_size, split_dataset
from fedlab.data.files import load_local_files
from fedlab.data.partition import PARTITION_KINDS, partition_indices, train_test_split_indices
from fedlab.data.synthetic import SyntheticFederatedData, make_synthetic
from fedlab.data.types import ArrayDataset, FederatedData, HasClientSizes, PartitionedData

__all__ = [
    "PARTITION_KINDS",
    "ArrayDataset",
    "FederatedData",
    "HasClientSizes",
    "PartitionedData",
    "SyntheticFederatedData",
    "build_federated_data",
    "check_batch_size",
    "load_digits_dataset",
    "load_local_files",
    "make_synthetic",
    "partition_indices",
    "smallest_client_size",
    "split_dataset",
    "train_test_split_indices",
]
