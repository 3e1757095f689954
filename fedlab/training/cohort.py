"""DP-SGD for a cohort of clients in one vectorized pass (``torch.func``), the Opacus step exactly.

Every client of a cohort starts from the same global weights; their parameters and optimizer
state are stacked along a leading client axis. One step of the cohort is, for every client at
once and exactly as Opacus' ``GradSampleModule`` with ``loss_reduction="mean"`` and
``DPOptimizer`` do for one client:

1. per-example gradients of the cross-entropy loss of the client's batch (``vmap`` of ``grad``
   over the examples, ``vmap`` over the clients); a client's batch is a padded row of indices
   with a membership mask, so an empty Poisson batch is a step with no example;
2. each example's gradient clipped to L2 norm ``max_grad_norm`` (factor
   ``min(1, C / (norm + 1e-6))``) and summed over the client's batch;
3. Gaussian noise of standard deviation ``noise_multiplier * max_grad_norm`` added per client,
   drawn from that client's own generator;
4. division by the expected batch size, then the client's SGD (with momentum) or Adam step.

A client with fewer steps than the cohort's longest stops changing once its steps are done.

Stacks of linear layers (logreg, MLP) take steps 1-2 without per-example gradients
(:mod:`fedlab.training.cohort_linear`); other models (the GroupNorm CNN) materialise them with
``torch.func``, which on a CPU is slower than Opacus one client after another.

This module is the cohort step only: the simulator does not use it yet (issue 14).

Without DP (``dp=None``) step 1 is the batch-mean gradient and steps 2-3 are skipped, as in
:func:`~fedlab.training.local.train_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.func import functional_call, grad, vmap

from fedlab.training.cohort_linear import CLIP_STABILITY, is_linear_stack, linear_stack_grads
from fedlab.training.specs import DpSgdSpec, OptimSpec

Params = dict[str, torch.Tensor]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


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


class CohortTrainer:
    """Trains the clients of a cohort together from one global model.

    Args:
        model: A plain module of the run's architecture (its parameters are not changed).
        optim: Optimizer and its settings (``sgd`` with momentum, or ``adam``).
        dp: DP-SGD parameters, or None for plain training.

    """

    def __init__(self, model: nn.Module, optim: OptimSpec, dp: DpSgdSpec | None) -> None:
        self._model = model
        self._optim = optim
        self._dp = dp
        self._buffers = {name: b.detach() for name, b in model.named_buffers()}
        self._linear = model if isinstance(model, nn.Sequential) and is_linear_stack(model) else None
        per_example: Callable[..., Params] = grad(self._example_loss)
        per_client: Callable[..., Params] = vmap(per_example, in_dims=(None, 0, 0))
        self._example_grads = vmap(per_client, in_dims=(0, 0, 0))
        self._batch_grads = vmap(grad(self._batch_loss), in_dims=(0, 0, 0, 0))

    def _example_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(self._model, (params, self._buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    def _batch_loss(
        self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        logits = functional_call(self._model, (params, self._buffers), (x,))
        losses = F.cross_entropy(logits, y, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)

    def train(
        self,
        start: Params,
        data: Sequence[tuple[torch.Tensor, torch.Tensor]],
        steps: Sequence[CohortStep],
        *,
        noise: Sequence[torch.Generator] | None = None,
    ) -> Params:
        """Run ``steps`` for every client from ``start``; return the stacked final parameters.

        Args:
            start: The global parameters (by name, as ``model.named_parameters()``).
            data: Each client's ``(x, y)``; rows of a :class:`CohortStep` index into them.
            steps: The cohort's steps, in order.
            noise: One generator per client for its DP noise (required with DP and a noise
                multiplier above 0).

        Returns:
            Parameters stacked along a leading axis of ``len(data)`` clients.

        Raises:
            ValueError: If the generators do not match the clients, or are missing under DP noise.

        """
        clients = len(data)
        noisy = self._dp is not None and self._dp.noise_multiplier > 0.0
        if noisy and (noise is None or len(noise) != clients):
            raise ValueError(f"DP noise needs one generator per client ({clients})")
        params = {
            name: t.detach().unsqueeze(0).repeat(clients, *([1] * t.dim())) for name, t in start.items()
        }
        state = _OptimizerState.empty(params)
        width = max([len(x) for x, _ in data])
        xs = torch.stack([_pad(x, width) for x, _ in data])
        ys = torch.stack([_pad(y, width) for _, y in data])
        rows = torch.arange(clients, device=xs.device).unsqueeze(1)
        for step in steps:
            x, y = xs[rows, step.indices], ys[rows, step.indices]
            grads = (
                self._private_grads(params, x, y, step.mask, noise)
                if self._dp
                else self._plain_grads(params, x, y, step.mask)
            )
            params = state.step(params, grads, step.active, self._optim)
        return params

    def _plain_grads(self, params: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> Params:
        if self._linear is None:
            grads: Params = self._batch_grads(params, x, y, mask)
            return grads
        sums = linear_stack_grads(self._linear, params, x, y, mask, clip=None)
        count = mask.sum(dim=1).clamp(min=1.0)
        return {name: g / _broadcast(count, g) for name, g in sums.items()}

    def _private_grads(
        self,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        noise: Sequence[torch.Generator] | None,
    ) -> Params:
        assert self._dp is not None
        clip, z = self._dp.max_grad_norm, self._dp.noise_multiplier
        if self._linear is not None:
            summed = linear_stack_grads(self._linear, params, x, y, mask, clip=clip)
        else:
            per_example: Params = self._example_grads(params, x, y)
            squared = sum(g.flatten(start_dim=2).pow(2).sum(dim=2) for g in per_example.values())
            assert isinstance(squared, torch.Tensor)
            factor = (clip / (squared.sqrt() + CLIP_STABILITY)).clamp(max=1.0) * mask  # (clients, width)
            summed = {name: torch.einsum("cb,cb...->c...", factor, g) for name, g in per_example.items()}
        if z > 0.0:
            assert noise is not None
            summed = _add_noise(summed, std=z * clip, generators=noise)
        batch = float(self._optim.batch_size)
        return {name: total / batch for name, total in summed.items()}


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


def _add_noise(summed: Params, *, std: float, generators: Sequence[torch.Generator]) -> Params:
    """Add N(0, std^2) to every coordinate, one draw per client from that client's generator."""
    sizes = [t[0].numel() for t in summed.values()]
    first = next(iter(summed.values()))
    draws = torch.stack(
        [
            torch.normal(0.0, std, size=(sum(sizes),), generator=gen, dtype=first.dtype, device=first.device)
            for gen in generators
        ]
    )
    noisy: Params = {}
    for (name, total), part in zip(summed.items(), torch.split(draws, sizes, dim=1), strict=True):
        noisy[name] = total + part.reshape(total.shape)
    return noisy


def _broadcast(per_client: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_client.reshape(-1, *([1] * (like.dim() - 1)))


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    if len(t) == width:
        return t
    pad = torch.zeros((width - len(t), *t.shape[1:]), dtype=t.dtype, device=t.device)
    return torch.cat([t, pad])
