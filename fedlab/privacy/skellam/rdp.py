"""Rényi DP of the Skellam mechanism: one round, and amplification by Poisson subsampling."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import special

from fedlab.privacy.skellam._checks import as_float, as_int, as_orders, require
from fedlab.privacy.skellam.params import SkellamParams

__all__ = ["SKELLAM_RDP_ORDERS", "poisson_subsampled_rdp", "skellam_rdp"]

SKELLAM_RDP_ORDERS: tuple[int, ...] = (
    *range(2, 129), 144, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024,
)  # fmt: skip
"""Integer Rényi orders: the Skellam bound and the subsampling bound hold for integer orders."""


def skellam_rdp(
    params: SkellamParams, *, orders: npt.ArrayLike, num_survivors: int | None = None
) -> npt.NDArray[np.float64]:
    """Returns the RDP of one unsubsampled round of the distributed Skellam mechanism.

    With mu = num_survivors * sigma_loc^2 (the central noise variance, unscaled),
    D1, D2 the rounded sensitivities and s the scale (Agarwal et al. 2021):
    ``eps(a) = a D2^2 / (2 mu) + min(((2a - 1) s D2^2 + 6 D1) / (4 s^3 mu^2), 3 D1 / (2 s mu))``.
    As in the paper, mu counts every survivor's share, the target client's own included.

    Args:
        params: The mechanism parameters.
        orders: Integer Rényi orders > 1.
        num_survivors: Clients whose noise is in the sum (default ``min_survivors``,
            the worst case a released round can have).

    Returns:
        epsilon(order) per order (``inf`` when there is no noise).

    """
    alphas = as_orders(orders)
    survivors = params.min_survivors if num_survivors is None else as_int("num_survivors", num_survivors)
    mu = survivors * params.local_stddev**2
    if mu <= 0.0:
        return np.full(alphas.shape, np.inf)
    s, d1, d2 = params.scale, params.l1_sensitivity, params.l2_sensitivity
    gaussian = alphas * d2 * d2 / (2.0 * mu)
    discrete = np.minimum(
        ((2.0 * alphas - 1.0) * s * d2 * d2 + 6.0 * d1) / (4.0 * s**3 * mu * mu),
        3.0 * d1 / (2.0 * s * mu),
    )
    result: npt.NDArray[np.float64] = gaussian + discrete
    return result


def poisson_subsampled_rdp(
    base_rdp: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]],
    *,
    sample_rate: float,
    orders: npt.ArrayLike,
) -> npt.NDArray[np.float64]:
    """Amplifies a generic RDP curve by Poisson subsampling (Zhu & Wang 2019, Theorem 6).

    For integer a >= 2 and sampling rate q, with eps(l) the base curve:
    ``(a-1) eps'(a) <= log[(1-q)^(a-1) (a q - q + 1) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
    + 3 sum_{l=3..a} C(a,l) (1-q)^(a-l) q^l e^((l-1) eps(l))]``, valid for any
    mechanism under add/remove-one neighbours. We return the minimum of this and
    the base curve (subsampling never hurts: joint convexity), so at q = 1 the
    result is the base curve exactly. Its factor 3 makes it looser than the exact
    bound for the subsampled Gaussian: at z = 1 and delta = 1e-5 the final epsilon
    is 9.83 vs 7.97 (q = 0.1, 100 rounds), 2.45 vs 2.11 (q = 0.01, 1000 rounds)
    and 0.81 vs 0.79 (q = 0.001, 10^4 rounds). At q = 1 there is no such cost.

    Args:
        base_rdp: The unsubsampled curve, evaluated on an array of integer orders.
        sample_rate: Poisson sampling probability q, in (0, 1].
        orders: Integer Rényi orders >= 2.

    Returns:
        The amplified epsilon(order) per order.

    """
    alphas = as_orders(orders)
    q = as_float("sample_rate", sample_rate)
    require(0.0 < q <= 1.0, f"sample_rate must be in (0, 1]; got {q!r}")
    direct = np.asarray(base_rdp(alphas.astype(np.float64)), dtype=np.float64)
    if q == 1.0:
        return direct
    every = np.arange(2, int(alphas.max()) + 1, dtype=np.float64)
    base = np.asarray(base_rdp(every), dtype=np.float64)  # base[l - 2] = eps(l)
    bounds = np.array([_zhu_wang_bound(int(a), q, base) for a in alphas])
    result: npt.NDArray[np.float64] = np.minimum(bounds, direct)
    return result


def _zhu_wang_bound(alpha: int, q: float, base: npt.NDArray[np.float64]) -> float:
    """The Zhu-Wang general upper bound at one integer order, in log space."""
    log_q, log_1mq = math.log(q), math.log1p(-q)
    first = (alpha - 1) * log_1mq + math.log(alpha * q - q + 1.0)
    second = _log_comb(alpha, 2) + 2.0 * log_q + (alpha - 2) * log_1mq + base[0]
    ls = np.arange(3, alpha + 1, dtype=np.float64)
    rest = (
        math.log(3.0)
        + special.gammaln(alpha + 1.0)
        - special.gammaln(ls + 1.0)
        - special.gammaln(alpha - ls + 1.0)
        + (alpha - ls) * log_1mq
        + ls * log_q
        + (ls - 1.0) * base[1 : alpha - 1]
    )
    terms = np.concatenate(([first, second], rest))
    return float(special.logsumexp(terms)) / (alpha - 1)


def _log_comb(n: int, k: int) -> float:
    return float(special.gammaln(n + 1.0) - special.gammaln(k + 1.0) - special.gammaln(n - k + 1.0))
