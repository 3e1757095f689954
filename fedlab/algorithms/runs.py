"""Choosing the round loop a configuration asks for, the same for every transport."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from fedlab.algorithms.dp_fedavg import DpFedAvgSettings, run_dp_fedavg
from fedlab.algorithms.federation import (
    ClientTransport,
    FedAvgSettings,
    IndexSampling,
    RoundRecorder,
    index_sampler,
    run_fedavg,
)
from fedlab.algorithms.secure_fedavg import (
    SecureFedAvgSettings,
    SecureTransport,
    fixed_point_codec,
)
from fedlab.algorithms.secure_loop import run_secure_fedavg
from fedlab.core.checkpoint import Checkpoint
from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError
from fedlab.privacy.adaptive_clipping import AdaptiveClipState
from fedlab.privacy.calibration import calibrate_noise_multiplier
from fedlab.privacy.secure_random import RandomStream, SecureRandom
from fedlab.privacy.skellam import SkellamParams, calibrate_skellam_noise_multiplier
from fedlab.secagg.crypto import RandomSource, seeded_source


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its final weights and why it stopped."""

    weights: list[np.ndarray]
    stopped_because: str


def cohort_cap(expected: float, population: int, sample_rate: float) -> int:
    """The largest Poisson cohort a distributed-DP round accepts: q*N + 4 standard deviations.

    >>> cohort_cap(10.0, 10, 1.0)
    10
    """
    spread = math.sqrt(max(expected * (1.0 - sample_rate), 0.0))
    return min(population, math.ceil(expected + 4.0 * spread))


def ddp_params(
    *,
    dim: int,
    num_clients: int,
    sample_rate: float,
    rounds: int,
    clip: float,
    bits: int,
    min_survivors: float,
    delta: float,
    noise_multiplier: float | None,
    target_epsilon: float | None,
) -> SkellamParams:
    """Distributed-DP parameters; a target epsilon is calibrated for ``min_survivors`` x q*N survivors.

    The target holds against the server (zero-out adjacency, no amplification by sampling: it
    knows who took part), which also bounds the released-model epsilon (see
    :mod:`fedlab.privacy.skellam_release`).

    Raises:
        ConfigError: If the configuration is infeasible (too few bits) or the target unreachable.

    """
    expected = sample_rate * num_clients
    cap = cohort_cap(expected, num_clients, sample_rate)
    survivors = min(cap, max(2, math.ceil(min_survivors * expected - 1e-9)))
    try:
        if noise_multiplier is None:
            assert target_epsilon is not None
            noise_multiplier = calibrate_skellam_noise_multiplier(
                target_epsilon=target_epsilon, delta=delta, sample_rate=1.0, steps=rounds,
                clip=clip, num_clients=cap, min_survivors=survivors, bits=bits, dim=dim,
            )  # fmt: skip
        return SkellamParams(
            clip=clip, noise_multiplier=noise_multiplier, num_clients=cap, min_survivors=survivors,
            bits=bits, dim=dim,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"dp (distributed): {exc}") from None


def central_settings(config: RunConfig, *, num_clients: int) -> DpFedAvgSettings:
    """DP-FedAvg settings from a config; a target epsilon is calibrated for the planned rounds.

    Raises:
        ConfigError: If the target epsilon cannot be reached, or adaptive clipping's
            count noise leaves no budget for the updates (z >= 2 sigma_b).
    """
    dp = config.dp
    rate = config.server.fraction_train
    noise = dp.noise_multiplier
    if noise is None:
        assert dp.target_epsilon is not None  # guaranteed by DpSection validation
        try:
            noise = calibrate_noise_multiplier(
                target_epsilon=dp.target_epsilon,
                delta=dp.delta,
                sample_rate=rate,
                steps=config.run.rounds,
                accountant=dp.resolved_accountant,
            )
        except ValueError as exc:
            raise ConfigError(f"dp.target_epsilon: {exc}") from None
    adaptive = None
    if dp.adaptive_clipping:
        expected = rate * num_clients
        adaptive = AdaptiveClipState(
            clip_norm=dp.clip_norm,
            target_quantile=dp.target_quantile,
            learning_rate=dp.clip_learning_rate,
            count_noise_std=dp.clipped_count_stddev or expected / 20.0,
        )
    settings = DpFedAvgSettings(
        rounds=config.run.rounds,
        sample_rate=rate,
        num_clients=num_clients,
        noise_multiplier=noise,
        clip_norm=dp.clip_norm,
        delta=dp.delta,
        accountant=dp.resolved_accountant,
        seed=config.run.seed,
        max_epsilon=dp.max_epsilon,
        adaptive=adaptive,
        max_examples=config.server.max_examples,
        optimizer=config.server.optimizer_settings(),
    )
    try:
        settings.update_noise_multiplier()  # fails early if adaptive clipping is infeasible
    except ValueError as exc:
        raise ConfigError(f"dp.clipped_count_stddev: {exc}") from None
    return settings


def secure_settings(config: RunConfig, *, num_clients: int, dim: int) -> SecureFedAvgSettings:
    """Secure-aggregation settings from a config; distributed DP is calibrated for the planned rounds.

    Raises:
        ConfigError: If the encoding cannot hold the cohort's sum or the distributed-DP target is
            unreachable. (Combinations the accountant cannot cover are refused by the config itself.)
    """
    dp, sa, rate = config.dp, config.secagg, config.server.fraction_train
    sampling = config.client_sampling
    if sa.neighbours and sa.threshold and sa.threshold > sa.neighbours:
        raise ConfigError(
            f"secagg.threshold: must be <= secagg.neighbours; got {sa.threshold} > {sa.neighbours}"
        )
    ddp = None
    if dp.distributed:
        ddp = ddp_params(
            dim=dim, num_clients=num_clients, sample_rate=rate, rounds=config.run.rounds, clip=dp.clip_norm,
            bits=sa.bits, min_survivors=sa.min_survivors, delta=dp.delta,
            noise_multiplier=dp.noise_multiplier, target_epsilon=dp.target_epsilon,
        )  # fmt: skip
    else:
        fixed_point_codec(bits=sa.bits, clip=sa.clip_range, max_summands=num_clients)  # refuses overflow
    return SecureFedAvgSettings(
        rounds=config.run.rounds, fraction_train=rate, sampling=sampling, seed=config.run.seed,
        num_clients=num_clients, bits=sa.bits, neighbours=sa.neighbours, threshold=sa.threshold,
        clip_range=sa.clip_range, min_survivors=sa.min_survivors, ddp=ddp, delta=dp.delta,
        max_epsilon=dp.max_epsilon, weight_cap=config.secure_weight_cap(),
        max_examples=config.server.max_examples, optimizer=config.server.optimizer_settings(),
    )  # fmt: skip


@dataclass(frozen=True)
class ServerRandomness:
    """Where the server's privacy-relevant draws come from.

    Attributes:
        sampling: Draws each round's clients (user-level DP amplifies by this sampling only if
            nobody outside the server can predict it).
        noise: Draws the server's DP noise.
        source: Bytes for SecAgg+ graph seeds and the distributed-DP noise top-up.
    """

    sampling: RandomStream
    noise: RandomStream
    source: RandomSource


def server_randomness(config: RunConfig, *, secure: bool) -> ServerRandomness:
    """Secret streams keyed from ``os.urandom`` (deployment), or streams seeded by the run seed.

    The seeded streams (``fedlab simulate``) make a run reproducible, and let anyone holding its
    ``config.json`` replay the server's sampling and noise: simulation only.

    >>> r = server_randomness(RunConfig(), secure=False)
    >>> float(r.noise.random()) == float(server_randomness(RunConfig(), secure=False).noise.random())
    True
    """
    if secure:
        return ServerRandomness(sampling=SecureRandom(), noise=SecureRandom(), source=os.urandom)
    seed = config.run.seed
    return ServerRandomness(
        sampling=np.random.default_rng([seed, 1]),
        noise=np.random.default_rng([seed, 2]),
        source=seeded_source(f"fedlab/server/{seed}".encode()),
    )


def run_configured(
    config: RunConfig,
    *,
    transport: ClientTransport | SecureTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    num_clients: int,
    secure_noise: bool = False,
    resume: Checkpoint | None = None,
) -> RunOutcome:
    """Run the round loop the config asks for (FedAvg, user-level DP-FedAvg, or secure aggregation).

    With ``secagg.enabled`` the transport must be a :class:`SecureTransport` (it runs the SecAgg+
    stages); the loop is :func:`~fedlab.algorithms.secure_loop.run_secure_fedavg`, with distributed
    DP when ``dp.mode = "distributed"``. Plain FedAvg samples through the transport by index when
    it can (:class:`~fedlab.algorithms.federation.IndexSampling`: a simulator's population is not
    listed every round), drawing the same clients.

    Args:
        config: The validated run configuration.
        transport: Carries rounds to the clients.
        recorder: Commits spending, then releases each round's model.
        initial_weights: The starting global model.
        num_clients: The population size N (the DP-FedAvg denominator is q*N).
        secure_noise: Draw the server's client sampling, DP noise, SecAgg+ graph seeds and
            noise top-up from secret streams keyed by ``os.urandom`` (deployment) instead of
            streams seeded by the run seed (reproducible simulation); see :func:`server_randomness`.
        resume: Continue a run after the round of this checkpoint (the recorder's
            :attr:`~fedlab.training.recorder.RunRecorder.resumed`); None starts at round 1.

    Raises:
        ConfigError: If secure aggregation is enabled but the transport cannot run its stages.
    """
    randomness = server_randomness(config, secure=secure_noise)
    if config.secagg.enabled:
        if not isinstance(transport, SecureTransport):
            raise ConfigError("secagg.enabled: this backend's transport cannot run secure-aggregation stages")
        dim = int(sum(np.asarray(w).size for w in initial_weights))
        secure = run_secure_fedavg(
            transport=transport,
            recorder=recorder,
            initial_weights=initial_weights,
            settings=secure_settings(config, num_clients=num_clients, dim=dim),
            source=randomness.source,
            sample_rng=randomness.sampling,
            resume=resume,
        )
        return RunOutcome(secure.weights, secure.stopped_because)
    if not hasattr(transport, "train"):
        raise ConfigError("secagg.enabled is false but this transport only runs secure-aggregation stages")
    transport = cast(ClientTransport, transport)
    if config.dp.central:
        outcome = run_dp_fedavg(
            transport=transport,
            recorder=recorder,
            initial_weights=initial_weights,
            settings=central_settings(config, num_clients=num_clients),
            noise_rng=randomness.noise,
            sample_rng=randomness.sampling,
            resume=resume,
        )
        return RunOutcome(outcome.weights, outcome.stopped_because)
    server = config.server
    settings = FedAvgSettings(
        rounds=config.run.rounds, fraction_train=server.fraction_train, seed=config.run.seed,
        sampling=config.client_sampling, aggregation=server.aggregation,
        trim_fraction=server.trim_fraction, norm_bound=server.norm_bound,
        max_update_norm=server.max_update_norm, max_examples=server.max_examples,
        optimizer=server.optimizer_settings(),
    )  # fmt: skip
    weights = run_fedavg(
        transport=transport,
        recorder=recorder,
        initial_weights=initial_weights,
        settings=settings,
        sampler=index_sampler(transport, settings) if isinstance(transport, IndexSampling) else None,
        resume=resume,
    )
    return RunOutcome(weights, "completed all rounds")
