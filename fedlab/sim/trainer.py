"""A worker's trainer: one model, optimizer and Opacus wrapper, swapped between clients.

:class:`~fedlab.training.local.LocalTrainer` builds its model, optimizer and Opacus
objects once per client; for 10^4+ clients that is too slow and too big to cache.
:class:`SwapTrainer` builds them once per worker and resets their state per client:
the received weights are loaded in place, optimizer state is cleared, the client's
own data, Poisson sample rate and noise multiplier are set, and its accountant
history is restored from the caller (the simulator's per-client store) and handed
back. The DP step, seeds and accounting are LocalTrainer's own pieces, called in the
same order, so a client trains exactly as it would with a LocalTrainer
(``tests/sim/test_inline_trainer.py`` checks bit equality).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from opacus.accountants import create_accountant
from opacus.optimizers import DPOptimizer

from fedlab.core.config import RunConfig
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.data.types import ArrayDataset
from fedlab.training.accounting import PrivacyStep, epsilon_from_history, history_from_opacus
from fedlab.training.client_runtime import CalibrationKey, client_report, client_seed, dp_spec, optim_spec
from fedlab.training.device import resolve_device
from fedlab.training.local import (
    DpSgdSpec,
    TrainResult,
    _build_optimizer,
    _data_tensors,
    _DpParts,
    _wrap_for_per_sample_gradients,
    epoch_batches,
    poisson_sample_rate,
    start_streams,
    train_step,
)
from fedlab.training.models import build_model, set_weights, unwrap
from fedlab.training.randomness import RoundStreams

_EPSILON_MEMO_SIZE = 4096


@dataclass(frozen=True)
class ClientOutcome:
    """One client's report and its accountant history after the round."""

    report: TrainReport
    history: tuple[PrivacyStep, ...]


@dataclass
class _Batch:
    """The tensors of the client currently loaded into the trainer."""

    x: torch.Tensor
    y: torch.Tensor


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
        self._seed = config.run.seed
        self._private = config.dp.mode == "dpsgd"
        model = build_model(
            config.model.kind,
            feature_shape=feature_shape,
            num_classes=num_classes,
            hidden=config.model.hidden,
            seed=config.run.seed,
        ).to(self._device)
        self._streams = RoundStreams(self._device)
        self._dp = self._dp_parts() if self._private else None
        self._model = _wrap_for_per_sample_gradients(model) if self._private else model
        self._optimizer = _build_optimizer(self._model, self._optim, self._dp, self._streams)
        self._tensors = list(unwrap(self._model).state_dict().values())  # stable: updated in place
        self._calibrated: dict[CalibrationKey, float] = {}
        self._epsilons: dict[tuple[PrivacyStep, ...], float] = {}

    def _dp_parts(self) -> _DpParts:
        """Opacus parts with placeholder rate and noise; both are set per client."""
        dp = self._config.dp
        placeholder = DpSgdSpec(
            noise_multiplier=0.0,
            max_grad_norm=dp.max_grad_norm,
            delta=dp.delta,
            accountant=dp.resolved_accountant,
        )
        return _DpParts(
            spec=placeholder,
            sample_rate=1.0,
            accountant=create_accountant(mechanism=placeholder.accountant),
        )

    def train(
        self,
        client_id: str,
        data: ArrayDataset,
        weights: Sequence[np.ndarray],
        *,
        history: Sequence[PrivacyStep],
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
        batch = _Batch(*_data_tensors(data.x, data.y, self._device))
        public = data.reported_size
        spec = dp_spec(self._config, public, self._calibrated) if self._private else None
        result = self._train_round(
            batch, spec, weights, tuple(history), client_seed(round_seed, client_id), public, secret
        )
        report = client_report(self._config, client_id, result, clip_norm=clip_norm)
        return ClientOutcome(report=report, history=result.history)

    def _train_round(
        self,
        batch: _Batch,
        spec: DpSgdSpec | None,
        weights: Sequence[np.ndarray],
        prior: tuple[PrivacyStep, ...],
        seed: int,
        public: int,
        secret: bytes | None,
    ) -> TrainResult:
        received = self._load(weights)
        start_streams(self._streams, seed=self._seed, round_seed=None if secret else seed, secret=secret)
        rate = self._start_client(batch, spec, prior, public)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss_sum, seen, steps = self._run_epochs(batch, rate, public)
        self._optimizer.zero_grad(set_to_none=True)
        after = self._history_after(prior, steps)
        return TrainResult(
            update=_delta_update(self._read(), received, public),
            loss=loss_sum / seen if seen else math.nan,
            steps=steps,
            history=after,
            epsilon=self._epsilon(after, spec),
            noise_multiplier=0.0 if spec is None else spec.noise_multiplier,
            sample_rate=0.0 if rate is None else rate,
        )

    def _load(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Copy ``weights`` into the model in place; return them as float32 (what the model holds)."""
        received = [np.asarray(w, dtype=np.float32) for w in weights]
        if len(received) != len(self._tensors) or any(
            w.shape != tuple(t.shape) for w, t in zip(received, self._tensors, strict=True)
        ):
            set_weights(self._model, received)  # raises with the offending tensor's name
        with torch.no_grad():
            for tensor, array in zip(self._tensors, received, strict=True):
                tensor.copy_(torch.from_numpy(array))
        return received

    def _read(self) -> list[np.ndarray]:
        """The model's weights as float32 copies (``get_weights`` without rebuilding the state dict)."""
        return [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in self._tensors]

    def _start_client(
        self, batch: _Batch, spec: DpSgdSpec | None, prior: tuple[PrivacyStep, ...], public: int
    ) -> float | None:
        """Reset optimizer state, set the client's DP parameters."""
        self._optimizer.zero_grad(set_to_none=True)
        self._optimizer.state.clear()
        rate = None
        if spec is not None and self._dp is not None:
            rate = poisson_sample_rate(public, self._optim.batch_size)
            self._dp.accountant.history = [step.as_opacus() for step in prior]
            private = cast(DPOptimizer, self._optimizer)
            private.noise_multiplier = spec.noise_multiplier
            private.attach_step_hook(self._dp.accountant.get_optimizer_hook_fn(sample_rate=rate))
        self._model.train()
        return rate

    def _run_epochs(self, batch: _Batch, rate: float | None, public: int) -> tuple[float, int, int]:
        loss_sum, seen, steps = 0.0, 0, 0
        for _ in range(self._optim.local_epochs):
            for indices in epoch_batches(
                self._streams, len(batch.y), self._optim.batch_size, rate, public_size=public
            ):
                loss_sum += self._train_step(batch, indices.to(self._device))
                seen += len(indices)
                steps += 1
        return loss_sum, seen, steps

    def _train_step(self, batch: _Batch, indices: torch.Tensor) -> float:
        return train_step(self._model, self._optimizer, batch.x, batch.y, indices)

    def _history_after(self, prior: tuple[PrivacyStep, ...], steps: int) -> tuple[PrivacyStep, ...]:
        if self._dp is None or not self._private:
            return ()
        after = history_from_opacus(self._dp.accountant.history)
        if sum(s.steps for s in after) != sum(s.steps for s in prior) + steps:
            raise RuntimeError("accountant history does not match the steps taken")
        return after

    def _epsilon(self, history: tuple[PrivacyStep, ...], spec: DpSgdSpec | None) -> float:
        """Epsilon of ``history``, memoized: clients of equal size share histories."""
        if spec is None:
            return 0.0
        cached = self._epsilons.get(history)
        if cached is None:
            if len(self._epsilons) >= _EPSILON_MEMO_SIZE:
                self._epsilons.clear()
            cached = epsilon_from_history(history, delta=spec.delta, accountant=spec.accountant)
            self._epsilons[history] = cached
        return cached


def _delta_update(local: list[np.ndarray], received: list[np.ndarray], n: int) -> Update:
    delta = tuple(np.subtract(new, old, dtype=np.float32) for new, old in zip(local, received, strict=True))
    return Update(arrays=delta, num_examples=n, weight=float(n))


def local_steps(num_examples: int, config: RunConfig) -> int:
    """Optimizer steps a client of ``num_examples`` takes per round (known before training).

    >>> from fedlab.core.config import RunConfig, TrainSection
    >>> local_steps(33, RunConfig(train=TrainSection(batch_size=16, local_epochs=2)))
    6
    """
    batch, epochs = config.train.batch_size, config.train.local_epochs
    if config.dp.mode == "dpsgd":
        return epochs * (num_examples // batch)
    return epochs * math.ceil(num_examples / batch)
