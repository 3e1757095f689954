"""Server side of the Skellam mechanism: centre the modular sum, rescale, unrotate."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedlab.privacy.rotation import unrotate
from fedlab.privacy.skellam.encoding import reduce_mod
from fedlab.privacy.skellam.params import SkellamParams

__all__ = ["centre", "decode_mean", "decode_sum"]


def centre(x: npt.NDArray[np.int64], *, bits: int) -> npt.NDArray[np.int64]:
    """Maps residues mod 2^bits to their representatives in [-2^(bits-1), 2^(bits-1)).

    Example:
        >>> centre(np.array([0, 7, 8, 15]), bits=4).tolist()
        [0, 7, -8, -1]

    """
    half = np.int64(1 << (bits - 1))
    residues = reduce_mod(x, bits=bits)
    return np.where(residues >= half, residues - np.int64(1 << bits), residues)


def decode_sum(total: npt.ArrayLike, params: SkellamParams, *, seed: int) -> npt.NDArray[np.float64]:
    """Decodes the modular sum of client encodings into the noisy sum of their updates.

    Centre to [-2^(b-1), 2^(b-1)), divide by s, unrotate, crop to d. Exact up to
    rounding and noise as long as no coordinate of the true integer sum left
    that range (probability about 1e-4 per coordinate for up to ``num_clients``
    clients by the choice of s); a wrapped coordinate is off by 2^b / s.

    Args:
        total: The sum mod 2^bits of the survivors' :attr:`ClientEncoding.values`, length d'.
        params: The mechanism parameters used by the clients.
        seed: The public per-round rotation seed.

    Returns:
        The flat float64 sum estimate, length ``params.dim``.

    Raises:
        ValueError: If ``total`` does not have length d' or holds non-integers.

    """
    residues = _as_integer_vector(total, params.padded_dim)
    centred = centre(residues, bits=params.bits)
    return unrotate(centred.astype(np.float64) / params.scale, seed=seed, dim=params.dim)


def decode_mean(total: npt.ArrayLike, params: SkellamParams, *, seed: int) -> npt.NDArray[np.float64]:
    """Decodes the modular sum and divides by the fixed expected cohort size ``num_clients``.

    The denominator is public and fixed (as in DP-FedAvg's q*N), never the
    realised number of survivors; with dropouts the estimate is scaled down by
    survivors / num_clients. Use :func:`decode_sum` for another denominator.
    """
    return decode_sum(total, params, seed=seed) / float(params.num_clients)


def _as_integer_vector(total: npt.ArrayLike, size: int) -> npt.NDArray[np.int64]:
    values = np.asarray(total)
    if values.shape != (size,):
        raise ValueError(f"expected a sum vector of shape ({size},); got {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"the modular sum must hold integers; got dtype {values.dtype}")
    return values.astype(np.int64)
