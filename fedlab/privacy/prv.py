"""Privacy-random-variable (PRV) accountant (Gopi, Lee & Wutschitz 2021), in numpy/scipy.

A mechanism's *privacy random variable* is its privacy loss Y = log(P(o)/Q(o))
for o drawn from P, where (P, Q) are the output distributions on neighbouring
inputs. Composition adds independent PRVs, and

    delta(epsilon) = E[(1 - e^(epsilon - Y))_+]

for the sum. For the Poisson-subsampled Gaussian (sensitivity 1, noise sigma,
sampling q) with M = (1-q) N(0, sigma^2) + q N(1, sigma^2):

- *remove* one record: (P, Q) = (M, N(0, sigma^2)),
  Y = log(1 - q + q exp((2u - 1)/(2 sigma^2))) with u ~ M;
- *add* one record: (P, Q) = (N(0, sigma^2), M), Y = -log(1 - q + q exp((-2u - 1)/(2 sigma^2)))
  with u ~ N(0, sigma^2).

Both are increasing functions of a Gaussian-mixture variable u, so their CDFs
are exact. The accountant reports the worse of the two directions (as
``dp_accounting``'s PLD does; for q = 1 they coincide and only one is computed).

Algorithm (per direction), all on one grid of mesh h (values k*h):

1. Truncate each step's PRV to u in [means - 10 sigma, means + 10 sigma]: mass
   below is moved *up* to the lowest value (pessimistic), mass above becomes an
   atom at +infinity (counted in full in delta).
2. Round every value to the nearest grid point (cell masses from the exact CDF).
   The rounding error D of one step lies in [-h/2, h/2]; its mean b is computed
   exactly (the true mean by quadrature), so by Hoeffding the total rounding
   error over T steps is below T*b - s with probability at most delta_H, where
   s = h*sqrt(T ln(1/delta_H)/2).
3. Compose: the FFT of each step's probabilities raised to its number of steps,
   heterogeneous events multiplied, one inverse FFT. The FFT window is chosen by
   Chernoff bounds on the moment generating function so that at most 1e-16 of
   the composed mass lies outside it on either side (the wrap-around it causes
   is added to delta).
4. Upper estimate: epsilon = eps_grid(delta - delta_H - 1e-16) - T*b + s, where
   eps_grid solves delta(epsilon) = target exactly on the discrete result. A
   matching lower estimate gives :meth:`PrvAccountant.epsilon_bounds`.

The mesh is chosen adaptively: a first pass with about 2^14 points gives an
upper estimate; if its error term s exceeds ``relative_error * epsilon`` (or
``absolute_error``, whichever is larger) a second, finer pass is run. So the
reported epsilon is an upper bound, typically within 0.1-0.3% of the exact value
(and of ``dp_accounting``'s PLD). FFT rounding limits deltas to about 1e-13 and
above. The numerics live in :mod:`fedlab.privacy.prv_grid`.

Why fedlab keeps its own PRV next to ``dp_accounting``'s PLD and Opacus' PRV: the
server-side accountants live in :mod:`fedlab.privacy`, which imports no torch or opacus
(importing Opacus imports torch), so Opacus' PRV serves only DP-SGD on the client
(:class:`~fedlab.training.accounting.OpacusAccountant`). This one composes
:class:`~fedlab.privacy.events.GaussianEvent` records through the
:class:`~fedlab.privacy.accountants.Accountant` protocol at a relative error (2e-3 by
default) and reports the interval (:meth:`PrvAccountant.epsilon_bounds`); Opacus'
``get_epsilon`` reports the upper end at an absolute error (0.01 by default, a quarter of
an epsilon of 0.04 in the cross-device regime). Its algorithm is independent of the PLD,
which is how the tests cross-check the PLD numbers. Server-side ``accountant = "prv"`` is
this one; client-side (DP-SGD) ``"prv"`` is Opacus'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedlab.privacy._shared import STATE_VERSION, check_delta, check_epsilon, merged_events, parse_state
from fedlab.privacy.event_accountant import EventAccountant
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.prv_grid import (
    MAX_GRID_SIZE,
    Composition,
    Direction,
    PrivacyLoss,
    delta_upper,
    epsilon_lower,
    epsilon_upper,
    slack_of,
)

FloatArray = NDArray[np.float64]

DEFAULT_RELATIVE_ERROR = 2e-3
"""Target error of the reported epsilon, relative to epsilon."""

DEFAULT_ABSOLUTE_ERROR = 1e-4
"""Target error of the reported epsilon for small epsilons (absolute floor)."""

# --- the accountant ----------------------------------------------------------------------------------


class PrvAccountant(EventAccountant[GaussianEvent]):
    """Privacy-random-variable accountant (Gopi et al. 2021); an upper bound as tight as PLD.

    Implements the :class:`~fedlab.privacy.accountants.Accountant` protocol. Its
    reported epsilon is an *upper* estimate: the exact epsilon lies in
    :meth:`epsilon_bounds`, an interval of width about ``2 * relative_error *
    epsilon``. Cost: 0.05-0.5 s per call for typical settings (the composition is
    cached per mesh until the next :meth:`compose`).

    Args:
        relative_error: Target error of the reported epsilon, relative to it.
        absolute_error: Target error for small epsilons (floor of the error).

    Example:
        >>> acc = PrvAccountant()
        >>> acc.compose(GaussianEvent(noise_multiplier=1.0, sample_rate=1e-3, steps=2000))
        >>> round(acc.epsilon(delta=1e-6), 2)
        0.25

    """

    name: str = "prv"
    event_type = GaussianEvent

    def __init__(
        self,
        *,
        relative_error: float = DEFAULT_RELATIVE_ERROR,
        absolute_error: float = DEFAULT_ABSOLUTE_ERROR,
    ) -> None:
        self._relative = _check_error("relative_error", relative_error)
        self._absolute = _check_error("absolute_error", absolute_error)
        self._events: list[GaussianEvent] = []
        self._directions: tuple[Direction, ...] | None = None
        self._compositions: dict[float, tuple[Composition, ...]] = {}

    def fresh(self) -> PrvAccountant:
        """Returns an empty PRV accountant with the same error targets."""
        return PrvAccountant(relative_error=self._relative, absolute_error=self._absolute)

    def compose(self, event: GaussianEvent) -> None:
        """Adds one event to the history.

        Args:
            event: The release to account for.

        Raises:
            TypeError: If ``event`` is not a :class:`GaussianEvent`.

        """
        self.refuse_unsupported(event)
        self._events.append(event)
        self._directions = None
        self._compositions = {}

    def epsilon(self, *, delta: float) -> float:
        """Returns an upper estimate of the epsilon of everything composed so far.

        Args:
            delta: Target delta, in (0, 1).

        Returns:
            Epsilon (0.0 if nothing was composed, ``inf`` after a noiseless release).

        """
        return self.epsilon_bounds(delta=delta)[1]

    def epsilon_bounds(self, *, delta: float) -> tuple[float, float]:
        """Returns (lower, upper) estimates between which the exact epsilon lies.

        Args:
            delta: Target delta, in (0, 1).

        Returns:
            The interval; :meth:`epsilon` reports its upper end.

        Example:
            >>> acc = PrvAccountant()
            >>> acc.compose(GaussianEvent(noise_multiplier=2.0, sample_rate=1.0, steps=4))
            >>> low, high = acc.epsilon_bounds(delta=1e-5)
            >>> low <= 4.3772 <= high and high - low < 0.02
            True

        """
        check_delta(delta)
        if not self._events:
            return 0.0, 0.0
        if any(e.noise_multiplier == 0.0 for e in self._events):
            return math.inf, math.inf
        directions = self._prepared()
        coarse = min(d.first_mesh() for d in directions)
        bounds = self._bounds_at(coarse, delta)
        slack = max(slack_of(self._at(coarse), delta))
        wanted = max(self._relative * max(bounds[0], 0.0), self._absolute)
        if slack > wanted and math.isfinite(bounds[1]):
            fine = self._feasible(coarse * 2.0 ** -math.ceil(math.log2(slack / wanted)))
            if fine < coarse:
                fine_bounds = self._bounds_at(fine, delta)
                bounds = (max(bounds[0], fine_bounds[0]), min(bounds[1], fine_bounds[1]))
        return bounds

    def delta(self, *, epsilon: float) -> float:
        """Returns an upper estimate of the delta of everything composed so far at ``epsilon``.

        Args:
            epsilon: Target epsilon, finite and >= 0.

        Returns:
            Delta in [0, 1] (0.0 if nothing was composed).

        """
        check_epsilon(epsilon)
        if not self._events:
            return 0.0
        if any(e.noise_multiplier == 0.0 for e in self._events):
            return 1.0
        directions = self._prepared()
        coarse = min(d.first_mesh() for d in directions)
        wanted = max(self._relative * epsilon, self._absolute)
        steps = max(d.steps for d in directions)
        reference = coarse * math.sqrt(steps * math.log(1e10) / 2.0)
        h = coarse
        if reference > wanted:
            h = self._feasible(coarse * 2.0 ** -math.ceil(math.log2(reference / wanted)))
        deltas = [delta_upper(c, epsilon) for c in self._at(h)]
        return min(1.0, max(0.0, max(deltas)))

    def events(self) -> tuple[GaussianEvent, ...]:
        """Returns every event composed so far, in order."""
        return tuple(self._events)

    def state_dict(self) -> dict[str, Any]:
        """Returns the JSON-serializable state: name, version, settings and events."""
        return {
            "accountant": self.name,
            "version": STATE_VERSION,
            "settings": {"relative_error": self._relative, "absolute_error": self._absolute},
            "events": [event.to_dict() for event in self._events],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces the history (and settings) with the ones saved in ``state``.

        Args:
            state: Output of :meth:`state_dict` of a PRV accountant.

        Raises:
            ValueError: If ``state`` is malformed or from another kind of accountant.

        """
        events = parse_state(state, name=self.name)
        settings = state.get("settings", {})
        if not isinstance(settings, Mapping):
            raise ValueError("accountant state settings must be a mapping")
        self._relative = _check_error("relative_error", settings.get("relative_error", self._relative))
        self._absolute = _check_error("absolute_error", settings.get("absolute_error", self._absolute))
        self._events = events
        self._directions = None
        self._compositions = {}

    def _prepared(self) -> tuple[Direction, ...]:
        if self._directions is None:
            merged = merged_events(self._events)
            both = any(e.sample_rate < 1.0 for e in merged)
            self._directions = tuple(
                Direction.build(
                    [(PrivacyLoss(e.noise_multiplier, e.sample_rate, remove), e.steps) for e in merged]
                )
                for remove in ((True, False) if both else (True,))
            )
        return self._directions

    def _feasible(self, h: float) -> float:
        """The mesh h, enlarged if needed so that no grid exceeds MAX_GRID_SIZE."""
        while max(d.grid_points(h) for d in self._prepared()) > MAX_GRID_SIZE:
            h *= 2.0
        return h

    def _at(self, h: float) -> tuple[Composition, ...]:
        if h not in self._compositions:
            self._compositions[h] = tuple(d.compose(h) for d in self._prepared())
        return self._compositions[h]

    def _bounds_at(self, h: float, delta: float) -> tuple[float, float]:
        compositions = self._at(h)
        lower = max(epsilon_lower(c, delta) for c in compositions)
        upper = max(epsilon_upper(c, delta) for c in compositions)
        return max(0.0, lower), max(0.0, upper)


def _check_error(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 0.1:
        raise ValueError(f"{name} must be in (0, 0.1]; got {value!r}")
    return float(value)
