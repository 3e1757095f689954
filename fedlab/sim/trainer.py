"""A worker's trainer: one LocalTrainer (model, optimizer, Opacus wrapper) pointed at each client in turn.

:class:`~fedlab.training.local.LocalTrainer` is built once per client in a deployment; for
10^4+ clients in one process that is too slow and too big to cache. :class:`SwapTrainer`
builds one per worker and moves it from client to client with
:meth:`~fedlab.training.local.LocalTrainer.use_client` (the client's data, sample rate and
noise multiplier); the round itself is ``LocalTrainer.train_round``, so a client trains
exactly as it would on its own trainer (``tests/sim/test_inline_trainer.py`` checks bit
equality against the deployed client runtime).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fedlab.core.choices import TrainerKind
from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError
from fedlab.core.reports import TrainReport
from fedlab.data.types import ArrayDataset
from fedlab.privacy.events import GaussianEvent
from fedlab.training.client_runtime import CalibrationKey, client_report, client_seed, dp_spec, optim_spec
from fedlab.training.cohort_layers import unsupported_reason
from fedlab.training.device import resolve_device
from fedlab.training.local import LocalTrainer
from fedlab.training.models import model_for


@dataclass(frozen=True)
class ClientOutcome:
    """One client's report and its accountant history after the round."""

    report: TrainReport
    history: tuple[GaussianEvent, ...]


class SwapTrainer:
    """Trains many clients in turn on one persistent (Opacus-wrapped) model.

    Args:
        config: The run configuration (model, optimizer, DP settings, run seed).
        feature_shape: Shape of one example.
        num_classes: Number of classes.
    """

    def __init__(self, config: RunConfig, *, feature_shape: tuple[int, ...], num_classes: int) -> None:
        self._config = config
        self._optim = optim_spec(config)
        self._device = resolve_device(config.train.device)
        self._private = config.dp.dpsgd
        self._model = model_for(config, feature_shape=feature_shape, num_classes=num_classes).to(self._device)
        self._trainer: LocalTrainer | None = None
        self._calibrated: dict[CalibrationKey, float] = {}

    def train(
        self,
        client_id: str,
        data: ArrayDataset,
        weights: Sequence[np.ndarray],
        *,
        history: Sequence[GaussianEvent],
        round_seed: int,
        clip_norm: float | None = None,
        secret: bytes | None = None,
    ) -> ClientOutcome:
        """Train one client for one round from ``weights``, as its own LocalTrainer would.

        Args:
            client_id: The client's stable id (mixed into its seeds).
            data: The client's training examples (``data.public_size`` sets its DP-SGD plan).
            weights: The global weights.
            history: The client's accountant history before this round.
            round_seed: The round's public seed (seeded rounds).
            clip_norm: Under central DP, the round's clip norm (default ``dp.clip_norm``).
            secret: A client secret for the round (deployment-grade randomness: nobody who knows
                the seeds can replay it); None: seeded from the run seed, the round and the client.

        Returns:
            The client's report and new accountant history.
        """
        public = data.reported_size
        spec = dp_spec(self._config, public, self._calibrated) if self._private else None
        if self._trainer is None:
            self._trainer = LocalTrainer(
                model=self._model, x=data.x, y=data.y, optim=self._optim, dp=spec, device=self._device,
                seed=self._config.run.seed, public_size=public,
            )  # fmt: skip
        else:
            self._trainer.use_client(x=data.x, y=data.y, dp=spec, public_size=public)
        seeded = None if secret else client_seed(round_seed, client_id)
        result = self._trainer.train_round(weights, history=history, round_seed=seeded, secret=secret)
        report = client_report(self._config, client_id, result, clip_norm=clip_norm)
        return ClientOutcome(report=report, history=result.history)


def local_steps(num_examples: int, config: RunConfig) -> int:
    """Optimizer steps a client of ``num_examples`` takes per round (known before training).

    >>> from fedlab.core.config import RunConfig, TrainSection
    >>> local_steps(33, RunConfig(train=TrainSection(batch_size=16, local_epochs=2)))
    6
    """
    batch, epochs = config.train.batch_size, config.train.local_epochs
    if config.dp.dpsgd:
        return epochs * (num_examples // batch)
    return epochs * math.ceil(num_examples / batch)


LOG = logging.getLogger("fedlab.sim.trainer")


def resolve_trainer(config: RunConfig, model: nn.Module) -> RunConfig:
    """The config with ``simulation.trainer`` decided: ``cohort`` or ``sequential``, never ``auto``.

    ``auto`` becomes ``cohort`` when the cohort trainer can train ``model``, else ``sequential``
    with one warning in the log saying why.

    Args:
        config: The run configuration.
        model: A fresh model of the run's architecture.

    Raises:
        ConfigError: If ``trainer = "cohort"`` and the cohort trainer cannot train ``model``.

    >>> from fedlab.core.config import RunConfig, SimulationSection
    >>> from fedlab.training.models import build_model
    >>> auto = RunConfig(simulation=SimulationSection(trainer="auto"))
    >>> resolve_trainer(auto, build_model("mlp", feature_shape=(4,), num_classes=2)).simulation.trainer
    <TrainerKind.COHORT: 'cohort'>
    """
    chosen = config.simulation.trainer
    if chosen == TrainerKind.SEQUENTIAL:
        return config
    reason = unsupported_reason(model)
    if reason is None:
        decided = TrainerKind.COHORT
    elif chosen == TrainerKind.COHORT:
        raise ConfigError(f"simulation.trainer: the cohort trainer cannot train this run: {reason}")
    else:
        LOG.warning("simulation.trainer = 'auto': training clients one after another (%s)", reason)
        decided = TrainerKind.SEQUENTIAL
    simulation = dataclasses.replace(config.simulation, trainer=decided)
    return dataclasses.replace(config, simulation=simulation)
