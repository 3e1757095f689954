"""Randomized Walsh-Hadamard rotation with a public per-round seed.

Distributed DP (:mod:`fedlab.privacy.skellam`) rotates every client vector with
the same random orthonormal map before quantizing it. The rotation spreads the
energy of a spiky vector evenly over all coordinates (each rotated coordinate is
about ``||x|| / sqrt(d')``), so a fixed number of bits per coordinate wastes less
range and the modular sum under secure aggregation is unlikely to wrap around.

The map is ``y = H D x / sqrt(d')``: zero-pad ``x`` to ``d'``, the next power of
two, flip signs with a diagonal ``D`` of random +-1 drawn from ``seed``, then apply
the Walsh-Hadamard matrix ``H`` (fast transform, O(d' log d'), vectorized numpy).
``H / sqrt(d')`` is symmetric and orthonormal, so the inverse is
``x = D H y / sqrt(d')`` followed by cropping to the original dimension.

Threat model: the rotation is a *utility* device, not a secrecy one. The seed is
public (every client and the server must use the same one) and the map is
invertible, so it hides nothing from anyone and stops no attack; privacy comes
only from the noise added afterwards. What it does need: a fresh seed per round,
agreed on by all clients, so that no client vector is systematically aligned with
the sign pattern. Reusing a seed is not a privacy failure, only an accuracy risk.

Example:
    >>> import numpy as np
    >>> x = np.array([3.0, 4.0, 0.0])
    >>> y = rotate(x, seed=7)
    >>> y.shape, round(float(np.linalg.norm(y)), 12)
    ((4,), 5.0)
    >>> np.allclose(unrotate(y, seed=7, dim=3), x)
    True

"""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt

__all__ = ["padded_dim", "rotate", "unrotate"]


def padded_dim(dim: int) -> int:
    """Returns d', the smallest power of two >= ``dim``.

    Args:
        dim: The vector dimension, >= 1.

    Returns:
        The padded dimension.

    Raises:
        ValueError: If ``dim`` is not a positive integer.

    Example:
        >>> padded_dim(1000), padded_dim(1024), padded_dim(1)
        (1024, 1024, 1)

    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    return 1 << (int(dim) - 1).bit_length()


def rotate(x: npt.ArrayLike, *, seed: int) -> npt.NDArray[np.float64]:
    """Pads the last axis of ``x`` to a power of two and applies the random rotation.

    Args:
        x: A vector (or a stack of vectors along the last axis) of finite floats.
        seed: The public per-round seed, a non-negative integer.

    Returns:
        ``H D pad(x) / sqrt(d')`` as float64, last axis of length d'.

    Raises:
        ValueError: If ``x`` is empty, not finite, or ``seed`` is invalid.

    """
    values = _as_float_array(x)
    dim = padded_dim(values.shape[-1])
    padded = _pad_last_axis(values, dim)
    return _normalized_fwht(padded * _signs(seed, dim))


def unrotate(y: npt.ArrayLike, *, seed: int, dim: int) -> npt.NDArray[np.float64]:
    """Inverts :func:`rotate`: applies ``D H y / sqrt(d')`` and crops to ``dim``.

    Args:
        y: A rotated vector (or stack), last axis of length d' (a power of two).
        seed: The same public seed that was passed to :func:`rotate`.
        dim: The original dimension to crop to, 1 <= dim <= d'.

    Returns:
        The unrotated vector(s), last axis of length ``dim``.

    Raises:
        ValueError: If the last axis is not a power of two or ``dim`` does not fit.

    """
    values = _as_float_array(y)
    size = values.shape[-1]
    if padded_dim(size) != size:
        raise ValueError(f"a rotated vector has a power-of-two length; got {size}")
    if padded_dim(dim) != size:
        raise ValueError(f"dim={dim!r} does not pad to the rotated length {size}")
    restored = _normalized_fwht(values) * _signs(seed, size)
    return np.ascontiguousarray(restored[..., :dim])


def _signs(seed: int, size: int) -> npt.NDArray[np.float64]:
    """The public random +-1 diagonal, drawn from its own generator seeded by ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    bits = rng.integers(0, 2, size=size, dtype=np.int8)
    return (2.0 * bits - 1.0).astype(np.float64)


def _normalized_fwht(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Fast Walsh-Hadamard transform along the last axis, scaled to be orthonormal.

    Each of the log2(d') passes pairs blocks of width ``h`` and replaces them by
    their sum and difference, done for all pairs at once through a reshape.
    """
    size = values.shape[-1]
    lead = values.shape[:-1]
    out = np.array(values, dtype=np.float64, copy=True)
    h = 1
    while h < size:
        blocks = out.reshape(*lead, size // (2 * h), 2, h)
        left = blocks[..., 0, :]
        right = blocks[..., 1, :]
        out = np.stack((left + right, left - right), axis=-2).reshape(*lead, size)
        h *= 2
    normalized: npt.NDArray[np.float64] = out / np.sqrt(size)
    return normalized


def _pad_last_axis(values: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    missing = size - values.shape[-1]
    if missing == 0:
        return values
    width = [(0, 0)] * (values.ndim - 1) + [(0, missing)]
    return np.pad(values, width)


def _as_float_array(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    values = np.asarray(x, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError("expected a non-empty vector (last axis of length >= 1)")
    if not np.all(np.isfinite(values)):
        raise ValueError("vector contains NaN or infinite values")
    return values
