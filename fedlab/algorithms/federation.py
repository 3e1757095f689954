"""The federated-averaging round loop, independent of how messages travel.

A :class:`ClientTransport` moves the global model to sampled clients and brings
their reports back (Flower's Grid, an in-process worker pool, ...). A
:class:`RoundRecorder` commits each round's privacy spending and then releases the
new model. The loop itself only samples, averages and hands over: the same code
runs in every simulator and in deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedlab.algorithms.resume import LoopStart, restore_stream, stream_state
from fedlab.algorithms.robust import aggregate_delta
from fedlab.algorithms.sampling import sample_fraction, sample_poisson
from fedlab.algorithms.server_optimizer import optimizer_state, resumed_optimizer
from fedlab.algorithms.validation import UpdateRules, screen
from fedlab.core.checkpoint import Checkpoint
from fedlab.core.choices import AggregationKind
from fedlab.core.metrics import RoundMetrics
from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.server_config import MAX_EXAMPLES, ServerOptimizerSettings
from fedlab.privacy.ledger import FederationSpend
from fedlab.privacy.secure_random import RandomStream


def round_seed(seed: int, round_num: int) -> int:
    """Derive the public per-round seed that clients mix with their own identity.

    >>> round_seed(0, 1) == round_seed(0, 1) != round_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed, round_num]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass(frozen=True)
class RoundPlan:
    """Which clients train in a round, the round's public seed and instructions.

    ``instructions`` are public per-round values the clients need (e.g. the current
    ``clipping_norm`` under adaptive clipping).
    """

    round_num: int
    client_ids: tuple[str, ...]
    seed: int
    instructions: Mapping[str, float] = field(default_factory=dict)


class ClientTransport(Protocol):
    """Carries a round's model to clients and their reports back."""

    def available_clients(self) -> list[str]:
        """The stable ids of the clients that can be sampled now."""
        ...

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Have the planned clients train from ``weights``; return what came back."""
        ...


class RoundRecorder(Protocol):
    """Commits a round's privacy spending, then releases its model."""

    def start(self) -> None:
        """Called once before the first round."""
        ...

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
        """Commit the spending of ``reports`` (and the server's own releases), then release ``weights``.

        ``state`` is the loop's state after the round (JSON), committed with the spending so
        that a resumed run goes on from it (:class:`~fedlab.algorithms.resume.LoopStart`).
        """
        ...


@dataclass(frozen=True)
class FedAvgSettings:
    """How many rounds, what fraction of clients per round, how they are drawn, the run seed.

    ``sampling`` is ``fraction`` (exactly that share of clients, uniformly) or
    ``poisson`` (each client independently with probability ``fraction_train``). Updates are
    checked (:mod:`fedlab.algorithms.validation`, norm up to ``max_update_norm`` when set) and
    combined by ``aggregation`` (:func:`fedlab.algorithms.robust.aggregate`).
    """

    rounds: int
    fraction_train: float
    seed: int
    sampling: str = "fraction"
    aggregation: AggregationKind = AggregationKind.FEDAVG
    trim_fraction: float = 0.1
    norm_bound: float | None = None
    max_update_norm: float | None = None
    max_examples: int = MAX_EXAMPLES
    optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)

    def sample(self, client_ids: Sequence[str], rng: RandomStream) -> list[str]:
        """Draw one round's clients."""
        if self.sampling == "poisson":
            return sample_poisson(client_ids, rate=self.fraction_train, rng=rng)
        return sample_fraction(client_ids, fraction=self.fraction_train, rng=rng)


Sampler = Callable[[int, np.random.Generator], Sequence[str]]
"""Draws one round's client ids: ``(round_num, rng) -> ids``."""


@runtime_checkable
class IndexSampling(Protocol):
    """A transport that samples its population by index, without listing it (a simulator).

    It must draw exactly the clients :meth:`FedAvgSettings.sample` draws from the same generator
    state, so that the run does not depend on which way it sampled.
    """

    def sample(
        self, round_num: int, rng: np.random.Generator, *, mode: str, fraction: float
    ) -> tuple[str, ...]:
        """The ids of the clients sampled for ``round_num`` (``mode``: ``fraction`` or ``poisson``)."""
        ...


def index_sampler(transport: IndexSampling, settings: FedAvgSettings) -> Sampler:
    """The :data:`Sampler` that draws ``settings``' clients through ``transport`` by index."""

    def by_index(round_num: int, rng: np.random.Generator) -> Sequence[str]:
        return transport.sample(round_num, rng, mode=settings.sampling, fraction=settings.fraction_train)

    return by_index


def run_fedavg(
    *,
    transport: ClientTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    settings: FedAvgSettings,
    sampler: Sampler | None = None,
    resume: Checkpoint | None = None,
) -> list[np.ndarray]:
    """Run federated averaging of client deltas for ``settings.rounds`` rounds.

    Each round: sample clients over their stable ids (seeded, so a run is
    reproducible whatever ids the transport assigns), send them the global model,
    average the deltas that came back weighted by examples, and hand the round to the
    recorder, which commits its privacy spending before it releases the model. A
    round where no client answered keeps the previous model.

    ``sampler`` replaces the default draw over ``transport.available_clients()``; a
    simulator with millions of clients samples by index instead of listing them, and
    must draw the same clients from the same generator state. ``resume`` continues a run after
    its last committed round, from that round's weights and sampling state.

    Returns:
        The final global weights.
    """
    draw = sampler or (lambda _round, rng: settings.sample(transport.available_clients(), rng))
    start = LoopStart.of(resume, initial_weights)
    rng = np.random.default_rng([settings.seed, 1])
    restore_stream(rng, start.value("sampling"))
    weights = start.weights
    optimizer = resumed_optimizer(settings.optimizer, start)
    rules = UpdateRules.for_model(
        weights, max_norm=settings.max_update_norm, max_examples=settings.max_examples
    )
    recorder.start()
    for round_num in range(start.first, settings.rounds + 1):
        started = time.perf_counter()
        sampled = draw(round_num, rng)
        plan = RoundPlan(
            round_num=round_num, client_ids=tuple(sampled), seed=round_seed(settings.seed, round_num)
        )
        replies = transport.train(plan, weights)
        kept, rejected = screen(replies.reports, rules, round_num)
        if kept:
            delta = aggregate_delta(
                weights, [r.update for r in kept], kind=settings.aggregation,
                trim_fraction=settings.trim_fraction, norm_bound=settings.norm_bound,
            )  # fmt: skip
            weights = optimizer.step(weights, delta)
        recorder.release_round(
            round_num,
            weights,
            kept,
            seconds=time.perf_counter() - started,
            extra={
                "failures": len(replies.failures),
                "rejected": sum(rejected.values()),
                **rejected,
                **replies.extra,
            },
            state={"sampling": stream_state(rng), **optimizer_state(optimizer)},
        )
    return weights
