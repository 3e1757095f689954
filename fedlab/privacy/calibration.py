"""Calibration: the smallest noise multiplier that meets an epsilon budget.

Calibration is a separate function over accountants (the dp_accounting idea):
:func:`calibrate` takes an accountant factory and an event factory (the event a mechanism with
noise multiplier z releases), so one function serves every mechanism: the Gaussian here
(:func:`calibrate_noise_multiplier`), Skellam (:mod:`fedlab.privacy.skellam.calibration`) and
DP-SGD (:func:`fedlab.training.accounting.noise_multiplier_for_epsilon`, with an accountant built
on Opacus). A search proposes a noise multiplier; :func:`calibrate` then checks it with the
requested accountant and raises it until it meets the target, so the result never overshoots
the budget, whatever the search or the accountant's numerical quirks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from fedlab.privacy.accountants import PldAccountant, make_accountant
from fedlab.privacy.events import GaussianEvent

MIN_NOISE_MULTIPLIER = 0.25
"""Smallest noise multiplier searched: below it epsilon is in the tens to hundreds."""

MAX_NOISE_MULTIPLIER = 1e6
"""Largest noise multiplier searched: a target needing more is reported as unreachable."""

NUDGE = 1.01
"""Factor :func:`calibrate` raises a proposed noise multiplier by while it overshoots."""

MAX_NUDGES = 100
"""How many times :func:`calibrate` raises it before giving up."""

_PROXY_PLD_DISCRETIZATION = 1e-3
_UNREACHABLE_HINT = "raise the target or delta, or reduce sample_rate or steps"

EventT_contra = TypeVar("EventT_contra", contravariant=True)
EpsilonFn = Callable[[float], float]


class Composes(Protocol[EventT_contra]):
    """What :func:`calibrate` needs of an accountant: compose an event, report epsilon."""

    def compose(self, event: EventT_contra) -> None:
        """Adds one event to the history."""

    def epsilon(self, *, delta: float) -> float:
        """Returns the epsilon of everything composed so far at ``delta``."""


class Search(Protocol):
    """A way to propose a noise multiplier for a target epsilon (:func:`calibrate` checks it)."""

    def __call__(self, epsilon: EpsilonFn, *, target: float) -> float | None:
        """Returns a proposed noise multiplier, or None if none up to the search's limit meets ``target``."""


@dataclass(frozen=True, kw_only=True)
class Bisection:
    """Bracket the answer around ``start``, then bisect on the noise multiplier.

    The bracket gallops from ``start`` by ``factor`` (squared after every miss, so a far-off
    start costs only O(log log) extra evaluations) until ``epsilon(lo) > target >= epsilon(hi)``,
    between ``floor`` and :data:`MAX_NOISE_MULTIPLIER`; bisection at midpoints then shrinks it
    until ``hi - lo <= tolerance * hi`` and proposes ``hi``, which met the target (epsilon
    decreases as the noise multiplier grows). If ``floor`` already meets the target it is
    proposed.

    Attributes:
        tolerance: Relative precision on the noise multiplier, in (0, 0.5].
        start: Where the bracket search starts.
        factor: First galloping step, > 1.
        floor: Smallest noise multiplier searched, > 0.

    Example:
        >>> Bisection(tolerance=1e-3)(lambda z: 2.0 / z, target=1.0)
        2.0

    """

    tolerance: float = 1e-3
    start: float = 1.0
    factor: float = 2.0
    floor: float = MIN_NOISE_MULTIPLIER

    def __post_init__(self) -> None:
        if not 0.0 < self.tolerance <= 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5]; got {self.tolerance!r}")
        if not (self.factor > 1.0 and self.floor > 0.0 and self.start > 0.0):
            raise ValueError(f"a bisection needs factor > 1, floor > 0 and start > 0; got {self!r}")

    def __call__(self, epsilon: EpsilonFn, *, target: float) -> float | None:
        """Returns the noise multiplier found, or None if even :data:`MAX_NOISE_MULTIPLIER` overshoots."""
        bracket = self._bracket(epsilon, target)
        if bracket is None:
            return None
        lo, hi = bracket
        while hi - lo > self.tolerance * hi:
            mid = 0.5 * (lo + hi)
            if epsilon(mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    def _bracket(self, epsilon: EpsilonFn, target: float) -> tuple[float, float] | None:
        """(lo, hi) with epsilon(lo) > target >= epsilon(hi); lo == hi at the floor; None: unreachable."""
        z, factor = min(max(self.start, self.floor), MAX_NOISE_MULTIPLIER), self.factor
        if epsilon(z) <= target:
            while z > self.floor:
                lower = max(z / factor, self.floor)
                if epsilon(lower) > target:
                    return lower, z
                z, factor = lower, factor * factor
            return z, z
        while z < MAX_NOISE_MULTIPLIER:
            upper = min(z * factor, MAX_NOISE_MULTIPLIER)
            if epsilon(upper) <= target:
                return z, upper
            z, factor = upper, factor * factor
        return None


def calibrate(
    make_accountant: Callable[[], Composes[EventT_contra]],
    make_event: Callable[[float], EventT_contra],
    *,
    target_epsilon: float,
    delta: float,
    search: Search | None = None,
    hint: str = _UNREACHABLE_HINT,
) -> float:
    """Returns a noise multiplier z whose release ``make_event(z)`` costs at most ``target_epsilon``.

    The epsilon of z is what a fresh ``make_accountant()`` reports after composing
    ``make_event(z)`` (each z evaluated once). ``search`` proposes z (default: a
    :class:`Bisection` with its defaults); the proposal is then checked, and raised by
    :data:`NUDGE` while it overshoots, so the result never overshoots the target. A
    :class:`Bisection`'s proposal already meets it (its check costs no evaluation).

    Args:
        make_accountant: Returns a new, empty accountant.
        make_event: The event released with noise multiplier z.
        target_epsilon: The budget, finite and > 0.
        delta: Target delta, in (0, 1).
        search: Proposes z from the epsilon function and the target.
        hint: What to change, in the error when no z up to the search's limit meets the target.

    Raises:
        ValueError: On an invalid target or delta; if the search finds no z meeting the
            target; or if :data:`MAX_NUDGES` raises of the proposal still overshoot.

    Example:
        >>> from fedlab.privacy.accountants import RdpAccountant
        >>> def release(z):
        ...     return GaussianEvent(noise_multiplier=z, sample_rate=0.04, steps=2250)
        >>> z = calibrate(RdpAccountant, release, target_epsilon=7.33, delta=1e-5)
        >>> round(z, 2)
        1.5
        >>> acc = RdpAccountant()
        >>> acc.compose(release(z))
        >>> acc.epsilon(delta=1e-5) <= 7.33
        True

    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0.0):
        raise ValueError(f"target_epsilon must be finite and > 0; got {target_epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
    known: dict[float, float] = {}

    def epsilon(noise_multiplier: float) -> float:
        if noise_multiplier not in known:
            accountant = make_accountant()
            accountant.compose(make_event(noise_multiplier))
            known[noise_multiplier] = accountant.epsilon(delta=delta)
        return known[noise_multiplier]

    z = (search or Bisection())(epsilon, target=target_epsilon)
    if z is None:
        raise ValueError(
            f"target_epsilon={target_epsilon!r} is unreachable: even noise multiplier "
            f"{MAX_NOISE_MULTIPLIER:g} exceeds it; {hint}"
        )
    for _ in range(MAX_NUDGES):
        if epsilon(z) <= target_epsilon:
            return z
        z *= NUDGE
    raise ValueError(f"could not find a noise multiplier meeting epsilon {target_epsilon}")


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

    :func:`calibrate` with a :class:`Bisection` on the noise multiplier z of ``steps``
    Poisson-subsampled Gaussian releases. The returned z satisfies ``epsilon(z) <=
    target_epsilon`` as evaluated by the named accountant (never overshoots), and a z smaller by
    the relative ``tolerance`` was found to exceed the target (tight). For ``"pld"`` a coarse PLD
    first narrows the bracket cheaply; only the requested accountant decides.

    Args:
        target_epsilon: The budget, > 0.
        delta: Target delta, in (0, 1).
        sample_rate: Poisson sampling probability per step, in (0, 1].
        steps: Number of steps (compositions), >= 1.
        accountant: ``"pld"`` (tight, default), ``"prv"`` or ``"rdp"``.
        tolerance: Relative precision on the noise multiplier, in (0, 0.5].

    Returns:
        The noise multiplier. If even :data:`MIN_NOISE_MULTIPLIER` meets the target,
        that value is returned (a larger noise than needed never overshoots).

    Raises:
        ValueError: If an argument is invalid (a target that is not finite and > 0 included), or
            the target would need a noise multiplier above :data:`MAX_NOISE_MULTIPLIER`.

    Example:
        >>> z = calibrate_noise_multiplier(
        ...     target_epsilon=7.33, delta=1e-5, sample_rate=0.04, steps=2250, accountant="rdp")
        >>> round(z, 2)
        1.5

    """

    def release(noise_multiplier: float) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)

    def exact() -> Composes[GaussianEvent]:
        return make_accountant(accountant)

    release(1.0)  # validates q and steps
    pld = isinstance(exact(), PldAccountant)  # validates the name
    Bisection(tolerance=tolerance)  # validates the tolerance
    start = 1.0
    if pld:

        def coarse() -> Composes[GaussianEvent]:
            return PldAccountant(value_discretization_interval=_PROXY_PLD_DISCRETIZATION)

        start = calibrate(
            coarse, release, target_epsilon=target_epsilon, delta=delta,
            search=Bisection(tolerance=tolerance, start=1.0, factor=2.0),
        )  # fmt: skip
    search = Bisection(tolerance=tolerance, start=start, factor=1.0 + 2.0 * tolerance)
    return calibrate(exact, release, target_epsilon=target_epsilon, delta=delta, search=search)
