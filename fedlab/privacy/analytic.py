"""The exact (analytic) Gaussian mechanism of Balle & Wang (2018), a closed-form known answer.

Adding N(0, (z*C)^2) noise to a function of L2 sensitivity C is
(epsilon, delta)-DP exactly when

    delta >= Phi(-epsilon*z + 1/(2z)) - e^epsilon * Phi(-epsilon*z - 1/(2z)),

and T compositions of it are one Gaussian mechanism with noise multiplier
z/sqrt(T) (Gaussian privacy loss distributions compose in closed form). This is
the answer every accountant must reproduce without sampling (q = 1): tight ones
(PLD, PRV) within their discretization error above it, RDP somewhat above it
(an upper bound), none of them below it.

With sampling (q < 1) there is no closed form; use an accountant.
"""

from __future__ import annotations

import math

from scipy import optimize, special

_EPSILON_CEILING = 1e6
"""Largest epsilon searched by :func:`gaussian_epsilon` (noise multipliers near 0)."""


def gaussian_delta(*, noise_multiplier: float, epsilon: float, steps: int = 1) -> float:
    """Returns the exact delta of ``steps`` compositions of the Gaussian mechanism at ``epsilon``.

    No sampling (every record takes part in every step). Computed in log space,
    so it stays accurate for deltas far below 1e-300 and large epsilons.

    Args:
        noise_multiplier: Noise standard deviation over the L2 sensitivity, > 0.
        epsilon: Target epsilon, finite and >= 0.
        steps: Number of compositions, >= 1.

    Returns:
        The smallest delta for which the composition is (epsilon, delta)-DP.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(gaussian_delta(noise_multiplier=1.0, epsilon=1.0), 6)
        0.126937
        >>> gaussian_delta(noise_multiplier=2.0, epsilon=0.5, steps=4) == gaussian_delta(
        ...     noise_multiplier=1.0, epsilon=0.5)
        True

    """
    z = _effective_noise(noise_multiplier, steps)
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    log_first = float(special.log_ndtr(-epsilon * z + 0.5 / z))
    log_second = epsilon + float(special.log_ndtr(-epsilon * z - 0.5 / z))
    # delta = e^a - e^b with b < a, as e^a * (1 - e^(b - a)) to avoid cancellation.
    return max(0.0, -math.expm1(log_second - log_first) * math.exp(log_first))


def gaussian_epsilon(*, noise_multiplier: float, delta: float, steps: int = 1) -> float:
    """Returns the exact epsilon of ``steps`` compositions of the Gaussian mechanism at ``delta``.

    Root of the decreasing function ``gaussian_delta(epsilon) - delta`` (Brent's
    method, to 1e-12 relative).

    Args:
        noise_multiplier: Noise standard deviation over the L2 sensitivity, > 0.
        delta: Target delta, in (0, 1).
        steps: Number of compositions, >= 1.

    Returns:
        The smallest epsilon for which the composition is (epsilon, delta)-DP
        (0.0 if even epsilon = 0 meets ``delta``).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> round(gaussian_epsilon(noise_multiplier=1.0, delta=1e-5), 4)
        4.3772
        >>> round(gaussian_epsilon(noise_multiplier=10.0, delta=1e-5, steps=100), 4)
        4.3772

    """
    _effective_noise(noise_multiplier, steps)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")

    def excess(epsilon: float) -> float:
        return gaussian_delta(noise_multiplier=noise_multiplier, epsilon=epsilon, steps=steps) - delta

    if excess(0.0) <= 0.0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0.0:
        if hi >= _EPSILON_CEILING:
            return math.inf
        hi *= 2.0
    root: float = optimize.brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-12)
    return root


def gaussian_noise_multiplier(*, epsilon: float, delta: float, steps: int = 1) -> float:
    """Returns the exact noise multiplier for which ``steps`` compositions are (epsilon, delta)-DP.

    The classical calibration sqrt(2 ln(1.25/delta))/epsilon is valid only for
    epsilon < 1 and loose; this one is exact (Balle & Wang's Algorithm 1 solved
    by root finding), for every epsilon.

    Args:
        epsilon: Target epsilon, finite and > 0.
        delta: Target delta, in (0, 1).
        steps: Number of compositions, >= 1.

    Returns:
        The noise multiplier z with ``gaussian_delta(z, epsilon, steps) == delta``
        (to 1e-12 relative).

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> z = gaussian_noise_multiplier(epsilon=1.0, delta=1e-5)
        >>> round(z, 4)
        3.7306
        >>> round(gaussian_delta(noise_multiplier=z, epsilon=1.0), 12)
        1e-05

    """
    if not (math.isfinite(epsilon) and epsilon > 0.0):
        raise ValueError(f"epsilon must be finite and > 0; got {epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
    _effective_noise(1.0, steps)

    def excess(noise_multiplier: float) -> float:
        return gaussian_delta(noise_multiplier=noise_multiplier, epsilon=epsilon, steps=steps) - delta

    lo, hi = 1.0, 1.0
    while excess(lo) <= 0.0:
        lo /= 2.0
    while excess(hi) > 0.0:
        hi *= 2.0
    root: float = optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-12)
    return root


def _effective_noise(noise_multiplier: float, steps: int) -> float:
    """Validates the arguments; returns the noise multiplier of the composition, z/sqrt(T)."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0.0):
        raise ValueError(f"noise_multiplier must be finite and > 0; got {noise_multiplier!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    return noise_multiplier / math.sqrt(steps)
