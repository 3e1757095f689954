"""Trade-off functions (f-DP) of the mechanisms an audit tests, as the inverse an f-DP audit needs.

A mechanism is f-DP (Dong, Roth & Su 2022) when every test between the outputs on two adjacent
inputs P and Q has type II error at least f(type I error): for every event D,
``Q(D) <= 1 - f(P(D))``. An f-DP audit (:mod:`fedlab.privacy.auditing.fdp`) uses this in the
other direction, ``P(D) >= inverse(Q(D))``, where ``inverse`` undoes ``y = 1 - f(x)``. For the
symmetric trade-offs here the roles of P and Q may be swapped (add/remove adjacency). Every
``inverse`` is convex, increasing and at most ``y``; an audit is sound as long as the inverse it
uses is at most the mechanism's true one, so any under-estimate is safe.

- :class:`GaussianTradeoff`: mu-GDP, ``inverse(y) = Phi(Phi^-1(y) - mu)``.
- :class:`ProfileTradeoff`: the trade-off of a privacy profile, a list of (epsilon, delta(epsilon))
  pairs the mechanism satisfies (Dong, Roth & Su 2022, Proposition 2.12: f-DP with f the upper
  envelope of the f_{epsilon, delta}). Fewer pairs, or larger deltas, give a smaller inverse.
- :func:`events_tradeoff`: the profile of composed :class:`~fedlab.privacy.events.GaussianEvent`
  releases from the PLD accountant (pessimistic deltas), for add/remove of one record or client.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from fedlab.privacy.accountants import DEFAULT_PLD_DISCRETIZATION, PldAccountant
from fedlab.privacy.events import GaussianEvent

PROFILE_EPSILONS: tuple[float, ...] = tuple(round(0.02 * k, 2) for k in range(501)) + tuple(
    float(e) for e in range(11, 41)
)
"""Epsilons at which :func:`events_tradeoff` asks the accountant for delta: 0 to 10 by 0.02, then 11..40."""


class Tradeoff(Protocol):
    """What an f-DP audit needs of a trade-off function f."""

    def inverse(self, y: float) -> float:
        """Returns the least P(D) that the trade-off allows for an event D with Q(D) = ``y``."""
        ...


@dataclass(frozen=True)
class GaussianTradeoff:
    """mu-Gaussian DP: the trade-off of telling N(0, 1) from N(mu, 1).

    Attributes:
        mu: The GDP parameter, finite and >= 0 (0: perfectly private).

    Example:
        >>> round(GaussianTradeoff(1.0).inverse(0.5), 4)  # Phi(-1)
        0.1587
        >>> round(GaussianTradeoff(0.0).inverse(0.3), 12)
        0.3

    """

    mu: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0.0):
            raise ValueError(f"mu must be finite and >= 0; got {self.mu!r}")

    def inverse(self, y: float) -> float:
        """Returns ``Phi(Phi^-1(y) - mu)`` (0 at y = 0, 1 at y = 1), the least P(D) given Q(D) = y."""
        if y <= 0.0:
            return 0.0
        if y >= 1.0:
            return 1.0
        return float(special.ndtr(special.ndtri(y) - self.mu))


@dataclass(frozen=True)
class ProfileTradeoff:
    """The trade-off of a mechanism that is (epsilon_j, delta_j)-DP for every listed pair.

    ``inverse(y) = max(0, max_j (y - delta_j) e^-epsilon_j, max_j 1 - delta_j - e^epsilon_j (1 - y))``:
    from Q(D) <= e^epsilon P(D) + delta and, on the complement of D, 1 - P(D) <= e^epsilon
    (1 - Q(D)) + delta.

    Attributes:
        epsilons: Epsilons, finite and >= 0.
        deltas: The delta of each epsilon, in [0, 1].

    Example:
        >>> pure = ProfileTradeoff([math.log(3.0)], [0.0])  # randomized response, 3:1 odds
        >>> round(pure.inverse(0.75), 6), round(pure.inverse(0.3), 6)
        (0.25, 0.1)

    """

    epsilons: NDArray[np.float64] = field(repr=False)
    deltas: NDArray[np.float64] = field(repr=False)

    def __init__(self, epsilons: ArrayLike, deltas: ArrayLike) -> None:
        eps = np.asarray(epsilons, dtype=np.float64).ravel()
        dlt = np.asarray(deltas, dtype=np.float64).ravel()
        if eps.size == 0 or eps.size != dlt.size:
            raise ValueError(f"need as many deltas as epsilons (at least one); got {eps.size} and {dlt.size}")
        if not (np.all(np.isfinite(eps)) and np.all(eps >= 0.0)):
            raise ValueError("epsilons must be finite and >= 0")
        if not (np.all(np.isfinite(dlt)) and np.all((dlt >= 0.0) & (dlt <= 1.0))):
            raise ValueError("deltas must be in [0, 1]")
        object.__setattr__(self, "epsilons", eps)
        object.__setattr__(self, "deltas", dlt)

    def inverse(self, y: float) -> float:
        """Returns the least P(D) that the listed (epsilon, delta) pairs allow given Q(D) = ``y``."""
        y = min(max(float(y), 0.0), 1.0)
        low = (y - self.deltas) * np.exp(-self.epsilons)
        high = 1.0 - self.deltas - np.exp(self.epsilons) * (1.0 - y)
        return float(max(0.0, np.max(low), np.max(high)))


def events_tradeoff(
    histories: Sequence[Sequence[GaussianEvent]],
    *,
    noise_scale: float = 1.0,
    value_discretization_interval: float = 1e-3,
) -> ProfileTradeoff:
    """Returns a trade-off that every listed history of Gaussian releases satisfies.

    Each history (what one canary's client, or the run, composed) gets its pessimistic PLD delta at
    each of :data:`PROFILE_EPSILONS`, for add/remove adjacency, with every noise multiplier
    multiplied by ``noise_scale``; the profile keeps the largest delta over the histories, so it
    holds for each of them. Identical histories are accounted once.

    Args:
        histories: One or more non-empty sequences of events.
        noise_scale: Factor on every noise multiplier (1.0: as released), > 0.
        value_discretization_interval: PLD grid step (coarser is faster and still pessimistic).

    Returns:
        The profile's trade-off.

    Raises:
        ValueError: If there is no history, a history is empty, or ``noise_scale`` <= 0.

    Example:
        >>> once = [GaussianEvent(noise_multiplier=1.0, sample_rate=1.0, steps=1)]
        >>> round(events_tradeoff([once]).inverse(0.5), 2)  # about 1-GDP: Phi(-1) = 0.16
        0.16

    """
    if not histories or any(len(h) == 0 for h in histories):
        raise ValueError("need at least one non-empty history of events")
    if not (math.isfinite(noise_scale) and noise_scale > 0.0):
        raise ValueError(f"noise_scale must be finite and > 0; got {noise_scale!r}")
    epsilons = np.asarray(PROFILE_EPSILONS)
    deltas = np.zeros_like(epsilons)
    for history in {tuple(h) for h in histories}:
        accountant = _scaled(history, noise_scale, value_discretization_interval)
        deltas = np.maximum(deltas, [accountant.delta(epsilon=float(e)) for e in epsilons])
    return ProfileTradeoff(epsilons, deltas)


class EventsFamily:
    """Histories of Gaussian releases with every noise multiplier scaled: an f-DP audit's claims.

    Scale 1 is what the run released (each canary's client, or the run, composed one of the
    histories); :meth:`tradeoff` is :func:`events_tradeoff` at that scale and :meth:`epsilon` the
    largest PLD epsilon of the scaled histories at ``delta``.

    Args:
        histories: One or more non-empty sequences of events, all with noise.
        delta: The audit's delta, in (0, 1).

    Example:
        >>> once = [GaussianEvent(noise_multiplier=1.0, sample_rate=1.0, steps=1)]
        >>> family = EventsFamily([once], delta=1e-5)
        >>> family.epsilon(2.0) < family.epsilon(1.0)
        True

    """

    def __init__(self, histories: Sequence[Sequence[GaussianEvent]], *, delta: float) -> None:
        if not histories or any(len(h) == 0 for h in histories):
            raise ValueError("need at least one non-empty history of events")
        if any(e.noise_multiplier == 0.0 for h in histories for e in h):
            raise ValueError("a history without noise has no trade-off to audit")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1); got {delta!r}")
        self._histories = sorted({tuple(h) for h in histories}, key=repr)
        self._delta = float(delta)

    def tradeoff(self, noise_scale: float) -> ProfileTradeoff:
        """Returns :func:`events_tradeoff` of the histories at ``noise_scale``."""
        return events_tradeoff(self._histories, noise_scale=noise_scale)

    def epsilon(self, noise_scale: float) -> float:
        """Returns the largest PLD epsilon at the family's delta of the histories at ``noise_scale``."""
        scaled = (_scaled(h, noise_scale, DEFAULT_PLD_DISCRETIZATION) for h in self._histories)
        return max(accountant.epsilon(delta=self._delta) for accountant in scaled)


def _scaled(history: Sequence[GaussianEvent], noise_scale: float, interval: float) -> PldAccountant:
    """A PLD accountant that composed ``history`` with every noise multiplier times ``noise_scale``."""
    accountant = PldAccountant(value_discretization_interval=interval)
    for e in history:
        noise = e.noise_multiplier * noise_scale
        accountant.compose(GaussianEvent(noise_multiplier=noise, sample_rate=e.sample_rate, steps=e.steps))
    return accountant
