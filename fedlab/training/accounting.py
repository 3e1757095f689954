"""Sample-level DP-SGD accounting with Opacus' accountants, over a portable history.

A client's privacy spend is a history of ``(noise multiplier, sample rate, steps)``
entries, exactly Opacus' ``accountant.history``. The history is plain data: the
caller persists it anywhere (Flower ``context.state``, a file) and hands it back
next round; epsilon is recomputed from it by a fresh Opacus accountant, so
nothing hides in a long-lived accountant object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")
_NUDGE = 1.01
_MAX_NUDGES = 100


@dataclass(frozen=True, kw_only=True)
class PrivacyStep:
    """One entry of an Opacus accountant history: ``steps`` Poisson-sampled Gaussian steps.

    Attributes:
        noise_multiplier: Noise standard deviation over the clipping norm (``z``).
        sample_rate: Poisson sampling probability of each example (``q``).
        steps: Number of optimizer steps taken with these parameters.

    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0.0 or math.isinf(self.noise_multiplier):
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {self.noise_multiplier!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got {self.steps!r}")

    def as_opacus(self) -> tuple[float, float, int]:
        """Return the entry as the tuple Opacus keeps in ``accountant.history``."""
        return (self.noise_multiplier, self.sample_rate, self.steps)


def history_from_opacus(entries: Sequence[tuple[float, float, int]]) -> tuple[PrivacyStep, ...]:
    """Convert an Opacus ``accountant.history`` list into :class:`PrivacyStep` entries."""
    return tuple(
        PrivacyStep(noise_multiplier=float(z), sample_rate=float(q), steps=int(s)) for z, q, s in entries
    )


def epsilon_from_history(history: Sequence[PrivacyStep], *, delta: float, accountant: str) -> float:
    """Return the epsilon at ``delta`` of the whole composed history.

    Args:
        history: Every step the client has taken so far.
        delta: Target delta, in (0, 1).
        accountant: ``"rdp"`` or ``"prv"`` (Opacus' accountants).

    Returns:
        0.0 for an empty history; ``inf`` if any step had noise multiplier 0;
        otherwise what a fresh Opacus accountant of that kind reports, never below 0.

    Examples:
        >>> round(epsilon_from_history(
        ...     [PrivacyStep(noise_multiplier=1.5, sample_rate=0.04, steps=2250)],
        ...     delta=1e-5, accountant="rdp"), 6)
        7.329111

    """
    _check_accountant(accountant)
    _check_delta(delta)
    if not history:
        return 0.0
    if any(step.noise_multiplier == 0.0 for step in history):
        return math.inf
    fresh = create_accountant(mechanism=accountant)
    fresh.history = [step.as_opacus() for step in history]
    # Opacus' RDP conversion goes negative for large delta; epsilon is never below 0.
    return max(0.0, float(fresh.get_epsilon(delta=delta)))


def noise_multiplier_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """Return a noise multiplier whose epsilon after ``steps`` steps is at most the target.

    Calibrates with Opacus' ``get_noise_multiplier`` (which assumes nothing was spent
    before), then checks the answer with a fresh accountant of the same kind and
    raises it by 1% at a time until the target is met, so the result never
    overshoots the budget.

    Args:
        target_epsilon: Budget for the whole run, > 0.
        delta: Target delta, in (0, 1).
        sample_rate: Poisson sampling rate ``q`` of every step, in (0, 1].
        steps: Total number of DP-SGD steps planned (all rounds).
        accountant: ``"rdp"`` or ``"prv"``.

    Raises:
        ValueError: On invalid arguments, or if the budget needs a noise multiplier
            above Opacus' search limit (1e6).

    """
    _check_accountant(accountant)
    _check_delta(delta)
    if not target_epsilon > 0.0:
        raise ValueError(f"target_epsilon must be > 0; got {target_epsilon!r}")
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps!r}")
    sigma = float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )
    return _nudge_until_within(
        sigma,
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )


def _nudge_until_within(
    sigma: float, *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    for _ in range(_MAX_NUDGES):
        history = [PrivacyStep(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)]
        if epsilon_from_history(history, delta=delta, accountant=accountant) <= target_epsilon:
            return sigma
        sigma *= _NUDGE
    raise ValueError(f"could not find a noise multiplier meeting epsilon {target_epsilon}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
