"""A client's side of a round, independent of how messages travel.

:class:`ClientRuntime` serves any number of clients in one process: it builds each
client's trainer (model, optimizer, Opacus wrapper, DP data loader) once, keeps it in
an LRU, and trains it from the received global weights. The caller owns the client's
accountant history (Flower context state, a file on a device) and passes it in and
out, so the privacy budget survives whatever the runtime forgets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlab.core.config import RunConfig
from fedlab.core.reports import TrainReport
from fedlab.data.types import ArrayDataset
from fedlab.privacy.mechanisms import GaussianMechanism
from fedlab.training.device import resolve_device
from fedlab.training.local import (
    DpSgdSpec,
    LocalTrainer,
    OptimSpec,
    PrivacyStep,
    evaluate,
    noise_multiplier_for_epsilon,
    poisson_plan,
)
from fedlab.training.models import build_model, set_weights

CalibrationKey = tuple[float, float, float, int, str]


@dataclass(frozen=True)
class ClientData:
    """A client's identity, its local training data and the task's shape."""

    client_id: str
    train: ArrayDataset
    num_classes: int
    feature_shape: tuple[int, ...]


def optim_spec(config: RunConfig) -> OptimSpec:
    """The local optimizer settings of a run."""
    t = config.train
    return OptimSpec(
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
    )


def dp_spec(
    config: RunConfig, num_examples: int, calibrated: dict[CalibrationKey, float] | None = None
) -> DpSgdSpec | None:
    """The client's DP-SGD settings; a target epsilon is calibrated for all planned rounds.

    Args:
        config: The run configuration.
        num_examples: Size of the client's training data (sets the sample rate).
        calibrated: Optional memo of earlier calibrations (clients of equal size share one).
    """
    dp = config.dp
    if dp.mode != "dpsgd":
        return None
    noise = dp.noise_multiplier
    if noise is None:
        assert dp.target_epsilon is not None  # guaranteed by DpSection validation
        sample_rate, steps_per_round = poisson_plan(num_examples, optim_spec(config))
        key = (
            dp.target_epsilon,
            dp.delta,
            sample_rate,
            steps_per_round * config.run.rounds,
            dp.resolved_accountant,
        )
        memo = {} if calibrated is None else calibrated
        if key not in memo:
            memo[key] = noise_multiplier_for_epsilon(
                target_epsilon=key[0], delta=key[1], sample_rate=key[2], steps=key[3], accountant=key[4]
            )
        noise = memo[key]
    return DpSgdSpec(
        noise_multiplier=noise,
        max_grad_norm=dp.max_grad_norm,
        delta=dp.delta,
        accountant=dp.resolved_accountant,
    )


def client_seed(round_seed: int, client_id: str) -> int:
    """Mix the server's public round seed with the client's identity.

    >>> client_seed(7, "1") != client_seed(7, "2")
    True
    """
    words = [round_seed & 0xFFFFFFFF, round_seed >> 32, *client_id.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def _model_for(config: RunConfig, data: ClientData) -> torch.nn.Module:
    return build_model(
        config.model.kind,
        feature_shape=data.feature_shape,
        num_classes=data.num_classes,
        hidden=config.model.hidden,
        seed=config.run.seed,
    )


class ClientRuntime:
    """Trains and evaluates clients in one process, reusing each client's trainer.

    Args:
        max_trainers: How many clients' trainers to keep (least recently used goes).
            A process serving one device builds its Opacus-wrapped model once.
    """

    def __init__(self, *, max_trainers: int = 64) -> None:
        self._max_trainers = max_trainers
        self._trainers: OrderedDict[str, tuple[RunConfig, LocalTrainer]] = OrderedDict()
        self._calibrated: dict[CalibrationKey, float] = {}

    def trainer(self, config: RunConfig, data: ClientData) -> LocalTrainer:
        """The client's trainer: the cached one, or a new one built once."""
        cached = self._trainers.get(data.client_id)
        if cached is not None and cached[0] == config:
            self._trainers.move_to_end(data.client_id)
            return cached[1]
        torch.set_num_threads(max(1, int(config.simulation.num_cpus_per_client)))
        trainer = LocalTrainer(
            model=_model_for(config, data),
            x=data.train.x,
            y=data.train.y,
            optim=optim_spec(config),
            dp=dp_spec(config, len(data.train), self._calibrated),
            device=resolve_device(config.train.device),
            seed=config.run.seed,
        )
        self._trainers[data.client_id] = (config, trainer)
        while len(self._trainers) > self._max_trainers:
            self._trainers.popitem(last=False)
        return trainer

    def train(
        self,
        config: RunConfig,
        data: ClientData,
        weights: Sequence[np.ndarray],
        *,
        history: Sequence[PrivacyStep],
        round_seed: int,
        clip_norm: float | None = None,
    ) -> tuple[TrainReport, tuple[PrivacyStep, ...]]:
        """Train one round from ``weights``; return the report and the new accountant history.

        With ``dp.mode = "central"`` the client clips its delta to the round's clip norm
        (``clip_norm``, sent by the server under adaptive clipping, else
        ``dp.clip_norm``) before it leaves, and reports the norm it had before.
        """
        result = self.trainer(config, data).train_round(
            weights, history=history, round_seed=client_seed(round_seed, data.client_id)
        )
        update, pre_clip_norm = result.update, None
        if config.dp.mode == "central":
            bound = config.dp.clip_norm if clip_norm is None else clip_norm
            clipped = GaussianMechanism(clip_norm=bound, noise_multiplier=0.0).clip(update)
            update, pre_clip_norm = clipped.update, clipped.norm
        report = TrainReport(
            client_id=data.client_id,
            update=update,
            pre_clip_norm=pre_clip_norm,
            train_loss=result.loss,
            # Without DP the release is noiseless: epsilon is infinite, noise 0, all data used.
            epsilon=result.epsilon if result.private else math.inf,
            noise_multiplier=result.noise_multiplier if result.private else 0.0,
            sample_rate=result.sample_rate if result.private else 1.0,
            steps=result.steps,
        )
        return report, result.history

    def evaluate(
        self, config: RunConfig, data: ClientData, weights: Sequence[np.ndarray]
    ) -> tuple[float, float]:
        """Loss and accuracy of ``weights`` on the client's local data."""
        model = _model_for(config, data)
        set_weights(model, weights)
        return evaluate(model, data.train.x, data.train.y, batch_size=config.train.eval_batch_size)
