"""Client side of the Skellam mechanism: clip, conditional rounding, Skellam noise, reduction mod 2^b."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlab.privacy.rotation import rotate
from fedlab.privacy.skellam.params import SkellamParams

__all__ = [
    "MAX_ROUNDING_ATTEMPTS",
    "ClientEncoding",
    "clip_l2",
    "conditional_stochastic_round",
    "encode_client",
    "reduce_mod",
    "skellam_noise",
]

MAX_ROUNDING_ATTEMPTS = 1000
"""Default cap on conditional-rounding resamples (each fails w.p. <= beta ~ 0.61)."""

_MAX_LAMBDA = 1e18  # numpy's Poisson sampler refuses larger rates


@dataclass(frozen=True, eq=False)
class ClientEncoding:
    """What a client sends to secure aggregation, with its privacy metrics.

    Attributes:
        values: int64 residues in [0, 2^bits), length d'.
        was_clipped: Whether the update's norm exceeded the clip c.
        norm: L2 norm of the update before clipping.
        rounded_norm: L2 norm of the rounded (scaled, integer) vector, before noise.
        rounding_attempts: Conditional-rounding draws used (1 = accepted at once).

    """

    values: npt.NDArray[np.int64]
    was_clipped: bool
    norm: float
    rounded_norm: float
    rounding_attempts: int


def clip_l2(x: npt.NDArray[np.float64], *, clip: float) -> tuple[npt.NDArray[np.float64], float]:
    """Scales ``x`` down to L2 norm at most ``clip``.

    Stops one client from contributing more than ``clip`` to the sum (bounds its
    sensitivity); it does not stop a client from lying about its update.

    Args:
        x: The vector.
        clip: The L2 bound, > 0.

    Returns:
        The clipped vector and the norm of ``x`` before clipping.

    Example:
        >>> v, norm = clip_l2(np.array([3.0, 4.0]), clip=1.0)
        >>> np.round(v, 12).tolist(), norm
        ([0.6, 0.8], 5.0)

    """
    norm = float(np.linalg.norm(x))
    if norm <= clip:
        return x, norm
    return x * (clip / norm), norm


def conditional_stochastic_round(
    x: npt.NDArray[np.float64],
    *,
    bound: float,
    rng: np.random.Generator,
    max_attempts: int = MAX_ROUNDING_ATTEMPTS,
) -> tuple[npt.NDArray[np.int64], int]:
    """Unbiased stochastic rounding, redrawn until the rounded L2 norm is at most ``bound``.

    Each coordinate rounds up with probability equal to its fractional part.
    Resampling while the norm exceeds ``bound`` keeps the sensitivity the
    accountant assumes (``SkellamParams.rounded_norm_bound``); with that bound a
    draw fails with probability at most beta, so few attempts are needed.

    Args:
        x: The scaled vector.
        bound: The L2 bound on the rounded vector.
        rng: The generator (cryptographically seeded in deployment).
        max_attempts: Draws before giving up.

    Returns:
        The rounded int64 vector and the number of draws used.

    Raises:
        RuntimeError: If no draw met the bound in ``max_attempts`` (the client must
            then not send anything: sending an unbounded vector would break the guarantee).

    """
    floor = np.floor(x)
    fraction = x - floor
    base = floor.astype(np.int64)
    for attempt in range(1, max_attempts + 1):
        rounded = base + (rng.random(x.shape) < fraction).astype(np.int64)
        if float(np.linalg.norm(rounded.astype(np.float64))) <= bound:
            return rounded, attempt
    raise RuntimeError(
        f"conditional rounding did not meet the norm bound {bound:.6g} in {max_attempts} attempts"
    )


def skellam_noise(
    shape: int | tuple[int, ...], *, lam: float, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Draws symmetric Skellam noise Poisson(lam) - Poisson(lam) (variance 2 lam) per coordinate.

    Sums of independent Skellam shares are Skellam, so the shares of all survivors
    form one Skellam mechanism on the sum. numpy's Poisson sampler is not
    constant-time: see the :mod:`fedlab.privacy.skellam` docstring.

    Args:
        shape: Output shape.
        lam: Each Poisson rate, >= 0 (0 gives zeros: testing only, not private).
        rng: The generator (cryptographically seeded in deployment).

    Returns:
        int64 noise.

    Raises:
        ValueError: If ``lam`` is negative, not finite, or too large for numpy.

    """
    if not (math.isfinite(lam) and 0.0 <= lam <= _MAX_LAMBDA):
        raise ValueError(f"lam must be in [0, {_MAX_LAMBDA:g}]; got {lam!r}")
    if lam == 0.0:
        return np.zeros(shape, dtype=np.int64)
    return rng.poisson(lam, size=shape).astype(np.int64) - rng.poisson(lam, size=shape).astype(np.int64)


def reduce_mod(x: npt.NDArray[np.int64], *, bits: int) -> npt.NDArray[np.int64]:
    """Reduces integers to residues in [0, 2^bits) (int64).

    Example:
        >>> reduce_mod(np.array([-1, 0, 17]), bits=4).tolist()
        [15, 0, 1]

    """
    return np.mod(np.asarray(x, dtype=np.int64), np.int64(1 << bits))


def encode_client(
    update: npt.ArrayLike,
    params: SkellamParams,
    *,
    seed: int,
    rng: np.random.Generator,
    max_rounding_attempts: int = MAX_ROUNDING_ATTEMPTS,
) -> ClientEncoding:
    """Runs the client side: flatten, rotate, clip, scale, round, add noise, reduce mod 2^b.

    Stops the server (and everyone after it) from learning more about this
    client than the accounted (epsilon, delta) *once its share is summed with at
    least ``min_survivors - 1`` other honest shares*. Alone, one encoding carries
    only ``1/min_survivors`` of the noise variance: it must only ever leave the
    client under secure aggregation.

    Args:
        update: The client's update, any shape with ``params.dim`` values.
        params: The mechanism parameters.
        seed: The public per-round rotation seed (the same for all clients).
        rng: The client's private generator for rounding and noise
            (cryptographically seeded in deployment).
        max_rounding_attempts: Cap on conditional-rounding draws.

    Returns:
        The residues and privacy metrics.

    Raises:
        ValueError: If the update has the wrong size or non-finite values.

    """
    flat = _flatten(update, params.dim)
    rotated = rotate(flat, seed=seed)
    clipped, norm = clip_l2(rotated, clip=params.clip)
    rounded, attempts = conditional_stochastic_round(
        clipped * params.scale, bound=params.rounded_norm_bound, rng=rng, max_attempts=max_rounding_attempts
    )
    noised = rounded + skellam_noise(rounded.shape, lam=params.local_lambda, rng=rng)
    return ClientEncoding(
        values=reduce_mod(noised, bits=params.bits),
        was_clipped=norm > params.clip,
        norm=norm,
        rounded_norm=float(np.linalg.norm(rounded.astype(np.float64))),
        rounding_attempts=attempts,
    )


def _flatten(update: npt.ArrayLike, dim: int) -> npt.NDArray[np.float64]:
    flat = np.asarray(update, dtype=np.float64).reshape(-1)
    if flat.size != dim:
        raise ValueError(f"update has {flat.size} values; params.dim is {dim}")
    if not np.all(np.isfinite(flat)):
        raise ValueError("update contains NaN or infinite values")
    return flat
