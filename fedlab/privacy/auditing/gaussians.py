"""Epsilon of distinguishing two Gaussians: GDP, hockey-stick divergences, and the canary-client estimate."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from fedlab.privacy.analytic import gaussian_epsilon
from fedlab.privacy.auditing._checks import check_delta_open, check_gaussians, check_scores

_EPSILON_CEILING = 1e6
"""Largest epsilon searched by :func:`two_gaussian_epsilon`; beyond it the answer is ``inf``."""


_LOG_FLOOR = -1e4
"""Log-delta used in place of log(0) so that the root finder sees finite values."""


def gdp_epsilon(*, mu: float, delta: float) -> float:
    """Returns the epsilon of mu-Gaussian DP at ``delta``.

    mu-GDP is (epsilon, delta)-DP exactly when delta >= Phi(-epsilon/mu + mu/2)
    - e^epsilon Phi(-epsilon/mu - mu/2) (Dong, Roth & Su 2022, Corollary 2.13);
    it is the Gaussian mechanism with noise multiplier 1/mu, solved by
    :func:`fedlab.privacy.analytic.gaussian_epsilon`.

    Args:
        mu: The GDP parameter, finite and >= 0.
        delta: Target delta, in (0, 1).

    Returns:
        The smallest epsilon with (epsilon, delta)-DP (0.0 for mu = 0).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(gdp_epsilon(mu=1.0, delta=1e-5), 4)
        4.3772

    """
    if not (math.isfinite(mu) and mu >= 0.0):
        raise ValueError(f"mu must be finite and >= 0; got {mu!r}")
    check_delta_open(delta)
    if mu == 0.0:
        return 0.0
    return gaussian_epsilon(noise_multiplier=1.0 / mu, delta=delta)


def two_gaussian_delta(*, mean_a: float, std_a: float, mean_b: float, std_b: float, epsilon: float) -> float:
    """Returns the delta at ``epsilon`` of distinguishing N(mean_a, std_a^2) from N(mean_b, std_b^2).

    The larger of the two hockey-stick divergences sup_S P(S) - e^epsilon Q(S),
    with (P, Q) = (A, B) and (B, A). The supremum is attained on the set where the
    privacy loss ln(p/q), a quadratic in x, exceeds epsilon: an interval or the
    complement of one, whose masses are Gaussian tails (log space throughout).

    Args:
        mean_a: Mean of the first Gaussian, finite.
        std_a: Standard deviation of the first Gaussian, finite and > 0.
        mean_b: Mean of the second Gaussian, finite.
        std_b: Standard deviation of the second Gaussian, finite and > 0.
        epsilon: Epsilon, finite and >= 0.

    Returns:
        The smallest delta for which the pair is (epsilon, delta)-indistinguishable.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(two_gaussian_delta(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.0, epsilon=1.0), 6)
        0.126937

    """
    check_gaussians(mean_a, std_a, mean_b, std_b)
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    return math.exp(_log_two_gaussian_delta(mean_a, std_a, mean_b, std_b, float(epsilon)))


def two_gaussian_epsilon(*, mean_a: float, std_a: float, mean_b: float, std_b: float, delta: float) -> float:
    """Returns the epsilon at ``delta`` of distinguishing N(mean_a, std_a^2) from N(mean_b, std_b^2).

    With equal standard deviations this is the Gaussian mechanism of sensitivity
    |mean_a - mean_b| / std (:func:`gdp_epsilon`). Otherwise it is the root in
    epsilon of :func:`two_gaussian_delta` = ``delta`` (Brent's method, 1e-12
    relative); delta decreases in epsilon.

    Args:
        mean_a: Mean of the first Gaussian, finite.
        std_a: Standard deviation of the first Gaussian, finite and > 0.
        mean_b: Mean of the second Gaussian, finite.
        std_b: Standard deviation of the second Gaussian, finite and > 0.
        delta: Target delta, in (0, 1).

    Returns:
        The smallest epsilon for which the pair is (epsilon, delta)-indistinguishable
        (``inf`` beyond 1e6).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.0, delta=1e-2), 4)
        2.3178
        >>> round(two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.2, delta=1e-2), 4)
        3.6348

    """
    check_gaussians(mean_a, std_a, mean_b, std_b)
    check_delta_open(delta)
    if std_a == std_b:
        return gdp_epsilon(mu=abs(mean_a - mean_b) / std_a, delta=delta)
    log_delta = math.log(delta)

    def excess(epsilon: float) -> float:
        return max(_log_two_gaussian_delta(mean_a, std_a, mean_b, std_b, epsilon), _LOG_FLOOR) - log_delta

    if excess(0.0) <= 0.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0.0:
        if hi >= _EPSILON_CEILING:
            return math.inf
        lo, hi = hi, hi * 2.0
    root: float = optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-12)
    return root


def canary_epsilon_estimate(*, inserted: ArrayLike, held_out: ArrayLike, delta: float) -> float:
    """Returns the canary-client epsilon estimate of Andrew et al. (2024).

    Fits a Gaussian to each group, N(mean, std^2) with the sample mean and the
    sample standard deviation (ddof = 1), and returns the epsilon at ``delta`` of
    distinguishing the two fits (:func:`two_gaussian_epsilon`). Andrew et al.
    compute each canary's statistic as the cosine between a released update (the
    final model delta, or each round's aggregate, taking the maximum over rounds)
    and the canary client's fixed random unit direction; held-out canaries are
    directions never inserted (their paper also uses N(0, 1/d), the cosine law of
    a random direction in dimension d, in place of the held-out fit). The result
    is an estimate, exact in the limit for the Gaussian mechanism in high
    dimension; it is not a confidence bound (see :func:`canary_epsilon_lower_bound`).
    Two Gaussians with unequal standard deviations have an unbounded privacy
    loss, so sampling noise in the two fitted standard deviations biases the
    estimate upward, the more so at small delta and with few canaries.

    Args:
        inserted: Statistics of inserted canaries, 1-D, finite, at least 2, not all equal.
        held_out: Statistics of held-out canaries, 1-D, finite, at least 2, not all equal.
        delta: Target delta, in (0, 1).

    Returns:
        The estimated epsilon (0.0 when the fits are (0, delta)-indistinguishable).

    Raises:
        ValueError: If an argument is invalid.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> inserted = 0.02 + 0.01 * rng.standard_normal(100_000)
        >>> held_out = 0.01 * rng.standard_normal(100_000)
        >>> round(canary_epsilon_estimate(inserted=inserted, held_out=held_out, delta=1e-5), 1)
        10.0

    """
    pos = check_scores("inserted", inserted)
    neg = check_scores("held_out", held_out)
    check_delta_open(delta)
    if pos.size < 2 or neg.size < 2:
        raise ValueError(f"need at least 2 inserted and 2 held-out statistics; got {pos.size} and {neg.size}")
    std_pos, std_neg = float(np.std(pos, ddof=1)), float(np.std(neg, ddof=1))
    if std_pos == 0.0 or std_neg == 0.0:
        raise ValueError("inserted and held-out statistics must not all be equal (zero standard deviation)")
    return two_gaussian_epsilon(
        mean_a=float(np.mean(neg)), std_a=std_neg, mean_b=float(np.mean(pos)), std_b=std_pos, delta=delta
    )


def _log_two_gaussian_delta(
    mean_a: float, std_a: float, mean_b: float, std_b: float, epsilon: float
) -> float:
    return max(
        _log_hockey_stick(mean_a, std_a, mean_b, std_b, epsilon),
        _log_hockey_stick(mean_b, std_b, mean_a, std_a, epsilon),
    )


def _log_hockey_stick(mean_p: float, std_p: float, mean_q: float, std_q: float, epsilon: float) -> float:
    """Returns ln sup_S P(S) - e^epsilon Q(S), P = N(mean_p, std_p^2), Q = N(mean_q, std_q^2); -inf for 0."""
    # ln p(x) - ln q(x) = a x^2 + b x + c; the optimal S is {x : a x^2 + b x + c > epsilon}.
    a = 0.5 * (1.0 / std_q**2 - 1.0 / std_p**2)
    b = mean_p / std_p**2 - mean_q / std_q**2
    c = 0.5 * ((mean_q / std_q) ** 2 - (mean_p / std_p) ** 2) + math.log(std_q / std_p)
    c_eps = c - epsilon
    if a == 0.0:
        if b == 0.0:
            return -math.inf  # constant privacy loss c = 0: P = Q
        cut = -c_eps / b
        if b > 0.0:  # S = (cut, inf)
            log_p, log_q = _log_above(mean_p, std_p, cut), _log_above(mean_q, std_q, cut)
        else:  # S = (-inf, cut)
            log_p, log_q = _log_below(mean_p, std_p, cut), _log_below(mean_q, std_q, cut)
    else:
        disc = b * b - 4.0 * a * c_eps
        if disc <= 0.0:
            return -math.inf  # S is empty, or all of R but a point: the divergence is <= 1 - e^epsilon <= 0
        half = -0.5 * (b + math.copysign(math.sqrt(disc), b))  # stable roots: half / a and c_eps / half
        low, high = sorted((half / a, c_eps / half))
        if a > 0.0:  # S = (-inf, low) or (high, inf)
            log_p = float(np.logaddexp(_log_below(mean_p, std_p, low), _log_above(mean_p, std_p, high)))
            log_q = float(np.logaddexp(_log_below(mean_q, std_q, low), _log_above(mean_q, std_q, high)))
        else:  # S = (low, high)
            log_p = _log_between(mean_p, std_p, low, high)
            log_q = _log_between(mean_q, std_q, low, high)
    gap = epsilon + log_q - log_p
    if not gap < 0.0:
        return -math.inf
    return log_p + math.log1p(-math.exp(gap))


def _log_below(mean: float, std: float, x: float) -> float:
    return float(special.log_ndtr((x - mean) / std))


def _log_above(mean: float, std: float, x: float) -> float:
    return float(special.log_ndtr((mean - x) / std))


def _log_between(mean: float, std: float, low: float, high: float) -> float:
    z_low, z_high = (low - mean) / std, (high - mean) / std
    if z_low >= 0.0:  # both in the upper tail: difference of survival functions
        upper, lower = float(special.log_ndtr(-z_low)), float(special.log_ndtr(-z_high))
    elif z_high <= 0.0:  # both in the lower tail: difference of distribution functions
        upper, lower = float(special.log_ndtr(z_high)), float(special.log_ndtr(z_low))
    else:
        return math.log1p(-(float(special.ndtr(z_low)) + float(special.ndtr(-z_high))))
    if lower == -math.inf:
        return upper
    return upper + math.log1p(-math.exp(lower - upper)) if lower < upper else -math.inf
