"""DP-SGD for a cohort of clients in one vectorized pass, the Opacus step exactly.

Every client of a cohort starts from the same global weights; their parameters and optimizer
state are stacked along a leading client axis. One step of the cohort is, for every client at
once and exactly as Opacus' ``GradSampleModule`` with ``loss_reduction="mean"`` and
``DPOptimizer`` do for one client:

1. per-example gradients of the cross-entropy loss of the client's batch, layer by layer
   (:mod:`fedlab.training.cohort_layers`: batched products, ghost norms for linear layers);
   a client's batch is a padded row of indices with a membership mask, so an empty Poisson
   batch is a step with no example;
2. each example's gradient clipped to L2 norm ``max_grad_norm`` (factor
   ``min(1, C / (norm + 1e-6))``) and summed over the client's batch;
3. Gaussian noise of standard deviation ``z_c * max_grad_norm`` added per client ``c`` with its
   own noise multiplier ``z_c``, drawn from that client's own :class:`NoiseSource` one parameter
   after another (a :class:`~fedlab.training.randomness.RoundStreams` draws exactly what the
   client's ``DPOptimizer`` would: the same batches and noise give the same update);
4. division by the expected batch size, then the client's SGD (with momentum) or Adam step.

A client with fewer steps than the cohort's longest stops changing (and drawing noise) once its
steps are done.

Without DP (``dp=None``) step 1 is the batch-mean gradient and steps 2-3 are skipped, as in
:func:`~fedlab.training.local.train_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from fedlab.training.cohort_layers import cohort_grads, example_bytes, unsupported_reason
from fedlab.training.specs import DpSgdSpec, OptimSpec

Params = dict[str, torch.Tensor]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8

CPU_PASS_BYTES = 64 * 2**20
"""On CPU, per-example work of at most this many bytes per pass: larger passes leave the caches
and get slower per client (digits CNN, cohort of 256, 2 cores, ``benchmarks/cohort.py``: 384
client-steps/s in passes of 10 clients, 206 in one pass; 32 to 128 MiB all within 5%)."""


class NoiseSource(Protocol):
    """Where one client's DP noise comes from (:class:`~fedlab.training.randomness.RoundStreams`)."""

    def gaussian(self, std: float, like: torch.Tensor) -> torch.Tensor:
        """N(0, std^2) noise shaped, typed and placed like ``like``."""
        ...


@dataclass(frozen=True)
class ClientNoise:
    """One client's noise: its noise multiplier and its own source."""

    noise_multiplier: float
    source: NoiseSource


@dataclass(frozen=True)
class CohortStep:
    """One step of every client of a cohort.

    Attributes:
        indices: ``(clients, width)`` example indices into each client's data (padding: any valid
            index).
        mask: ``(clients, width)`` 1.0 where the index is in the client's batch, else 0.0.
        active: ``(clients,)`` whether the client takes this step at all (its steps not yet done).

    """

    indices: torch.Tensor
    mask: torch.Tensor
    active: torch.Tensor


def cohort_step_from_batches(batches: Sequence[torch.Tensor | None]) -> CohortStep:
    """Pad one step's batches (None: the client has no step left) into a :class:`CohortStep`.

    >>> step = cohort_step_from_batches([torch.tensor([3, 5]), torch.tensor([], dtype=torch.long), None])
    >>> step.mask.tolist(), step.active.tolist()
    ([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], [True, True, False])
    """
    width = max([1, *(len(b) for b in batches if b is not None)])
    indices = torch.zeros((len(batches), width), dtype=torch.long)
    mask = torch.zeros((len(batches), width))
    for row, batch in enumerate(batches):
        if batch is not None and len(batch):
            indices[row, : len(batch)] = batch
            mask[row, : len(batch)] = 1.0
    return CohortStep(indices, mask, torch.tensor([b is not None for b in batches]))


@dataclass(frozen=True)
class CohortResult:
    """What a cohort's training produced.

    Attributes:
        params: The final parameters, stacked along a leading client axis.
        loss_sums: ``(clients,)`` summed training loss over every example each client saw.
        seen: ``(clients,)`` how many examples each client saw (with repeats across steps).
    """

    params: Params
    loss_sums: torch.Tensor
    seen: torch.Tensor


class CohortTrainer:
    """Trains the clients of a cohort together from one global model.

    Args:
        model: A plain module of the run's architecture that
            :func:`~fedlab.training.cohort_layers.unsupported_reason` accepts (only its layout is
            used; its parameters are not changed).
        optim: Optimizer and its settings (``sgd`` with momentum, or ``adam``).
        dp: DP-SGD parameters (its ``max_grad_norm``; noise multipliers come per client with
            :meth:`train`), or None for plain training.
        pass_bytes: Compute each step's gradients in passes of as many clients as fit in this
            many bytes of per-example work (:func:`~fedlab.training.cohort_layers.example_bytes`);
            None: :data:`CPU_PASS_BYTES` on CPU, the whole cohort in one pass on other devices.
            Passes change the schedule, not the results.

    Raises:
        ValueError: If the cohort layers cannot train ``model``.

    """

    def __init__(
        self, model: nn.Module, optim: OptimSpec, dp: DpSgdSpec | None, *, pass_bytes: int | None = None
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the cohort trainer cannot train this model: {reason}")
        assert isinstance(model, nn.Sequential)
        self._model = model
        self._optim = optim
        self._dp = dp
        self._pass_bytes = pass_bytes

    def train(
        self,
        start: Params,
        data: Sequence[tuple[torch.Tensor, torch.Tensor]],
        steps: Sequence[CohortStep],
        *,
        noise: Sequence[ClientNoise] | None = None,
    ) -> CohortResult:
        """Run ``steps`` for every client from ``start``.

        Args:
            start: The global parameters (by name, as ``model.named_parameters()``).
            data: Each client's ``(x, y)``; rows of a :class:`CohortStep` index into them.
            steps: The cohort's steps, in order.
            noise: Each client's noise multiplier and source (with DP; None: no noise).

        Returns:
            The parameters stacked along a leading axis of ``len(data)`` clients, and each
            client's training loss.

        Raises:
            ValueError: If there is not one noise per client.

        """
        clients = len(data)
        if noise is not None and len(noise) != clients:
            raise ValueError(f"DP noise needs one noise per client ({clients}); got {len(noise)}")
        params = {
            name: t.detach().unsqueeze(0).repeat(clients, *([1] * t.dim())) for name, t in start.items()
        }
        state = _OptimizerState.empty(params)
        width = max([len(x) for x, _ in data])
        xs = torch.stack([_pad(x, width) for x, _ in data])
        ys = torch.stack([_pad(y, width) for _, y in data])
        rows = torch.arange(clients, device=xs.device).unsqueeze(1)
        loss_sums = torch.zeros(clients, dtype=torch.float64, device=xs.device)
        per_client = example_bytes(self._model, tuple(xs.shape[2:]))
        seen = torch.zeros(clients, dtype=torch.float64, device=xs.device)
        for step in steps:
            x, y = xs[rows, step.indices], ys[rows, step.indices]
            clip = self._dp.max_grad_norm if self._dp else None
            summed, losses = self._grads(params, x, y, step.mask, clip, per_client * x.shape[1])
            loss_sums += (losses * step.mask).sum(dim=1).to(loss_sums)
            seen += step.mask.sum(dim=1).to(seen)
            if self._dp is None:
                count = step.mask.sum(dim=1).clamp(min=1.0)
                grads = {name: g / _broadcast(count, g) for name, g in summed.items()}
            else:
                if noise is not None:
                    summed = _add_noise(
                        summed, clip=self._dp.max_grad_norm, noise=noise, active=step.active.tolist()
                    )
                batch = float(self._optim.batch_size)
                grads = {name: total / batch for name, total in summed.items()}
            params = state.step(params, grads, step.active, self._optim)
        return CohortResult(params, loss_sums, seen)

    def _grads(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        clip: float | None,
        size: int,
    ) -> tuple[Params, torch.Tensor]:
        """:func:`cohort_grads` in passes of as many clients as ``pass_bytes`` allows (``size`` each)."""
        limit = self._pass_bytes
        if limit is None and x.device.type == "cpu":
            limit = CPU_PASS_BYTES
        clients = x.shape[0]
        chunk = clients if limit is None else max(1, limit // max(1, size))
        if chunk >= clients:
            return cohort_grads(self._model, params, x, y, mask, clip=clip)
        parts = [
            cohort_grads(
                self._model, {name: t[s : s + chunk] for name, t in params.items()},
                x[s : s + chunk], y[s : s + chunk], mask[s : s + chunk], clip=clip,
            )
            for s in range(0, clients, chunk)
        ]  # fmt: skip
        summed = {name: torch.cat([grads[name] for grads, _ in parts]) for name in parts[0][0]}
        return summed, torch.cat([losses for _, losses in parts])


@dataclass
class _OptimizerState:
    """Per-client optimizer state, stacked: momentum buffers (SGD) or moments (Adam)."""

    first: Params
    second: Params
    taken: torch.Tensor

    @classmethod
    def empty(cls, params: Params) -> _OptimizerState:
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        first = next(iter(params.values()))
        taken = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)
        return cls(zeros, {name: z.clone() for name, z in zeros.items()}, taken)

    def step(self, params: Params, grads: Params, active: torch.Tensor, optim: OptimSpec) -> Params:
        """One optimizer step for the active clients (the others keep parameters and state)."""
        taken = self.taken + active.to(self.taken)
        new: Params = {}
        for name, p in params.items():
            g, on = grads[name], _broadcast(active, p)
            if optim.optimizer == "adam":
                beta1, beta2 = _ADAM_BETAS
                m = torch.where(on, beta1 * self.first[name] + (1 - beta1) * g, self.first[name])
                v = torch.where(on, beta2 * self.second[name] + (1 - beta2) * g * g, self.second[name])
                t = _broadcast(taken.clamp(min=1.0), p)  # float64, as torch's bias corrections
                m_hat = m / (1 - beta1**t).to(p.dtype)
                v_hat = v / (1 - beta2**t).to(p.dtype)
                update = optim.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
                self.first[name], self.second[name] = m, v
            else:
                direction = g
                if optim.momentum:
                    first_step = _broadcast(self.taken == 0, p)
                    buf = torch.where(first_step, g, optim.momentum * self.first[name] + g)
                    self.first[name] = torch.where(on, buf, self.first[name])
                    direction = buf
                update = optim.lr * direction
            new[name] = torch.where(on, p - update, p)
        self.taken = taken
        return new


def _add_noise(summed: Params, *, clip: float, noise: Sequence[ClientNoise], active: list[bool]) -> Params:
    """Add each active client's N(0, (z_c clip)^2) noise, parameter by parameter from its own source."""
    noisy: Params = {name: total.clone() for name, total in summed.items()}
    for client, own in enumerate(noise):
        if not active[client]:
            continue  # its steps are done: it draws nothing, as it would alone
        std = own.noise_multiplier * clip
        for total in noisy.values():
            total[client] += own.source.gaussian(std, total[client])
    return noisy


def _broadcast(per_client: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_client.reshape(-1, *([1] * (like.dim() - 1)))


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if len(t) == width:
        return t
    pad = torch.zeros((width - len(t), *t.shape[1:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad])
