"""The simulator's cohort trainer: a round's clients trained together, each as it would train alone.

:class:`CohortClients` trains a worker's share of a round with
:class:`~fedlab.training.cohort.CohortTrainer`, in groups (cohorts) of ``simulation.cohort_size``
clients, or of what fits in memory. Each client keeps everything that makes its round its own:

* its :class:`~fedlab.training.randomness.RoundStreams`, started exactly as its
  :class:`~fedlab.training.local.LocalTrainer` starts them (seeded from the run seed, the round
  seed and its id, or keyed by its fresh secret), so it draws the same Poisson batches (or
  shuffles) and the same noise, parameter by parameter and step by step;
* its own noise multiplier (calibrated for its size), sample rate, number of local steps, and
  public example count;
* its accountant history, extended by the steps it took as an Opacus accountant extends it, and
  its epsilon from the same accountant: the ledger cannot tell the trainers apart.

The updates differ from the sequential trainer's only by floating-point summation order.
Privacy: the same as the sequential trainer's (the draws are the same draws); what a client
sends is :func:`~fedlab.training.client_runtime.client_report`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedlab.core.config import RunConfig
from fedlab.core.update import Update
from fedlab.data.types import ArrayDataset
from fedlab.privacy.events import GaussianEvent
from fedlab.sim.trainer import ClientOutcome
from fedlab.training.accounting import epsilon_from_history, history_after_steps
from fedlab.training.client_runtime import CalibrationKey, client_report, client_seed, dp_spec, optim_spec
from fedlab.training.cohort import ClientNoise, CohortStep, CohortTrainer, cohort_step_from_batches
from fedlab.training.cohort_layers import example_bytes
from fedlab.training.device import resolve_device
from fedlab.training.local import client_tensors
from fedlab.training.randomness import RoundStreams, epoch_batches, start_streams
from fedlab.training.specs import DpSgdSpec, TrainResult, poisson_sample_rate

MEMORY_SHARE = 0.25
"""Share of the free memory (of the training device) one cohort may plan to use."""


@dataclass(frozen=True)
class ClientJob:
    """One client to train this round.

    Attributes:
        client_id: Its stable id (mixed into its seeds).
        data: Its training examples.
        history: Its accountant history before this round.
        secret: Its fresh secret for the round, or None (seeded from the run seed).
    """

    client_id: str
    data: ArrayDataset
    history: tuple[GaussianEvent, ...]
    secret: bytes | None = None


@dataclass(frozen=True)
class _Plan:
    """A client's round laid out before the cohort trains: data, batches, noise."""

    job: ClientJob
    x: torch.Tensor
    y: torch.Tensor
    public: int
    spec: DpSgdSpec | None
    sample_rate: float
    batches: list[torch.Tensor]
    streams: RoundStreams


class CohortClients:
    """Trains a round's clients in cohorts, each client exactly as its own trainer would.

    Args:
        config: The run configuration (model, optimizer, DP settings, run seed, cohort size).
        model: A fresh model of the run's architecture (its layout; cohort-trainable).
        feature_shape: Shape of one example.
        memory_bytes: The memory a cohort may plan to use (None: a share of the free memory).

    Raises:
        ValueError: If the cohort trainer cannot train ``model``.
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        *,
        feature_shape: tuple[int, ...],
        memory_bytes: int | None = None,
    ) -> None:
        self._config = config
        self._feature_shape = feature_shape
        self._optim = optim_spec(config)
        self._device = resolve_device(config.train.device)
        self._model = model.to(self._device)
        self._names = [name for name, _ in model.named_parameters()]
        clipping = None
        if config.dp.dpsgd:  # the cohort trainer reads max_grad_norm; noise comes per client
            clipping = DpSgdSpec(
                noise_multiplier=0.0, max_grad_norm=config.dp.max_grad_norm, delta=config.dp.delta,
                accountant=config.dp.resolved_accountant,
            )  # fmt: skip
        self._trainer = CohortTrainer(self._model, self._optim, clipping)
        assert isinstance(self._model, nn.Sequential)  # CohortTrainer refuses anything else
        self._layout: nn.Sequential = self._model
        self._memory = memory_bytes
        self._calibrated: dict[CalibrationKey, float] = {}
        self._epsilons: dict[tuple[GaussianEvent, ...], float] = {}
        self.cohort_sizes: list[int] = []
        """The sizes of the cohorts trained so far (a log for tests and benchmarks)."""

    def train(
        self,
        jobs: Sequence[ClientJob],
        weights: Sequence[np.ndarray],
        *,
        round_seed: int,
        clip_norm: float | None = None,
    ) -> list[ClientOutcome]:
        """Train every job's client for one round from ``weights``; outcomes in ``jobs`` order.

        Args:
            jobs: The clients to train.
            weights: The global weights (``state_dict`` order).
            round_seed: The round's public seed (seeded rounds).
            clip_norm: Under central DP, the round's clip norm (default ``dp.clip_norm``).
        """
        received = [np.asarray(w, dtype=np.float32) for w in weights]
        if len(received) != len(self._names):
            raise ValueError(f"expected {len(self._names)} weight arrays, got {len(received)}")
        start = {
            name: torch.from_numpy(w).to(self._device) for name, w in zip(self._names, received, strict=True)
        }
        outcomes: list[ClientOutcome] = []
        size = self.cohort_size(jobs)
        pending = [list(jobs[first : first + size]) for first in range(0, len(jobs), size)]
        while pending:
            chunk = pending.pop(0)
            try:
                plans = [self._plan(job, round_seed) for job in chunk]  # fresh streams on a retry
                outcomes += self._train_cohort(plans, start, received, clip_norm)
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                if self._device.type == "cuda":
                    torch.cuda.empty_cache()
                half = len(chunk) // 2
                pending[:0] = [chunk[:half], chunk[half:]]  # the same clients, in two cohorts
                continue
            self.cohort_sizes.append(len(chunk))
        return outcomes

    def cohort_size(self, jobs: Sequence[ClientJob]) -> int:
        """``simulation.cohort_size``, or else how many of these clients fit in the memory share."""
        chosen = self._config.simulation.cohort_size
        if chosen > 0 or not jobs:
            return max(1, chosen)
        largest = max(len(job.data) for job in jobs)
        budget = self._memory if self._memory is not None else int(free_memory(self._device) * MEMORY_SHARE)
        each = client_bytes(self._layout, self._feature_shape, largest, self._optim.batch_size)
        return max(1, min(len(jobs), budget // each))

    def _plan(self, job: ClientJob, round_seed: int) -> _Plan:
        x, y, public = client_tensors(job.data.x, job.data.y, job.data.public_size, self._device)
        spec = dp_spec(self._config, job.data.reported_size, self._calibrated)
        rate = poisson_sample_rate(public, self._optim.batch_size) if spec else None
        streams = RoundStreams(self._device)
        seeded = None if job.secret else client_seed(round_seed, job.client_id)
        start_streams(streams, seed=self._config.run.seed, round_seed=seeded, secret=job.secret)
        batches = [
            batch.to(self._device)
            for _ in range(self._optim.local_epochs)
            for batch in epoch_batches(streams, len(y), self._optim.batch_size, rate, public_size=public)
        ]
        return _Plan(job, x, y, public, spec, rate or 0.0, batches, streams)

    def _train_cohort(
        self,
        plans: list[_Plan],
        start: dict[str, torch.Tensor],
        received: list[np.ndarray],
        clip: float | None,
    ) -> list[ClientOutcome]:
        longest = max(len(plan.batches) for plan in plans)
        steps = [
            _on(
                cohort_step_from_batches([p.batches[i] if i < len(p.batches) else None for p in plans]),
                self._device,
            )
            for i in range(longest)
        ]
        noise = None
        if self._config.dp.dpsgd:
            noise = [ClientNoise(p.spec.noise_multiplier if p.spec else 0.0, p.streams) for p in plans]
        result = self._trainer.train(start, [(p.x, p.y) for p in plans], steps, noise=noise)
        finals = {name: t.detach().cpu().numpy() for name, t in result.params.items()}
        outcomes = []
        for index, plan in enumerate(plans):
            delta = tuple(
                np.subtract(finals[name][index].astype(np.float32), old, dtype=np.float32)
                for name, old in zip(self._names, received, strict=True)
            )
            seen = float(result.seen[index])
            trained = self._result(plan, delta, float(result.loss_sums[index]) / seen if seen else math.nan)
            report = client_report(self._config, plan.job.client_id, trained, clip_norm=clip)
            outcomes.append(ClientOutcome(report=report, history=trained.history))
        return outcomes

    def _result(self, plan: _Plan, delta: tuple[np.ndarray, ...], loss: float) -> TrainResult:
        history: tuple[GaussianEvent, ...] = ()
        epsilon = 0.0
        if plan.spec is not None:
            history = history_after_steps(
                plan.job.history, noise_multiplier=plan.spec.noise_multiplier,
                sample_rate=plan.sample_rate, steps=len(plan.batches),
            )  # fmt: skip
            epsilon = self._epsilon(history, plan.spec)
        return TrainResult(
            update=Update(arrays=delta, num_examples=plan.public, weight=float(plan.public)),
            loss=loss,
            steps=len(plan.batches),
            history=history,
            epsilon=epsilon,
            noise_multiplier=plan.spec.noise_multiplier if plan.spec else 0.0,
            sample_rate=plan.sample_rate,
        )

    def _epsilon(self, history: tuple[GaussianEvent, ...], spec: DpSgdSpec) -> float:
        cached = self._epsilons.get(history)
        if cached is None:
            cached = epsilon_from_history(history, delta=spec.delta, accountant=spec.accountant)
            self._epsilons[history] = cached
        return cached


def client_bytes(model: nn.Sequential, feature_shape: tuple[int, ...], examples: int, batch_size: int) -> int:
    """A generous estimate of one client's memory in a cohort, in bytes (float32).

    Stacked parameters with optimizer state, gradient sums and noise (8 copies), the client's
    ``examples`` inputs, and per step, for a padded batch of up to twice the expected batch,
    :func:`~fedlab.training.cohort_layers.example_bytes` per example.

    >>> from fedlab.training.models import build_model
    >>> model = build_model("logreg", feature_shape=(64,), num_classes=10)
    >>> client_bytes(model, (64,), 100, 32) == 4 * (8 * 650 + 100 * 64 + 64 * 4 * (64 + 10))
    True
    """
    params = sum(p.numel() for p in model.parameters())
    inputs = math.prod(feature_shape)
    return 4 * (8 * params + examples * inputs) + 2 * batch_size * example_bytes(model, feature_shape)


def free_memory(device: torch.device) -> int:
    """Free memory in bytes: the GPU's for CUDA, else the machine's available memory.

    >>> free_memory(torch.device("cpu")) > 0
    True
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _on(step: CohortStep, device: torch.device) -> CohortStep:
    return CohortStep(step.indices.to(device), step.mask.to(device), step.active.to(device))
