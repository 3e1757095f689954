"""Calibration: the smallest noise multiplier that meets an epsilon budget.

Calibration is a separate function over accountants (the dp_accounting idea):
it only ever *evaluates* epsilon with the requested accountant and keeps the
invariant ``epsilon(hi) <= target`` for the value it returns, so the result
never overshoots the budget, whatever the accountant's numerical quirks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fedlab.privacy.accountants import ACCOUNTANTS, PldAccountant, epsilon_of
from fedlab.privacy.events import GaussianEvent

MIN_NOISE_MULTIPLIER = 0.25
"""Smallest noise multiplier searched: below it epsilon is in the tens to hundreds."""

MAX_NOISE_MULTIPLIER = 1e6
"""Largest noise multiplier searched: a target needing more is reported as unreachable."""

_PROXY_PLD_DISCRETIZATION = 1e-3

EpsilonFn = Callable[[float], float]


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "pld",
    tolerance: float = 1e-3,
) -> float:
    """Returns the smallest noise multiplier found whose epsilon is at most ``target_epsilon``.

    Bisection on the noise multiplier z (epsilon decreases as z grows). The
    returned z satisfies ``epsilon(z) <= target_epsilon`` as evaluated by the
    named accountant (never overshoots), and a z smaller by the relative
    ``tolerance`` was found to exceed the target (tight). For ``"pld"`` a coarse
    PLD first narrows the bracket cheaply; only the requested accountant decides.

    Args:
        target_epsilon: The budget, > 0.
        delta: Target delta, in (0, 1).
        sample_rate: Poisson sampling probability per step, in (0, 1].
        steps: Number of steps (compositions), >= 1.
        accountant: ``"pld"`` (tight, default) or ``"rdp"``.
        tolerance: Relative precision on the noise multiplier, in (0, 0.5].

    Returns:
        The noise multiplier. If even :data:`MIN_NOISE_MULTIPLIER` meets the target,
        that value is returned (a larger noise than needed never overshoots).

    Raises:
        ValueError: If an argument is invalid, or the target would need a noise
            multiplier above :data:`MAX_NOISE_MULTIPLIER`.

    Example:
        >>> z = calibrate_noise_multiplier(
        ...     target_epsilon=7.33, delta=1e-5, sample_rate=0.04, steps=2250, accountant="rdp")
        >>> round(z, 2)
        1.5

    """
    _check_arguments(target_epsilon, delta, tolerance, accountant)
    GaussianEvent(noise_multiplier=1.0, sample_rate=sample_rate, steps=steps)  # validates q and steps
    exact = _epsilon_fn(accountant=accountant, delta=delta, sample_rate=sample_rate, steps=steps)
    start = 1.0
    if accountant == "pld":
        proxy = _coarse_pld_fn(delta=delta, sample_rate=sample_rate, steps=steps)
        start = search_noise_multiplier(
            proxy, target=target_epsilon, start=1.0, factor=2.0, tolerance=tolerance
        )
    return search_noise_multiplier(
        exact, target=target_epsilon, start=start, factor=1.0 + 2.0 * tolerance, tolerance=tolerance
    )


_UNREACHABLE_HINT = "raise the target or delta, or reduce sample_rate or steps"


def search_noise_multiplier(
    eps: EpsilonFn,
    *,
    target: float,
    tolerance: float,
    start: float = 1.0,
    factor: float = 2.0,
    floor: float = MIN_NOISE_MULTIPLIER,
    hint: str = _UNREACHABLE_HINT,
) -> float:
    """Smallest noise multiplier found with ``eps(z) <= target``, for any decreasing epsilon curve.

    Brackets the answer around ``start`` (galloping from ``factor``), then bisects
    to the relative ``tolerance``; the result never overshoots the target. Every
    mechanism's calibration (Gaussian here, Skellam in :mod:`fedlab.privacy.skellam`)
    uses this one search.

    Args:
        eps: Epsilon as a function of the noise multiplier (decreasing).
        target: The epsilon not to exceed.
        tolerance: Relative precision on the noise multiplier.
        start: Where the bracket search starts.
        factor: First galloping step (squared after every miss).
        floor: Smallest noise multiplier searched (returned if it already meets the target).
        hint: What to do, appended to the error when even :data:`MAX_NOISE_MULTIPLIER` fails.

    Raises:
        ValueError: If the target would need more than :data:`MAX_NOISE_MULTIPLIER`.
    """
    lo, hi = _bracket(eps, target=target, start=start, factor=factor, floor=floor, hint=hint)
    return _bisect(eps, target=target, lo=lo, hi=hi, tolerance=tolerance)


def _bracket(
    eps: EpsilonFn, *, target: float, start: float, factor: float, floor: float, hint: str
) -> tuple[float, float]:
    """Returns (lo, hi) with eps(lo) > target >= eps(hi); lo == hi at the search floor.

    The step factor squares after every miss, so a far-off start costs only
    O(log log) extra evaluations.
    """
    z = min(max(start, floor), MAX_NOISE_MULTIPLIER)
    if eps(z) <= target:
        while z > floor:
            lower = max(z / factor, floor)
            if eps(lower) > target:
                return lower, z
            z, factor = lower, factor * factor
        return z, z
    while z < MAX_NOISE_MULTIPLIER:
        upper = min(z * factor, MAX_NOISE_MULTIPLIER)
        if eps(upper) <= target:
            return z, upper
        z, factor = upper, factor * factor
    raise ValueError(
        f"target_epsilon={target!r} is unreachable: even noise multiplier {MAX_NOISE_MULTIPLIER:g} "
        f"exceeds it; {hint}"
    )


def _bisect(eps: EpsilonFn, *, target: float, lo: float, hi: float, tolerance: float) -> float:
    """Shrinks [lo, hi] keeping eps(lo) > target >= eps(hi) until (hi - lo) <= tolerance * hi."""
    while hi - lo > tolerance * hi:
        mid = 0.5 * (lo + hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def _epsilon_fn(*, accountant: str, delta: float, sample_rate: float, steps: int) -> EpsilonFn:
    def eps(noise_multiplier: float) -> float:
        event = GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return epsilon_of([event], delta=delta, accountant=accountant)

    return eps


def _coarse_pld_fn(*, delta: float, sample_rate: float, steps: int) -> EpsilonFn:
    def eps(noise_multiplier: float) -> float:
        acc = PldAccountant(value_discretization_interval=_PROXY_PLD_DISCRETIZATION)
        acc.compose(GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps))
        return acc.epsilon(delta=delta)

    return eps


def _check_arguments(target_epsilon: float, delta: float, tolerance: float, accountant: str) -> None:
    if not (math.isfinite(target_epsilon) and target_epsilon > 0.0):
        raise ValueError(f"target_epsilon must be finite and > 0; got {target_epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
    if not 0.0 < tolerance <= 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5]; got {tolerance!r}")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")
