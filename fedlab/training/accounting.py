"""Sample-level DP-SGD accounting with Opacus' accountants, over a portable history of events.

A client's privacy spend is a history of :class:`~fedlab.privacy.events.GaussianEvent` records
(noise multiplier, sample rate, steps): what Opacus keeps in ``accountant.history`` as tuples.
The tuples exist only at the Opacus boundary (:func:`history_from_opacus`,
:func:`opacus_history`). The history is plain data: the caller persists it anywhere (Flower
``context.state``, a file) and hands it back next round; epsilon is recomputed from it by a fresh
Opacus accountant, so nothing hides in a long-lived accountant object.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from fedlab.core.choices import CLIENT_ACCOUNTANTS
from fedlab.privacy.calibration import EpsilonFn, calibrate
from fedlab.privacy.event_accountant import EventAccountant
from fedlab.privacy.events import GaussianEvent

ACCOUNTANTS = CLIENT_ACCOUNTANTS
"""Opacus' accountants, by the names Opacus knows them."""


def history_from_opacus(entries: Sequence[tuple[float, float, int]]) -> tuple[GaussianEvent, ...]:
    """Convert an Opacus ``accountant.history`` list into events.

    >>> history_from_opacus([(1.1, 0.01, 100)])
    (GaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=100),)
    """
    return tuple(
        GaussianEvent(noise_multiplier=float(z), sample_rate=float(q), steps=int(s)) for z, q, s in entries
    )


def opacus_history(events: Sequence[GaussianEvent]) -> list[tuple[float, float, int]]:
    """Convert events into an Opacus ``accountant.history`` list.

    >>> opacus_history([GaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=100)])
    [(1.1, 0.01, 100)]
    """
    return [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]


def history_after_steps(
    history: Sequence[GaussianEvent], *, noise_multiplier: float, sample_rate: float, steps: int
) -> tuple[GaussianEvent, ...]:
    """The history after ``steps`` more DP-SGD steps, merged as Opacus' accountants merge steps.

    An Opacus accountant extends its last entry when a step has the same noise multiplier and
    sample rate, and appends a new entry otherwise; this gives the history an Opacus-hooked
    trainer would return after the same steps.

    >>> h = history_after_steps((), noise_multiplier=1.0, sample_rate=0.1, steps=3)
    >>> history_after_steps(h, noise_multiplier=1.0, sample_rate=0.1, steps=2)
    (GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=5),)
    >>> len(history_after_steps(h, noise_multiplier=1.2, sample_rate=0.1, steps=2))
    2
    """
    events = list(history)
    if steps <= 0:
        return tuple(events)
    last = events[-1] if events else None
    if last is not None and (last.noise_multiplier, last.sample_rate) == (noise_multiplier, sample_rate):
        events[-1] = GaussianEvent(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=last.steps + steps
        )
    else:
        events.append(GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps))
    return tuple(events)


def epsilon_from_history(history: Sequence[GaussianEvent], *, delta: float, accountant: str) -> float:
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
        ...     [GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250)],
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
    fresh.history = opacus_history(history)
    # Opacus' RDP conversion goes negative for large delta; epsilon is never below 0.
    return max(0.0, float(fresh.get_epsilon(delta=delta)))


class OpacusAccountant(EventAccountant[GaussianEvent]):
    """DP-SGD's accountant: Opacus' RDP or PRV over a history of :class:`GaussianEvent` records.

    Epsilon is :func:`epsilon_from_history` of the events composed so far (sample level: one
    example added or removed).

    Args:
        name: ``"rdp"`` or ``"prv"``.

    Example:
        >>> acc = OpacusAccountant("rdp")
        >>> step = GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
        >>> acc.compose(step)
        >>> round(acc.epsilon(delta=1e-5), 6), acc.would_exceed(step, max_epsilon=8.0, delta=1e-5)
        (7.329111, True)

    """

    event_type = GaussianEvent

    def __init__(self, name: str = "rdp") -> None:
        _check_accountant(name)
        self.name = name
        self._events: list[GaussianEvent] = []

    def compose(self, event: GaussianEvent) -> None:
        """Adds one event to the history (TypeError unless it is a :class:`GaussianEvent`)."""
        self.refuse_unsupported(event)
        self._events.append(event)

    def epsilon(self, *, delta: float) -> float:
        """Returns the epsilon at ``delta`` of everything composed so far (:func:`epsilon_from_history`)."""
        return epsilon_from_history(self._events, delta=delta, accountant=self.name)

    def events(self) -> tuple[GaussianEvent, ...]:
        """Returns every event composed so far, in order."""
        return tuple(self._events)

    def fresh(self) -> OpacusAccountant:
        """Returns an empty accountant of the same kind."""
        return OpacusAccountant(self.name)


@dataclass(frozen=True, kw_only=True)
class OpacusSearch:
    """DP-SGD's proposal for :func:`~fedlab.privacy.calibration.calibrate`: Opacus' ``get_noise_multiplier``.

    Opacus' search doubles z from 20 until its accountant meets the target, then bisects until
    the epsilon is within 0.01 below the target. It evaluates Opacus' own accountant, whose RDP
    conversion can go negative at a large delta; re-expressed over :class:`OpacusAccountant`
    (never below 0) it would stop elsewhere when the target is at most 0.01, so fedlab calls
    Opacus' search itself to keep every calibrated value as it was.

    Attributes:
        delta: Target delta.
        sample_rate: Poisson sampling rate ``q`` of every step.
        steps: Total number of steps.
        accountant: ``"rdp"`` or ``"prv"``.

    """

    delta: float
    sample_rate: float
    steps: int
    accountant: str

    def __call__(self, epsilon: EpsilonFn, *, target: float) -> float:
        """Returns Opacus' noise multiplier for ``target`` (Opacus evaluates its own epsilon).

        Raises:
            ValueError: From Opacus, if the budget needs a noise multiplier above 1e6.

        """
        del epsilon
        return float(
            get_noise_multiplier(
                target_epsilon=target,
                target_delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.steps,
                accountant=self.accountant,
            )
        )


def noise_multiplier_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """Return a noise multiplier whose epsilon after ``steps`` steps is at most the target.

    :func:`~fedlab.privacy.calibration.calibrate` over :class:`OpacusAccountant`: Opacus'
    ``get_noise_multiplier`` proposes (:class:`OpacusSearch`; it assumes nothing was spent
    before), and ``calibrate`` checks the proposal with a fresh accountant of the same kind and
    raises it by 1% at a time until the target is met, so the result never overshoots the budget.

    Args:
        target_epsilon: Budget for the whole run, finite and > 0.
        delta: Target delta, in (0, 1).
        sample_rate: Poisson sampling rate ``q`` of every step, in (0, 1].
        steps: Total number of DP-SGD steps planned (all rounds).
        accountant: ``"rdp"`` or ``"prv"``.

    Raises:
        ValueError: On invalid arguments, or if the budget needs a noise multiplier
            above Opacus' search limit (1e6).

    Example:
        >>> round(noise_multiplier_for_epsilon(
        ...     target_epsilon=7.33, delta=1e-5, sample_rate=0.04, steps=2250), 2)
        1.5

    """
    _check_accountant(accountant)

    def release(noise_multiplier: float) -> GaussianEvent:
        return GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)

    release(1.0)  # validates q and steps
    search = OpacusSearch(delta=delta, sample_rate=sample_rate, steps=steps, accountant=accountant)
    return calibrate(
        lambda: OpacusAccountant(accountant),
        release,
        target_epsilon=target_epsilon,
        delta=delta,
        search=search,
    )


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")
