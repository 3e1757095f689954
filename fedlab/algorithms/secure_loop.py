"""The secure FedAvg run loop: rounds of :func:`~fedlab.algorithms.secure_fedavg.secure_round`, accounted.

Each round: check the budget guard, sample the cohort, run the secure round, apply its mean delta
and (distributed DP) commit the round's spend for each adversary's view through the recorder
before the round's model is released.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedlab.algorithms.federation import RoundRecorder
from fedlab.algorithms.resume import LoopStart, restore_stream, stream_state
from fedlab.algorithms.secure_fedavg import SecureFedAvgSettings, SecureTransport, secure_round
from fedlab.algorithms.server_optimizer import optimizer_state, resumed_optimizer
from fedlab.core.checkpoint import Checkpoint
from fedlab.privacy.ledger import FederationSpend
from fedlab.privacy.secure_random import RandomStream
from fedlab.privacy.skellam import SkellamAccountant
from fedlab.privacy.skellam_release import SERVER_VIEW
from fedlab.secagg.crypto import RandomSource


@dataclass(frozen=True)
class SecureFedAvgOutcome:
    """How a secure run ended."""

    weights: list[np.ndarray]
    rounds_completed: int
    rounds_aborted: int
    epsilon: float | None
    stopped_because: str


def run_secure_fedavg(
    *,
    transport: SecureTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    settings: SecureFedAvgSettings,
    source: RandomSource,
    sample_rng: RandomStream,
    resume: Checkpoint | None = None,
) -> SecureFedAvgOutcome:
    """Run federated averaging under SecAgg+ (and distributed DP if ``settings.ddp``).

    Epsilon (distributed DP) is computed once per round on the server, for each adversary of
    :meth:`SecureFedAvgSettings.round_events`, and committed to the ledger through the recorder
    before the round's model is released; an aborted round commits nothing and releases the
    unchanged model. The run's epsilon, and the budget guard, are the server view's.

    Args:
        transport: Carries the stages (see :class:`SecureTransport`).
        recorder: Commits spending, then releases each round's model.
        initial_weights: The starting global model.
        settings: The run's settings.
        source: Server randomness (graph seeds, the noise top-up): ``os.urandom`` in deployment,
            seeded in simulation.
        sample_rng: Draws each round's cohort: a secret stream in deployment, so that nobody who
            knows the config can tell who took part; seeded in simulation.
        resume: Continue after this checkpoint's round: its weights, generator states and counts
            of released and aborted rounds (each released round composes one event per view).

    Returns:
        The final weights, rounds completed and aborted, epsilon spent and why the run stopped.

    """
    start = LoopStart.of(resume, initial_weights)
    weights = start.weights
    restore_stream(sample_rng, start.value("sampling"))
    restore_stream(source, start.value("source"))
    aborted = start.count("aborted")
    optimizer = resumed_optimizer(settings.optimizer, start)
    accountants = (
        {name: SkellamAccountant() for name in settings.round_events()} if settings.ddp is not None else {}
    )
    for _ in range(start.done - aborted):
        _compose_round(accountants, settings)
    epsilon: float | None = None
    if accountants:
        epsilon = accountants[SERVER_VIEW].epsilon(delta=settings.delta) if start.done > aborted else 0.0
    recorder.start()
    for round_num in range(start.first, settings.rounds + 1):
        reason = _budget_refusal(accountants, settings, round_num)
        if reason is not None:
            return SecureFedAvgOutcome(weights, round_num - 1, aborted, epsilon, reason)
        started = time.perf_counter()
        sampled = settings.sample(transport.available_clients(), sample_rng)
        outcome = secure_round(
            transport, settings, round_num=round_num, sampled=sampled, weights=weights, source=source
        )
        federation: list[FederationSpend] = []
        if outcome.mean_delta is None:
            aborted += 1
        else:
            weights = optimizer.step(weights, outcome.mean_delta)
            federation = _compose_round(accountants, settings)
            if accountants:
                epsilon = accountants[SERVER_VIEW].epsilon(delta=settings.delta)
        recorder.release_round(
            round_num,
            weights,
            outcome.reports,
            seconds=time.perf_counter() - started,
            extra=outcome.extra,
            federation=federation,
            state={
                "sampling": stream_state(sample_rng),
                "source": stream_state(source),
                "aborted": aborted,
                **optimizer_state(optimizer),
            },
        )
    return SecureFedAvgOutcome(weights, settings.rounds, aborted, epsilon, "completed all rounds")


def _budget_refusal(
    accountants: Mapping[str, SkellamAccountant], settings: SecureFedAvgSettings, round_num: int
) -> str | None:
    """Why the next round may not run: the server view's epsilon would exceed the budget (or None)."""
    maximum = settings.max_epsilon
    if settings.ddp is None or maximum is None:
        return None
    server, event = accountants[SERVER_VIEW], settings.round_events()[SERVER_VIEW]
    if not server.would_exceed(event, max_epsilon=maximum, delta=settings.delta):
        return None
    planned = server.epsilon_after(event, delta=settings.delta)
    return f"privacy budget: round {round_num} would raise epsilon to {planned:.4g} > max_epsilon {maximum:g}"


def _compose_round(
    accountants: Mapping[str, SkellamAccountant], settings: SecureFedAvgSettings
) -> list[FederationSpend]:
    """Compose a released round into each view's accountant; the ledger's federation spends."""
    if settings.ddp is None:
        return []
    spends = []
    for name, event in settings.round_events().items():
        accountants[name].compose(event)
        spends.append(
            FederationSpend(
                mechanism=name,
                noise_multiplier=settings.ddp.noise_multiplier,
                sample_rate=event.sample_rate,
                steps=1,
                epsilon=accountants[name].epsilon(delta=settings.delta),
            )
        )
    return spends
