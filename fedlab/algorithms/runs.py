"""Choosing the round loop a configuration asks for, the same for every transport."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlab.algorithms.dp_fedavg import DpFedAvgSettings, run_dp_fedavg
from fedlab.algorithms.federation import ClientTransport, FedAvgSettings, RoundRecorder, run_fedavg
from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError
from fedlab.privacy.adaptive_clipping import AdaptiveClipState
from fedlab.privacy.calibration import calibrate_noise_multiplier


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its final weights and why it stopped."""

    weights: list[np.ndarray]
    stopped_because: str


def sampling_of(config: RunConfig) -> str:
    """``poisson`` or ``fraction``: the config's choice with ``auto`` resolved."""
    if config.server.sampling != "auto":
        return config.server.sampling
    return "poisson" if config.dp.mode == "central" else "fraction"


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
    )
    try:
        settings.update_noise_multiplier()  # fails early if adaptive clipping is infeasible
    except ValueError as exc:
        raise ConfigError(f"dp.clipped_count_stddev: {exc}") from None
    return settings


def noise_generator(config: RunConfig, *, secure: bool) -> np.random.Generator:
    """The server's noise generator: seeded for reproducible simulation, else from os.urandom."""
    if secure:
        return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))
    return np.random.default_rng([config.run.seed, 2])


def run_configured(
    config: RunConfig,
    *,
    transport: ClientTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    num_clients: int,
    secure_noise: bool = False,
) -> RunOutcome:
    """Run the round loop the config asks for (FedAvg, or user-level DP-FedAvg).

    Args:
        config: The validated run configuration.
        transport: Carries rounds to the clients.
        recorder: Commits spending, then releases each round's model.
        initial_weights: The starting global model.
        num_clients: The population size N (the DP-FedAvg denominator is q*N).
        secure_noise: Draw server noise from a secret seed (deployment) instead of the
            run seed (reproducible simulation).
    """
    if config.dp.mode == "central":
        outcome = run_dp_fedavg(
            transport=transport,
            recorder=recorder,
            initial_weights=initial_weights,
            settings=central_settings(config, num_clients=num_clients),
            noise_rng=noise_generator(config, secure=secure_noise),
        )
        return RunOutcome(outcome.weights, outcome.stopped_because)
    weights = run_fedavg(
        transport=transport,
        recorder=recorder,
        initial_weights=initial_weights,
        settings=FedAvgSettings(
            rounds=config.run.rounds,
            fraction_train=config.server.fraction_train,
            seed=config.run.seed,
            sampling=sampling_of(config),
        ),
    )
    return RunOutcome(weights, "completed all rounds")
