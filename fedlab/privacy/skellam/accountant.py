"""RDP accountant of Skellam events: compose, convert to (epsilon, delta), save and load."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from dp_accounting.rdp import rdp_privacy_accountant

from fedlab.privacy.event_accountant import EventAccountant
from fedlab.privacy.skellam._checks import as_orders, require
from fedlab.privacy.skellam.event import SkellamEvent
from fedlab.privacy.skellam.params import SkellamParams
from fedlab.privacy.skellam.rdp import SKELLAM_RDP_ORDERS

__all__ = ["SkellamAccountant"]

_STATE_VERSION = 1


class SkellamAccountant(EventAccountant[SkellamEvent]):
    """RDP accountant of :class:`SkellamEvent` records (the ``Accountant`` interface).

    Composition adds the RDP curves over :data:`SKELLAM_RDP_ORDERS`; conversion
    to (epsilon, delta) is ``dp_accounting``'s improved RDP conversion (the one
    its ``RdpAccountant`` uses). Events differing only in ``steps`` are merged.

    Example:
        >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=100,
        ...                   min_survivors=100, bits=16, dim=1024)
        >>> acc = SkellamAccountant()
        >>> acc.compose(SkellamEvent(params=p, sample_rate=1.0, steps=1))
        >>> round(acc.epsilon(delta=1e-5), 2)
        4.75

    """

    name: str = "skellam"
    event_type = SkellamEvent

    def __init__(self, *, orders: Sequence[int] = SKELLAM_RDP_ORDERS) -> None:
        self._orders = as_orders(orders)
        self._events: list[SkellamEvent] = []
        self._rdp: npt.NDArray[np.float64] | None = None

    def compose(self, event: SkellamEvent) -> None:
        """Adds one event to the history.

        Raises:
            TypeError: If ``event`` is not a :class:`SkellamEvent`.

        """
        self.refuse_unsupported(event)
        self._events.append(event)
        self._rdp = None

    def fresh(self) -> SkellamAccountant:
        """Returns an empty Skellam accountant with the same orders."""
        return SkellamAccountant(orders=self.orders)

    def rdp(self) -> npt.NDArray[np.float64]:
        """Returns the composed RDP curve at :attr:`orders` (zeros if nothing was composed)."""
        if self._rdp is None:
            total = np.zeros(self._orders.shape)
            for event in _merged(self._events):
                total = total + event.rdp(self._orders)
            self._rdp = total
        return self._rdp

    @property
    def orders(self) -> tuple[int, ...]:
        """The Rényi orders of this accountant."""
        return tuple(int(a) for a in self._orders)

    def epsilon(self, *, delta: float) -> float:
        """Returns the epsilon of everything composed so far at ``delta`` in (0, 1)."""
        require(0.0 < delta < 1.0, f"delta must be in (0, 1); got {delta!r}")
        if not self._events:
            return 0.0
        eps, _ = rdp_privacy_accountant.compute_epsilon(self._orders, self.rdp(), delta)
        return max(0.0, float(eps))

    def delta(self, *, epsilon: float) -> float:
        """Returns the delta of everything composed so far at ``epsilon`` >= 0."""
        require(
            math.isfinite(epsilon) and epsilon >= 0.0, f"epsilon must be finite and >= 0; got {epsilon!r}"
        )
        if not self._events:
            return 0.0
        value, _ = rdp_privacy_accountant.compute_delta(self._orders, self.rdp(), epsilon)
        return min(1.0, max(0.0, float(value)))

    def events(self) -> tuple[SkellamEvent, ...]:
        """Returns every event composed so far, in order."""
        return tuple(self._events)

    def state_dict(self) -> dict[str, Any]:
        """Returns the JSON-serializable state: name, version, orders and events."""
        return {
            "accountant": self.name,
            "version": _STATE_VERSION,
            "settings": {"orders": list(self.orders)},
            "events": [event.to_dict() for event in self._events],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces the history (and orders) with the ones saved in ``state``.

        Raises:
            ValueError: If ``state`` is malformed or from another kind of accountant.

        """
        if not isinstance(state, Mapping) or state.get("accountant") != self.name:
            raise ValueError(f"state is not a {self.name!r} accountant state")
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported accountant state version {state.get('version')!r}")
        raw = state.get("events")
        if not isinstance(raw, list | tuple):
            raise ValueError("accountant state has no list of events")
        settings = state.get("settings", {})
        orders = as_orders(settings.get("orders", list(self.orders)))
        events = [SkellamEvent.from_dict(item) for item in raw]
        self._orders, self._events, self._rdp = orders, events, None


def _merged(events: Sequence[SkellamEvent]) -> list[SkellamEvent]:
    """Merges events equal up to ``steps`` (composition is commutative)."""
    steps: dict[tuple[SkellamParams, float, int | None], int] = {}
    for event in events:
        key = (event.params, event.sample_rate, event.num_survivors)
        steps[key] = steps.get(key, 0) + event.steps
    return [SkellamEvent(params=p, sample_rate=q, steps=t, num_survivors=m) for (p, q, m), t in steps.items()]
