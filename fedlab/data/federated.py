"""From a validated ``[data]`` config section to a :class:`FederatedData`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedlab.core.config import DataSection
from fedlab.core.errors import DataError
from fedlab.data.digits import load_digits_dataset
from fedlab.data.files import load_local_files
from fedlab.data.hub import load_hub_splits
from fedlab.data.partition import partition_indices, train_test_split_indices
from fedlab.data.synthetic import make_synthetic
from fedlab.data.text import TEXT_DATASETS, load_text
from fedlab.data.types import ArrayDataset, FederatedData, HasClientSizes, PartitionedData

# Purposes of the seeds derived from the run seed (spawn keys).
_SPLIT_SEED = 0
_PARTITION_SEED = 1


def _derived_seed(seed: int, purpose: int) -> int:
    """Return an independent 32-bit seed for one purpose, a pure function of ``(seed, purpose)``."""
    return int(np.random.SeedSequence(seed, spawn_key=(purpose,)).generate_state(1)[0])


def build_federated_data(section: DataSection, *, seed: int) -> FederatedData:
    """Load and split the configured data set among ``section.num_clients`` clients.

    ``digits`` and ``files``: a stratified ``test_fraction`` is held out as the central
    test set and the rest is split by ``section.partitioner``. ``synthetic``: FedProx
    Synthetic(``synthetic_alpha``, ``synthetic_beta``) with natural per-client data,
    IID when ``partitioner = "iid"``, client sizes lognormal around
    ``synthetic_mean_samples`` and at least ``min_partition_size``. ``text`` and ``stdlib``:
    next-token prediction, a client per file or subfolder (:func:`~fedlab.data.text.load_text`).
    ``hub``: the hub data set's split partitioned, its test split (if any) as the test set.

    Args:
        section: The validated ``[data]`` section.
        seed: The run seed (>= 0); the result is a pure function of it and ``section``.

    Raises:
        DataError: If the data cannot be loaded or split as configured.

    """
    if seed < 0:
        raise DataError(f"run.seed: must be >= 0; got {seed}")
    if section.dataset == "synthetic":
        return make_synthetic(
            alpha=section.synthetic_alpha,
            beta=section.synthetic_beta,
            num_clients=section.num_clients,
            mean_samples=section.synthetic_mean_samples,
            seed=seed,
            iid=section.partitioner == "iid",
            min_samples=section.min_partition_size,
        )
    if section.dataset in TEXT_DATASETS:
        return load_text(section)
    if section.dataset == "hub":
        pool, test = load_hub_splits(section)
        if test is not None:
            return _partitioned(pool, test, section, seed=seed)
        return split_dataset(pool, section, seed=seed)
    return split_dataset(_load_pool(section), section, seed=seed)


def _load_pool(section: DataSection) -> ArrayDataset:
    if section.dataset == "digits":
        return load_digits_dataset()
    if section.dataset == "files":
        return load_local_files(Path(section.path), label_column=section.label_column)
    raise DataError(f"data.dataset: cannot build {section.dataset!r} here")


def split_dataset(pool: ArrayDataset, section: DataSection, *, seed: int) -> PartitionedData:
    """Hold out a stratified test set from ``pool`` and partition the rest among clients.

    Args:
        pool: Every available example.
        section: The ``[data]`` section (test fraction, partitioner and its keys).
        seed: The run seed (>= 0).

    Raises:
        DataError: If the split or the partitioning is impossible.

    """
    train_idx, test_idx = train_test_split_indices(
        len(pool), test_fraction=section.test_fraction, seed=_derived_seed(seed, _SPLIT_SEED), labels=pool.y
    )
    return _partitioned(pool.subset(train_idx), pool.subset(test_idx), section, seed=seed)


def _partitioned(
    train: ArrayDataset, test: ArrayDataset, section: DataSection, *, seed: int
) -> PartitionedData:
    """Partition ``train`` among ``section.num_clients`` clients by ``section.partitioner``."""
    parts = partition_indices(
        train.y,
        kind=section.partitioner,
        num_partitions=section.num_clients,
        seed=_derived_seed(seed, _PARTITION_SEED),
        dirichlet_alpha=section.dirichlet_alpha,
        shards_per_partition=section.shards_per_client,
        min_partition_size=section.min_partition_size,
    )
    return PartitionedData(train=train, partitions=tuple(parts), test=test)


def smallest_client_size(data: FederatedData) -> int:
    """Return the size of the smallest client, without materializing any client's data."""
    if isinstance(data, HasClientSizes):
        return int(data.client_sizes().min())
    return min(data.client_size(i) for i in range(data.num_clients))


def check_batch_size(data: FederatedData, batch_size: int) -> None:
    """Check that every client has at least ``batch_size`` examples.

    Args:
        data: The federated data.
        batch_size: The configured ``train.batch_size``.

    Raises:
        DataError: If ``batch_size`` is below 1 or larger than the smallest client.

    """
    if batch_size < 1:
        raise DataError(f"train.batch_size: must be >= 1; got {batch_size}")
    smallest = smallest_client_size(data)
    if batch_size > smallest:
        raise DataError(
            f"train.batch_size: {batch_size} is larger than the smallest client partition "
            f"({smallest} examples)"
        )
