"""Vector arithmetic in the ring of integers mod m (numpy uint64, m at most 2**62)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

MAX_MODULUS = 2**62
"""Largest supported modulus: two residues then add without overflowing uint64."""

Vector = npt.NDArray[np.uint64]


def check_modulus(modulus: int) -> int:
    """Return ``modulus`` if it is an int in [2, 2**62], else raise ValueError.

    >>> check_modulus(2**32)
    4294967296
    """
    if isinstance(modulus, bool) or not isinstance(modulus, int) or not 2 <= modulus <= MAX_MODULUS:
        raise ValueError(f"modulus must be an int in [2, 2**62], got {modulus!r}")
    return modulus


def reduce(values: Vector, modulus: int) -> Vector:
    """Return ``values mod modulus`` (a bit mask when the modulus is a power of two).

    >>> reduce(np.array([5, 9], dtype=np.uint64), 8).tolist()
    [5, 1]
    """
    if modulus & (modulus - 1) == 0:
        return np.bitwise_and(values, np.uint64(modulus - 1))
    return np.remainder(values, np.uint64(modulus))


def add_mod(a: Vector, b: Vector, modulus: int) -> Vector:
    """Return ``(a + b) mod modulus`` for residues ``a`` and ``b``.

    >>> add_mod(np.array([7], dtype=np.uint64), np.array([3], dtype=np.uint64), 8).tolist()
    [2]
    """
    return reduce(np.add(a, b), modulus)


def sub_mod(a: Vector, b: Vector, modulus: int) -> Vector:
    """Return ``(a - b) mod modulus`` for residues ``a`` and ``b``.

    >>> sub_mod(np.array([1], dtype=np.uint64), np.array([3], dtype=np.uint64), 8).tolist()
    [6]
    """
    return reduce(np.add(a, np.subtract(np.uint64(modulus), b)), modulus)


def sum_mod(vectors: Iterable[Vector], modulus: int, length: int) -> Vector:
    """Return the sum mod ``modulus`` of residue vectors of ``length`` (zeros if there are none).

    Consumes ``vectors`` one at a time. Below 2^32 the sum is taken in uint64 and reduced once
    per 2^31 vectors, which cannot overflow.

    >>> sum_mod([np.array([7, 1], dtype=np.uint64)] * 3, 8, 2).tolist()
    [5, 3]
    """
    every = 2**31 if modulus <= 2**32 else 1
    total = np.zeros(length, dtype=np.uint64)
    for i, vector in enumerate(vectors, start=1):
        np.add(total, vector, out=total)
        if i % every == 0:
            total = reduce(total, modulus)
    return reduce(total, modulus)


def as_residues(values: npt.ArrayLike, modulus: int, length: int) -> Vector:
    """Return a read-only uint64 copy of ``values`` after checking they are residues mod ``modulus``.

    Args:
        values: A 1-D array of integers in [0, modulus).
        modulus: The ring modulus.
        length: The required vector length.

    Raises:
        ValueError: If the array is not 1-D of ``length`` integers in [0, modulus).

    """
    array = np.asarray(values)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"expected a 1-D vector of length {length}, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"expected integer residues, got dtype {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= modulus):
        raise ValueError(f"values must lie in [0, {modulus}); encode floats with fedlab.secagg.encoding")
    result = array.astype(np.uint64, copy=True)
    result.flags.writeable = False
    return result
