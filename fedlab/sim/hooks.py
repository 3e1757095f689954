"""What an audit (or a test) may add to an inline run: extra clients, a view of each release.

Nothing here is reachable from a config: :func:`~fedlab.sim.inline.simulate_inline` takes an
:class:`InlineHooks` from code only (``fedlab audit`` builds one).

* :class:`ExtraClients` are clients outside the data (an audit's canary clients): they join the
  population the server samples from and answer rounds with reports of their own. The run's
  population size counts all their slots, present or not, so that whether one is present does not
  change any public value (as user-level DP's fixed denominator q*N assumes).
* ``on_release`` sees every round the server releases: the round, its global weights and the
  reports the server aggregated (each client's update, without secure aggregation).
* ``secure_server``: the server draws its sampling and noise from secret streams, as deployed.
* ``replies``: rewrites what clients send back (hostile clients, for robustness benchmarks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedlab.algorithms.federation import ClientTransport, RoundPlan, RoundRecorder
from fedlab.core.metrics import RoundMetrics
from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.privacy.ledger import FederationSpend

ReleaseTap = Callable[[int, Sequence[np.ndarray], Sequence[TrainReport]], None]
ReplyTap = Callable[[RoundPlan, RoundReplies], RoundReplies]
"""Rewrites a round's replies: ``(plan, replies) -> replies``."""
"""Called with each released round: ``(round_num, weights, reports)``."""


class ExtraClients(Protocol):
    """Clients an audit adds to the population (see the module docstring)."""

    @property
    def slots(self) -> int:
        """How many extra clients could exist (counted in the population size)."""
        ...

    def present(self) -> list[str]:
        """The ids of the extra clients that exist in this run (never ids of real clients)."""
        ...

    def train(
        self, plan: RoundPlan, weights: Sequence[np.ndarray], client_ids: Sequence[str]
    ) -> list[TrainReport]:
        """The reports of the planned extra clients ``client_ids`` for this round."""
        ...


@dataclass(frozen=True)
class InlineHooks:
    """An audit's access to an inline run.

    Attributes:
        extra_clients: Clients added to the population (user-level DP runs only), or None.
        on_release: Sees every released round, or None.
        secure_server: The server's sampling and noise come from secret streams (deployment).
        replies: Rewrites each round's replies before the server sees them (hostile clients
            in a robustness benchmark), or None.
    """

    extra_clients: ExtraClients | None = None
    on_release: ReleaseTap | None = None
    secure_server: bool = False
    replies: ReplyTap | None = None


class RewrittenReplies:
    """A transport whose replies pass through ``rewrite`` (hostile clients) before the server sees them."""

    def __init__(self, inner: ClientTransport, rewrite: ReplyTap) -> None:
        self._inner = inner
        self._rewrite = rewrite

    def available_clients(self) -> list[str]:
        """The inner transport's clients."""
        return self._inner.available_clients()

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Train through the inner transport, then rewrite the replies."""
        return self._rewrite(plan, self._inner.train(plan, weights))


class WithExtraClients:
    """A transport whose population also holds ``extra``'s clients; each round trains both kinds.

    Args:
        inner: The transport of the real clients.
        extra: The extra clients.
    """

    def __init__(self, inner: ClientTransport, extra: ExtraClients) -> None:
        self._inner = inner
        self._extra = extra

    def available_clients(self) -> list[str]:
        """The real clients available now, and the extra clients that exist."""
        return [*self._inner.available_clients(), *self._extra.present()]

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Train the planned real clients through the inner transport; add the extra clients' reports."""
        extra = set(self._extra.present())
        real = tuple(c for c in plan.client_ids if c not in extra)
        added = [c for c in plan.client_ids if c in extra]
        replies = self._inner.train(RoundPlan(plan.round_num, real, plan.seed, plan.instructions), weights)
        reports = (*replies.reports, *self._extra.train(plan, weights, added))
        return RoundReplies(reports=reports, failures=replies.failures, extra=replies.extra)


class TappedRecorder:
    """A recorder that shows each released round to ``tap``, then records it as ``inner`` does."""

    def __init__(self, inner: RoundRecorder, tap: ReleaseTap) -> None:
        self._inner = inner
        self._tap = tap

    def start(self) -> None:
        """Start the inner recorder."""
        self._inner.start()

    def release_round(
        self,
        round_num: int,
        weights: Sequence[np.ndarray],
        reports: Sequence[TrainReport],
        *,
        seconds: float,
        extra: Mapping[str, float | int | str] | None = None,
        federation: Sequence[FederationSpend] = (),
        state: Mapping[str, Any] | None = None,
    ) -> RoundMetrics:
        """Commit and release through the inner recorder, then show the round to the tap."""
        metrics = self._inner.release_round(
            round_num, weights, reports, seconds=seconds, extra=extra, federation=federation, state=state
        )
        self._tap(round_num, weights, reports)
        return metrics
