"""What clients send back after a round, independent of any transport."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedlab.core.update import Update


@dataclass(frozen=True)
class TrainReport:
    """What one client sent back after a training round.

    Attributes:
        client_id: The client's stable identity (partition id in simulation).
        update: The client's delta and its weight.
        train_loss: Mean local training loss, computed without noise: NaN (not sent) under DP.
        epsilon: The client's cumulative epsilon at the run's delta (inf if not private).
        noise_multiplier: DP-SGD noise multiplier used (0 without DP).
        sample_rate: Poisson sampling rate of its DP-SGD steps (1 without DP).
        steps: Optimizer steps taken this round.
        clip_indicator: Under central DP with adaptive clipping, b_i = +0.5 if the delta's norm
            was within the round's clip norm before the client clipped it, else -0.5 (the
            server noises the sum of these); None otherwise.
    """

    client_id: str
    update: Update
    train_loss: float
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_indicator: float | None = None


@dataclass(frozen=True)
class RoundReplies:
    """The outcome of asking clients to train.

    Attributes:
        reports: The reports that arrived in time.
        failures: One reason per client that did not contribute (error, dropout,
            straggler past the deadline).
        extra: Transport measurements for the round's metrics line (e.g. simulated
            seconds, counts of dropped clients by reason).
    """

    reports: tuple[TrainReport, ...] = ()
    failures: tuple[str, ...] = ()
    extra: Mapping[str, float | int | str] = field(default_factory=dict)
