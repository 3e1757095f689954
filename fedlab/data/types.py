"""Data containers: an in-memory labelled array data set and the federated view over clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from fedlab.core.errors import DataError


@dataclass(frozen=True)
class ArrayDataset:
    """Labelled examples held as two numpy arrays.

    The constructor converts ``x`` to float32 and ``y`` to int64 (without copying
    when they already have those types) and checks that the shapes agree and that
    every label lies in ``[0, num_classes)``.

    Attributes:
        x: Features, float32, shape ``(n, *feature_shape)``.
        y: Labels, int64, shape ``(n,)``.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        public_size: The example count a client reports and DP-SGD's sample rate and step count
            are computed from (the guarantee treats it as public); None: ``n``. An audit sets it to
            the size without its secret canaries, so that a canary changes only the data.

    >>> d = ArrayDataset(np.zeros((3, 2)), np.array([0, 1, 1]), num_classes=2)
    >>> len(d), d.feature_shape, d.x.dtype, d.y.dtype
    (3, (2,), dtype('float32'), dtype('int64'))
    >>> d.subset(np.array([2])).y.tolist()
    [1]

    """

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    num_classes: int
    public_size: int | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y, dtype=np.int64)
        _check_arrays(x, y, self.num_classes)
        if self.public_size is not None and not 1 <= self.public_size <= y.shape[0]:
            raise DataError(f"data: public_size must be in [1, {y.shape[0]}]; got {self.public_size}")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)

    @property
    def reported_size(self) -> int:
        """The example count the client reports and plans DP-SGD with: ``public_size``, else ``n``."""
        return len(self) if self.public_size is None else self.public_size

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features."""
        return tuple(int(s) for s in self.x.shape[1:])

    def subset(self, indices: NDArray[np.integer]) -> ArrayDataset:
        """Return the examples at ``indices`` (a copy), with the same ``num_classes``.

        Args:
            indices: Integer positions into this data set.

        """
        index = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.x[index], self.y[index], self.num_classes)


def _check_arrays(x: NDArray[np.float32], y: NDArray[np.int64], num_classes: int) -> None:
    """Raise DataError unless ``x``, ``y`` and ``num_classes`` form a valid data set."""
    if num_classes < 1:
        raise DataError(f"data: num_classes must be >= 1; got {num_classes}")
    if y.ndim != 1:
        raise DataError(f"data: labels must be one-dimensional; got shape {y.shape}")
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"data: {x.shape[0] if x.ndim else 0} feature rows but {y.shape[0]} labels")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"data: labels must lie in [0, {num_classes}); got [{y.min()}, {y.max()}]")


@runtime_checkable
class FederatedData(Protocol):
    """Per-client training data plus a held-out central test set.

    Lazy: ``client(i)`` materializes only client ``i``; ``client_size(i)`` never
    materializes anything.
    """

    @property
    def num_clients(self) -> int:
        """Number of clients, numbered ``0 .. num_clients - 1``."""
        ...

    @property
    def test(self) -> ArrayDataset:
        """The central test set (never part of any client's data)."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes shared by every client and the test set."""
        ...

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features."""
        ...

    def client(self, i: int) -> ArrayDataset:
        """Return client ``i``'s training data."""
        ...

    def client_size(self, i: int) -> int:
        """Return the number of training examples of client ``i``."""
        ...


@runtime_checkable
class HasClientSizes(Protocol):
    """A federated data set that can list all client sizes at once, without materializing."""

    def client_sizes(self) -> NDArray[np.int64]:
        """Return every client's number of examples, indexed by client."""
        ...


def check_client_index(i: int, num_clients: int) -> None:
    """Raise IndexError unless ``0 <= i < num_clients``."""
    if not 0 <= i < num_clients:
        raise IndexError(f"client index {i} out of range [0, {num_clients})")


@dataclass(frozen=True)
class PartitionedData:
    """A :class:`FederatedData` made of one training pool split by index lists.

    Attributes:
        train: All training examples.
        partitions: One array of positions into ``train`` per client (disjoint).
        test: The central test set.

    """

    train: ArrayDataset
    partitions: tuple[NDArray[np.int64], ...]
    test: ArrayDataset

    def __post_init__(self) -> None:
        if self.train.num_classes != self.test.num_classes:
            raise DataError("data: train and test sets disagree on num_classes")
        if self.train.feature_shape != self.test.feature_shape:
            raise DataError("data: train and test sets disagree on feature shape")
        if not self.partitions:
            raise DataError("data.num_clients: no client partitions")

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.partitions)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.train.num_classes

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example's features."""
        return self.train.feature_shape

    def client(self, i: int) -> ArrayDataset:
        """Return a copy of client ``i``'s training examples."""
        check_client_index(i, self.num_clients)
        return self.train.subset(self.partitions[i])

    def client_size(self, i: int) -> int:
        """Return the number of training examples of client ``i``."""
        check_client_index(i, self.num_clients)
        return int(self.partitions[i].shape[0])

    def client_sizes(self) -> NDArray[np.int64]:
        """Return every client's number of examples."""
        return np.array([p.shape[0] for p in self.partitions], dtype=np.int64)


def range_mismatch(
    x: NDArray[np.floating], expected: tuple[float, float], *, slack: float = 0.1
) -> str | None:
    """Why features ``x`` do not look scaled like data spanning ``expected`` (None: they do).

    They do not when their minimum or maximum lies outside ``expected`` widened by ``slack``
    times its width on each side (features on another scale train silently to a worse model).

    Example:
        >>> range_mismatch(np.array([0.0, 0.5, 1.0]), (0.0, 1.0)) is None
        True
        >>> range_mismatch(np.array([0.0, 16.0]), (0.0, 1.0))
        'features span [0, 16] but the server expects about [0, 1]'
    """
    low, high = float(np.min(x)), float(np.max(x))
    margin = slack * max(expected[1] - expected[0], 1e-12)
    if low < expected[0] - margin or high > expected[1] + margin:
        lo, hi = expected
        return f"features span [{low:g}, {high:g}] but the server expects about [{lo:g}, {hi:g}]"
    return None
