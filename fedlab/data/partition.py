"""Splitting a labelled data set among clients, and holding out a test set.

Partitioning uses Flower Datasets' partitioners (``IidPartitioner``,
``DirichletPartitioner``, ``ShardPartitioner``) on a small in-memory
``datasets.Dataset`` with one ``label`` and one ``idx`` column, and returns plain
index arrays. Notes on their behaviour that shaped this module:

- ``IidPartitioner`` has no seed and does not shuffle: it cuts the data set into
  contiguous blocks. We shuffle the rows with the seed first.
- ``DirichletPartitioner`` re-draws the proportions until every partition has
  ``min_partition_size`` examples and raises ``ValueError`` after 11 draws (warning on
  each retry); we turn that into a :class:`~fedlab.core.errors.DataError`.
- ``ShardPartitioner`` given ``num_shards_per_partition`` drops the examples that do
  not fill a whole shard (or, with ``keep_incomplete_shard``, a random whole shard).
  We give it a shard size instead, ``ceil(n / (num_partitions * shards_per_partition))``
  with ``keep_incomplete_shard=True``, so every example is used; a few partitions may
  then hold one shard more or less than ``shards_per_partition``. It sorts the data
  set by label, so partitions are read back through the ``idx`` column, never by
  position.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import train_test_split

from fedlab.core.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from flwr_datasets.partitioner import Partitioner

PARTITION_KINDS = ("iid", "dirichlet", "shards")


def partition_indices(
    labels: NDArray[np.integer],
    *,
    kind: str,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float = 0.5,
    shards_per_partition: int = 2,
    min_partition_size: int = 10,
) -> list[NDArray[np.int64]]:
    """Split positions ``0 .. len(labels) - 1`` into disjoint, covering partitions.

    Args:
        labels: One integer label per example.
        kind: ``"iid"`` (uniformly random, sizes differ by at most one),
            ``"dirichlet"`` (per-class proportions ~ Dirichlet(``dirichlet_alpha``);
            small alpha is very non-IID) or ``"shards"`` (label-sorted shards, about
            ``shards_per_partition`` per partition, as in McMahan et al. 2017).
        num_partitions: Number of partitions (clients).
        seed: Seed of every random draw (>= 0); the result is a function of it.
        dirichlet_alpha: Dirichlet concentration (> 0), for ``"dirichlet"``.
        shards_per_partition: Target shards per partition, for ``"shards"``.
        min_partition_size: Smallest allowed partition.

    Returns:
        One sorted int64 array of positions per partition.

    Raises:
        DataError: On a bad argument, or when some partition would be smaller than
            ``min_partition_size`` (naming ``data.num_clients`` or
            ``data.min_partition_size``).

    """
    label_array = _as_labels(labels)
    _check_partition_args(
        n=label_array.shape[0],
        kind=kind,
        num_partitions=num_partitions,
        seed=seed,
        dirichlet_alpha=dirichlet_alpha,
        shards_per_partition=shards_per_partition,
        min_partition_size=min_partition_size,
    )
    order = np.random.default_rng(seed).permutation(label_array.shape[0]) if kind == "iid" else None
    partitioner = _make_partitioner(
        kind,
        n=label_array.shape[0],
        num_partitions=num_partitions,
        seed=seed,
        dirichlet_alpha=dirichlet_alpha,
        shards_per_partition=shards_per_partition,
        min_partition_size=min_partition_size,
    )
    partitioner.dataset = _label_dataset(label_array, order)
    parts = _load_partitions(partitioner, num_partitions, kind=kind, dirichlet_alpha=dirichlet_alpha)
    _check_partition_sizes(parts, kind=kind, min_partition_size=min_partition_size)
    return parts


def _as_labels(labels: NDArray[np.integer]) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] == 0:
        raise DataError(f"data: labels must be a non-empty one-dimensional array; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"data: labels must be integers; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _check_partition_args(
    *,
    n: int,
    kind: str,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float,
    shards_per_partition: int,
    min_partition_size: int,
) -> None:
    if kind not in PARTITION_KINDS:
        raise DataError(f"data.partitioner: must be one of {', '.join(PARTITION_KINDS)}; got {kind!r}")
    if num_partitions < 1:
        raise DataError(f"data.num_clients: must be >= 1; got {num_partitions}")
    if min_partition_size < 1:
        raise DataError(f"data.min_partition_size: must be >= 1; got {min_partition_size}")
    if seed < 0:
        raise DataError(f"run.seed: must be >= 0; got {seed}")
    if not dirichlet_alpha > 0.0:
        raise DataError(f"data.dirichlet_alpha: must be > 0; got {dirichlet_alpha!r}")
    if shards_per_partition < 1:
        raise DataError(f"data.shards_per_client: must be >= 1; got {shards_per_partition}")
    if n < num_partitions * min_partition_size:
        raise DataError(
            f"data.num_clients: {num_partitions} clients with data.min_partition_size = "
            f"{min_partition_size} need at least {num_partitions * min_partition_size} "
            f"training examples; got {n}"
        )


def _make_partitioner(
    kind: str,
    *,
    n: int,
    num_partitions: int,
    seed: int,
    dirichlet_alpha: float,
    shards_per_partition: int,
    min_partition_size: int,
) -> Partitioner:
    # Imported here: flwr_datasets pulls in matplotlib and datasets (about 2 s), which
    # users of synthetic data or of the types alone should not pay for.
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, ShardPartitioner

    if kind == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(dirichlet_alpha),
            min_partition_size=min_partition_size,
            seed=seed,
        )
    return ShardPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        shard_size=math.ceil(n / (num_partitions * shards_per_partition)),
        keep_incomplete_shard=True,
        seed=seed,
    )


def _label_dataset(labels: NDArray[np.int64], order: NDArray[np.int64] | None) -> Dataset:
    """Build the partitioners' input: rows ``(label, idx)`` in ``order`` (default: as given)."""
    from datasets import Dataset

    idx = np.arange(labels.shape[0], dtype=np.int64) if order is None else order.astype(np.int64)
    return Dataset.from_dict({"label": labels[idx], "idx": idx})


def _load_partitions(
    partitioner: Partitioner, num_partitions: int, *, kind: str, dirichlet_alpha: float
) -> list[NDArray[np.int64]]:
    try:
        with warnings.catch_warnings():
            # Dirichlet retry notices (we raise our own error) and a pyarrow
            # deprecation triggered inside datasets' sort.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return [_partition_positions(partitioner, i) for i in range(num_partitions)]
    except ValueError as exc:
        if kind == "dirichlet":
            raise DataError(
                f"data.min_partition_size: Dirichlet partitioning (alpha = {dirichlet_alpha:g}) left a "
                "client too small in every try; raise data.dirichlet_alpha or lower data.num_clients "
                "or data.min_partition_size"
            ) from None
        raise DataError(f"data.partitioner: {kind} partitioning failed: {exc}") from None


def _partition_positions(partitioner: Partitioner, i: int) -> NDArray[np.int64]:
    rows = partitioner.load_partition(i).with_format("numpy")[:]
    return np.sort(np.asarray(rows["idx"], dtype=np.int64))


def _check_partition_sizes(parts: list[NDArray[np.int64]], *, kind: str, min_partition_size: int) -> None:
    smallest = min(p.shape[0] for p in parts)
    if smallest < min_partition_size:
        hint = "data.num_clients or data.shards_per_client" if kind == "shards" else "data.num_clients"
        raise DataError(
            f"data.min_partition_size: {kind} partitioning gave a client {smallest} examples "
            f"(< {min_partition_size}); lower {hint}"
        )


def train_test_split_indices(
    n: int, *, test_fraction: float, seed: int, labels: NDArray[np.integer] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Split positions ``0 .. n-1`` into disjoint, sorted train and test positions.

    The test part has ``ceil(test_fraction * n)`` positions (at least one, leaving
    at least one for training). With ``labels`` the split is stratified (class
    proportions kept in both parts) whenever every class has at least two examples
    and both parts can hold one of each class; otherwise it is a plain random split.

    Args:
        n: Number of examples (>= 2).
        test_fraction: Fraction held out, in (0, 1).
        seed: Seed of the split (>= 0).
        labels: Optional labels (length ``n``) to stratify on.

    Raises:
        DataError: On a bad argument.

    >>> train, test = train_test_split_indices(10, test_fraction=0.3, seed=0)
    >>> len(train), len(test), sorted(np.concatenate([train, test]).tolist()) == list(range(10))
    (7, 3, True)

    """
    n_test = _test_count(n, test_fraction, seed)
    stratify = None if labels is None else _stratify_labels(labels, n, n_test)
    seed_32 = int(np.random.SeedSequence(seed).generate_state(1)[0])
    train, test = train_test_split(
        np.arange(n, dtype=np.int64),
        test_size=n_test,
        train_size=n - n_test,
        random_state=seed_32,
        stratify=stratify,
    )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def _test_count(n: int, test_fraction: float, seed: int) -> int:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction: must be in (0, 1); got {test_fraction!r}")
    if n < 2:
        raise DataError(f"data: need at least 2 examples to hold out a test set; got {n}")
    if seed < 0:
        raise DataError(f"run.seed: must be >= 0; got {seed}")
    return min(max(math.ceil(test_fraction * n), 1), n - 1)


def _stratify_labels(labels: NDArray[np.integer], n: int, n_test: int) -> NDArray[np.int64] | None:
    label_array = np.asarray(labels).astype(np.int64, copy=False)
    if label_array.shape != (n,):
        raise DataError(f"data: {label_array.shape[0]} labels for {n} examples")
    counts = np.unique(label_array, return_counts=True)[1]
    stratifiable = counts.min() >= 2 and min(n_test, n - n_test) >= counts.shape[0]
    return label_array if stratifiable else None
