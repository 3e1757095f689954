"""The budget check every accountant answers: which events it composes, and would more exceed a budget.

An accountant composes events of one family (:class:`~fedlab.privacy.events.GaussianEvent` for
the PLD, RDP and PRV accountants and DP-SGD's Opacus accountant,
:class:`~fedlab.privacy.skellam.SkellamEvent` for the Skellam accountant, a device's charges for
the device's). :class:`EventAccountant` is what they share: each says which events it
:meth:`~EventAccountant.supports`, and :meth:`~EventAccountant.would_exceed` is the one "would
the next release exceed the budget" check that DP-FedAvg, secure FedAvg and the device use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

EventT = TypeVar("EventT")


class EventAccountant(ABC, Generic[EventT]):
    """An accountant of one family of events, with the budget check written once.

    A subclass names the type of event it composes (``event_type``; or overrides
    :meth:`supports`), composes them, reports the epsilon of what it composed and makes an empty
    accountant of its own kind and settings (:meth:`fresh`). :meth:`epsilon_after` composes the
    history and the new events into a fresh accountant (the computation composing them for real
    would do, so the same number), and :meth:`would_exceed` compares that epsilon with the budget.

    Example:
        >>> from fedlab.privacy.accountants import RdpAccountant
        >>> from fedlab.privacy.events import GaussianEvent
        >>> accountant = RdpAccountant()
        >>> isinstance(accountant, EventAccountant), accountant.epsilon(delta=1e-5)
        (True, 0.0)
        >>> step = GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=100)
        >>> accountant.would_exceed(step, max_epsilon=1.0, delta=1e-5)
        True
    """

    name: str
    event_type: ClassVar[type]

    def supports(self, event: object) -> bool:
        """Whether this accountant composes ``event`` (by default: whether it is an ``event_type``)."""
        return isinstance(event, self.event_type)

    @abstractmethod
    def compose(self, event: EventT) -> None:
        """Adds one event to the history."""

    @abstractmethod
    def epsilon(self, *, delta: float) -> float:
        """Returns the epsilon of everything composed so far at ``delta``."""

    @abstractmethod
    def events(self) -> tuple[EventT, ...]:
        """Returns every event composed so far, in order."""

    @abstractmethod
    def fresh(self) -> EventAccountant[EventT]:
        """Returns an empty accountant of the same kind and settings."""

    def epsilon_after(self, *events: EventT, delta: float) -> float:
        """Returns the epsilon at ``delta`` if ``events`` were composed after the history.

        Args:
            *events: The releases to add (none: the epsilon of the history alone).
            delta: Target delta, in (0, 1).

        Raises:
            TypeError: If this accountant does not compose one of ``events``.

        Example:
            >>> from fedlab.privacy.accountants import RdpAccountant
            >>> from fedlab.privacy.events import GaussianEvent
            >>> acc = RdpAccountant()
            >>> round(acc.epsilon_after(
            ...     GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250), delta=1e-5), 2)
            7.33
            >>> acc.events()  # nothing was composed
            ()

        """
        for event in events:
            self.refuse_unsupported(event)
        trial = self.fresh()
        for event in (*self.events(), *events):
            trial.compose(event)
        return trial.epsilon(delta=delta)

    def would_exceed(self, *events: EventT, max_epsilon: float, delta: float) -> bool:
        """Whether composing ``events`` after the history would take epsilon above ``max_epsilon``.

        Args:
            *events: The releases to add (none: whether the history alone is above it).
            max_epsilon: The budget, > 0 (``inf``: no finite budget).
            delta: Target delta, in (0, 1).

        Raises:
            ValueError: If ``max_epsilon`` is not > 0.
            TypeError: If this accountant does not compose one of ``events``.

        Example:
            >>> from fedlab.privacy.accountants import RdpAccountant
            >>> from fedlab.privacy.events import GaussianEvent
            >>> acc = RdpAccountant()
            >>> step = GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
            >>> acc.would_exceed(step, max_epsilon=8.0, delta=1e-5)
            False
            >>> acc.compose(step)
            >>> acc.would_exceed(step, max_epsilon=8.0, delta=1e-5)
            True

        """
        if not max_epsilon > 0.0:
            raise ValueError(f"max_epsilon must be > 0; got {max_epsilon!r}")
        return self.epsilon_after(*events, delta=delta) > max_epsilon

    def refuse_unsupported(self, event: object) -> None:
        """Raises TypeError unless this accountant composes ``event``."""
        if not self.supports(event):
            raise TypeError(f"the {self.name} accountant does not compose {type(event).__name__}")
