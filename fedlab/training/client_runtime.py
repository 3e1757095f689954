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
from fedlab.core.update import Update
from fedlab.data.types import ArrayDataset
from fedlab.privacy.adaptive_clipping import clip_update
from fedlab.privacy.events import GaussianEvent
from fedlab.training.device import resolve_device
from fedlab.training.local import (
    DpSgdSpec,
    LocalTrainer,
    OptimSpec,
    TrainResult,
    evaluate,
    noise_multiplier_for_epsilon,
    poisson_plan,
)
from fedlab.training.models import model_for, set_weights

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
    return OptimSpec.from_config(config.train)


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
    if not dp.dpsgd:
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


def client_report(
    config: RunConfig, client_id: str, result: TrainResult, *, clip_norm: float | None = None
) -> TrainReport:
    """What a client sends after training: under DP, only the unnoised values its DP mode needs.

    * Every DP mode: no training loss (NaN; it is computed from the data without noise).
    * ``dpsgd``: the noisy delta, the number of examples (FedAvg's weight) and the client's own
      accounting (noise multiplier, sample rate ``batch / n``, steps, epsilon); these are functions
      of the example count, which the guarantee therefore treats as public.
    * ``central``: the delta clipped to the round's clip norm (``clip_norm``, sent by the server
      under adaptive clipping, else ``dp.clip_norm``); under adaptive clipping also the indicator
      b_i (+-0.5: was the norm within it), which the server noises; no example or step count.
      A delta whose norm is not finite (training diverged) cannot be clipped: it goes as it is,
      without an indicator, and the server's screen rejects it, as it does in every other mode.
    * ``distributed``: the delta (it is clipped, noised and masked before it leaves); no counts.
    * No DP: the delta, the loss, the example and step counts.
    """
    dp = config.dp
    update, indicator = result.update, None
    if dp.central and math.isfinite(update.l2_norm()):
        update, bit = clip_update(update, clip_norm=dp.clip_norm if clip_norm is None else clip_norm)
        indicator = bit if dp.adaptive_clipping else None
    if dp.user_level:
        update = Update(arrays=update.arrays, num_examples=0, weight=1.0)
    return TrainReport(
        client_id=client_id,
        update=update,
        clip_indicator=indicator,
        train_loss=math.nan if dp.enabled else result.loss,
        # Without DP the release is noiseless: epsilon is infinite, noise 0, all data used.
        epsilon=result.epsilon if result.private else math.inf,
        noise_multiplier=result.noise_multiplier if result.private else 0.0,
        sample_rate=result.sample_rate if result.private else 1.0,
        steps=0 if dp.user_level else result.steps,
    )


def client_seed(round_seed: int, client_id: str) -> int:
    """Mix the server's public round seed with the client's identity.

    >>> client_seed(7, "1") != client_seed(7, "2")
    True
    """
    words = [round_seed & 0xFFFFFFFF, round_seed >> 32, *client_id.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def _model_for(config: RunConfig, data: ClientData) -> torch.nn.Module:
    return model_for(config, feature_shape=data.feature_shape, num_classes=data.num_classes)


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
            dp=dp_spec(config, data.train.reported_size, self._calibrated),
            device=resolve_device(config.train.device),
            seed=config.run.seed,
            public_size=data.train.public_size,
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
        history: Sequence[GaussianEvent],
        round_seed: int,
        clip_norm: float | None = None,
        secret: bytes | None = None,
    ) -> tuple[TrainReport, tuple[GaussianEvent, ...]]:
        """Train one round from ``weights``; return the report and the new accountant history.

        Randomness: with ``secret`` (deployment: the client's own per-round secret, e.g.
        :func:`~fedlab.training.randomness.fresh_secret`) the client's Poisson batches and
        DP noise come from that secret alone and ``round_seed`` is unused; without it
        (``fedlab simulate``) they are seeded from the run seed, ``round_seed`` and the
        client id, which the server knows: reproducible, and not private against it.

        The report is :func:`client_report`'s: what leaves the client under each DP mode.
        """
        trainer = self.trainer(config, data)
        if secret is not None:
            result = trainer.train_round(weights, history=history, secret=secret)
        else:
            result = trainer.train_round(
                weights, history=history, round_seed=client_seed(round_seed, data.client_id)
            )
        report = client_report(config, data.client_id, result, clip_norm=clip_norm)
        return report, result.history

    def evaluate(
        self, config: RunConfig, data: ClientData, weights: Sequence[np.ndarray]
    ) -> tuple[float, float]:
        """Loss and accuracy of ``weights`` on the client's local data."""
        model = _model_for(config, data)
        set_weights(model, weights)
        return evaluate(model, data.train.x, data.train.y, batch_size=config.train.eval_batch_size)
