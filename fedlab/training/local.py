"""One client's local training: plain minibatch SGD, or sample-level DP-SGD with Opacus.

A :class:`LocalTrainer` is built once per client and reused every round; the simulator
builds one per worker and points it at each client in turn (:meth:`LocalTrainer.use_client`),
so every client trains through the same code whoever hosts it. Under DP it
wraps the model once in Opacus' ``GradSampleModule`` (per-sample gradients by hooks)
and the optimizer once in Opacus' ``DPOptimizer`` (clip each per-sample gradient to
``max_grad_norm``, sum, add Gaussian noise of std ``noise_multiplier * max_grad_norm``,
divide by the expected batch size). Batches are Poisson samples drawn by Opacus'
``UniformWithReplacementSampler`` (the sampler inside ``DPDataLoader``) with rate
``q = batch_size / n``; each epoch is ``n // batch_size`` steps, i.e. Opacus'
``int(1 / q)`` computed without float rounding. Every step is recorded by an Opacus
accountant hook, so the history returned is what actually ran.

These pieces are assembled directly rather than through
``PrivacyEngine.make_private``: ``make_private`` derives the sample rate from the
length of the data loader (``1 / ceil(n / batch_size)``, not ``batch_size / n``) and
the expected batch size from that rate, and it never lets the caller seed the
sampler (it passes ``secure_rng=None`` and falls back to the loader's generator).

What this protects, and what it does not:

* The returned update is (epsilon, delta)-DP with respect to adding or removing one
  of the client's examples, for the accountant's epsilon over the whole history —
  provided the caller carries the history faithfully from round to round.
* The reported ``loss`` and ``num_examples`` are NOT privatised; treat them as
  public or keep them on the client.
* Noise and sampling come from the round's :class:`~fedlab.training.randomness.RoundStreams`:
  with ``round_seed`` (simulation) from ``torch.Generator`` (Mersenne Twister) seeded from
  ``(seed, round_seed)``, reproducible by whoever knows both seeds, who can subtract the
  noise; with ``secret`` (deployment) from ChaCha20 streams keyed by the client's secret,
  which nobody else can reproduce, with the floating-point mitigation of Opacus'
  ``secure_mode`` (Holohan & Braghin 2021) and ``secure_mode=True`` set on the optimizer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from opacus.accountants import IAccountant, create_accountant
from opacus.grad_sample import AbstractGradSampleModule, GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from fedlab.core.update import Update
from fedlab.privacy.events import GaussianEvent
from fedlab.training.accounting import (
    epsilon_from_history,
    history_from_opacus,
    noise_multiplier_for_epsilon,
    opacus_history,
)
from fedlab.training.models import set_weights, weight_tensors
from fedlab.training.randomness import RoundStreams, StreamDPOptimizer, epoch_batches, start_streams
from fedlab.training.specs import DpSgdSpec, OptimSpec, TrainResult, poisson_plan, poisson_sample_rate

__all__ = [
    "DpSgdSpec",
    "LocalTrainer",
    "OptimSpec",
    "TrainResult",
    "epoch_batches",
    "evaluate",
    "noise_multiplier_for_epsilon",
    "poisson_plan",
    "poisson_sample_rate",
    "start_streams",
]


_EPSILON_MEMO_SIZE = 4096
"""Histories whose epsilon a trainer remembers (clients of equal size share histories)."""


@dataclass(frozen=True)
class _DpParts:
    """The Opacus objects DP-SGD needs, built once per trainer."""

    spec: DpSgdSpec
    sample_rate: float
    accountant: IAccountant


class LocalTrainer:
    """One client's trainer, built once per client process and reused every round.

    The constructor builds the model wrapper, optimizer and (with DP) Opacus'
    ``GradSampleModule``, ``DPOptimizer`` and accountant. Each round loads the
    received global weights into the *same* wrapped model in place (so the
    caller's ``model`` object is updated too), clears optimizer state, trains,
    and returns the delta. The accountant history is passed in and returned, so
    the caller persists it wherever it likes (Flower ``context.state``, a file).

    Security notes (see the module docstring): a round trained with ``round_seed`` is
    reproducible from ``(seed, round_seed)`` (simulation only); a round trained with a
    ``secret`` draws its batches and noise from that secret alone (deployment).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        >>> optim = OptimSpec(optimizer="sgd", lr=0.1, momentum=0.0, local_epochs=1, batch_size=16)
        >>> dp = DpSgdSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp")
        >>> trainer = LocalTrainer(model=nn.Linear(4, 2), x=x, y=(x[:, 0] > 0).astype(np.int64),
        ...                        optim=optim, dp=dp, device=torch.device("cpu"), seed=0)
        >>> weights = [np.zeros((2, 4), np.float32), np.zeros(2, np.float32)]
        >>> result = trainer.train_round(weights, round_seed=1)
        >>> result.history
        (GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=4),)
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        optim: OptimSpec,
        dp: DpSgdSpec | None,
        device: torch.device,
        seed: int,
        public_size: int | None = None,
    ) -> None:
        """Set up training for one client.

        Args:
            model: A plain ``nn.Module`` (not already wrapped by Opacus). With DP it
                must pass ``ModuleValidator.validate(strict=True)`` unchanged.
            x: Features, float, shape ``(n, *feature_shape)``, finite.
            y: Integer labels, shape ``(n,)``.
            optim: Optimizer and schedule.
            dp: DP-SGD parameters, or ``None`` for plain training.
            device: Where to train; the model and data are moved there.
            seed: Non-negative client seed, mixed into the round seed of seeded rounds.
            public_size: The example count reported and used for DP-SGD's sample rate and steps
                (the guarantee treats it as public; see ``ArrayDataset.public_size``); None: n.

        Raises:
            ValueError: On bad data, a negative seed, ``batch_size > n`` with DP, or
                an already wrapped model.
            opacus.validators.errors.UnsupportedModuleError: If DP is on and the
                model is not supported by Opacus.

        """
        if seed < 0:
            raise ValueError(f"seed must be >= 0; got {seed}")
        if isinstance(model, AbstractGradSampleModule):
            raise ValueError("pass the plain module; LocalTrainer wraps it for Opacus itself")
        self._optim = optim
        self._device = device
        self._seed = seed
        self._streams = RoundStreams(device)
        model.to(device)
        self._x, self._y, self._public = client_tensors(x, y, public_size, device)
        self._dp = None if dp is None else _dp_parts(dp, num_examples=self._public, optim=optim)
        self._model = model if dp is None else _wrap_for_per_sample_gradients(model)
        self._optimizer = _build_optimizer(self._model, optim, self._dp, self._streams)
        self._tensors = list(weight_tensors(self._model).values())  # the trained tensors' storage
        self._epsilons: dict[tuple[GaussianEvent, ...], float] = {}

    def use_client(
        self, *, x: np.ndarray, y: np.ndarray, dp: DpSgdSpec | None, public_size: int | None = None
    ) -> None:
        """Train another client's data from now on, keeping the model, optimizer and Opacus wrapper.

        The simulator trains many clients on one trainer this way; the next
        :meth:`train_round` is exactly the round a trainer built for this client would run.

        Args:
            x: The client's features (as for the constructor).
            y: The client's labels.
            dp: Its DP-SGD parameters (its own noise multiplier); None exactly when this
                trainer was built without DP.
            public_size: Its public example count (see the constructor); None: n.

        Raises:
            ValueError: On bad data, or DP given to a trainer built without it (or the reverse).

        """
        if (dp is None) != (self._dp is None):
            raise ValueError("a trainer keeps the DP setting it was built with")
        self._x, self._y, self._public = client_tensors(x, y, public_size, self._device)
        if dp is not None:
            self._dp = _dp_parts(dp, num_examples=self._public, optim=self._optim)
            private = cast(StreamDPOptimizer, self._optimizer)
            private.noise_multiplier = dp.noise_multiplier
            private.max_grad_norm = dp.max_grad_norm
            private.attach_step_hook(
                self._dp.accountant.get_optimizer_hook_fn(sample_rate=self._dp.sample_rate)
            )

    @property
    def model(self) -> nn.Module:
        """The module trained every round (Opacus' ``GradSampleModule`` under DP)."""
        return self._model

    @property
    def num_examples(self) -> int:
        """The public number of local examples ``n`` (sample rate, steps, the reported count)."""
        return self._public

    @property
    def steps_per_round(self) -> int:
        """Optimizer steps each call to :meth:`train_round` takes.

        With DP see :func:`poisson_plan`; without DP each epoch is
        ``ceil(n / batch_size)`` shuffled minibatches.
        """
        if self._dp is not None:
            return poisson_plan(self.num_examples, self._optim)[1]
        return self._optim.local_epochs * math.ceil(self.num_examples / self._optim.batch_size)

    def train_round(
        self,
        global_weights: Sequence[np.ndarray],
        *,
        history: Sequence[GaussianEvent] = (),
        round_seed: int | None = None,
        secret: bytes | None = None,
    ) -> TrainResult:
        """Train one round starting from ``global_weights``.

        Give exactly one of ``round_seed`` and ``secret``.

        Args:
            global_weights: The server's weights, in ``state_dict`` order.
            history: The client's accountant history before this round (empty on the
                first round). Must be empty without DP.
            round_seed: Simulation: non-negative seed of this round's sampling and noise;
                the same ``(seed, round_seed)`` reproduces the round exactly (on CPU).
            secret: Deployment: the client's secret for this round (at least 32 bytes,
                e.g. :func:`~fedlab.training.randomness.fresh_secret`); sampling and noise
                come from it alone.

        Returns:
            The delta and what was spent; ``history`` in the result is the input
            history plus this round's steps.

        Raises:
            ValueError: On a shape mismatch, a negative ``round_seed``, a short ``secret``,
                neither or both of them, or a history given without DP.

        """
        prior = tuple(history)
        if self._dp is None and prior:
            raise ValueError("a privacy history was given to a trainer without DP")
        start_streams(self._streams, seed=self._seed, round_seed=round_seed, secret=secret)
        received = self._load_global_weights(global_weights)
        self._start_round(prior)
        with warnings.catch_warnings():
            # Opacus' hooks make torch warn on every step that no input requires grad: harmless.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss_sum, seen, steps = self._run_epochs()
        self._optimizer.zero_grad(set_to_none=True)  # frees per-sample gradients between rounds
        after = self._history_after(prior, steps)
        return TrainResult(
            update=self._delta_update(received),
            loss=loss_sum / seen if seen else math.nan,
            steps=steps,
            history=after,
            epsilon=self.epsilon(after),
            noise_multiplier=0.0 if self._dp is None else self._dp.spec.noise_multiplier,
            sample_rate=0.0 if self._dp is None else self._dp.sample_rate,
        )

    def epsilon(self, history: Sequence[GaussianEvent]) -> float:
        """Return the epsilon at this trainer's delta of ``history``, with its accountant.

        Without DP the only valid history is the empty one, reported as 0.0. Answers are
        remembered per history (the client's delta and accountant are the run's).

        Raises:
            ValueError: If a non-empty history is given to a trainer without DP.

        """
        if self._dp is None:
            if history:
                raise ValueError("a trainer without DP has no delta or accountant to evaluate a history")
            return 0.0
        key = tuple(history)
        cached = self._epsilons.get(key)
        if cached is None:
            if len(self._epsilons) >= _EPSILON_MEMO_SIZE:
                self._epsilons.clear()
            spec = self._dp.spec
            cached = epsilon_from_history(key, delta=spec.delta, accountant=spec.accountant)
            self._epsilons[key] = cached
        return cached

    def _load_global_weights(self, global_weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Copy the weights into the model in place; return them as float32 (what the model holds)."""
        received = [np.asarray(w, dtype=np.float32) for w in global_weights]
        if len(received) != len(self._tensors) or any(
            w.shape != tuple(t.shape) for w, t in zip(received, self._tensors, strict=True)
        ):
            set_weights(self._model, received)  # raises with the offending tensor's name
        with torch.no_grad():
            for tensor, array in zip(self._tensors, received, strict=True):
                tensor.copy_(torch.from_numpy(array))
        return received

    def _start_round(self, prior: tuple[GaussianEvent, ...]) -> None:
        self._optimizer.zero_grad(set_to_none=True)
        self._optimizer.state.clear()
        if self._dp is not None:
            self._dp.accountant.history = opacus_history(prior)
        self._model.train()

    def _run_epochs(self) -> tuple[float, int, int]:
        loss_sum, seen, steps = 0.0, 0, 0
        for _ in range(self._optim.local_epochs):
            for indices in self._epoch_batches():
                loss_sum += self._train_step(indices.to(self._device))
                seen += len(indices)
                steps += 1
        return loss_sum, seen, steps

    def _epoch_batches(self) -> Iterable[torch.Tensor]:
        rate = None if self._dp is None else self._dp.sample_rate
        return epoch_batches(
            self._streams, len(self._y), self._optim.batch_size, rate, public_size=self._public
        )

    def _train_step(self, indices: torch.Tensor) -> float:
        """Take one optimizer step on the given examples; return their summed loss."""
        return train_step(self._model, self._optimizer, self._x, self._y, indices)

    def _history_after(self, prior: tuple[GaussianEvent, ...], steps: int) -> tuple[GaussianEvent, ...]:
        if self._dp is None:
            return ()
        after = history_from_opacus(self._dp.accountant.history)
        if _total_steps(after) != _total_steps(prior) + steps:
            raise RuntimeError("accountant history does not match the steps taken")
        return after

    def _delta_update(self, received: list[np.ndarray]) -> Update:
        local = [t.detach().cpu().numpy().astype(np.float32, copy=True) for t in self._tensors]
        delta = tuple(
            np.subtract(new, old, dtype=np.float32) for new, old in zip(local, received, strict=True)
        )
        n = self._public
        return Update(arrays=delta, num_examples=n, weight=float(n))


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    indices: torch.Tensor,
) -> float:
    """Take one cross-entropy optimizer step on examples ``indices``; return their summed loss.

    The one step every trainer takes (:class:`LocalTrainer`, the simulator's swap trainer), so
    that who trains a client never changes its result.
    """
    optimizer.zero_grad(set_to_none=True)
    losses = F.cross_entropy(model(x[indices]), y[indices], reduction="none")
    total = losses.sum()
    # Batch mean; an empty Poisson batch gives 0 instead of NaN (Opacus still
    # takes the step: it adds noise and the accountant counts it).
    torch.autograd.backward(total / max(len(indices), 1))
    optimizer.step()
    return float(total.detach())


def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 512,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Return the mean cross-entropy loss and the accuracy of ``model`` on ``(x, y)``.

    The model is run in eval mode without gradients and put back in its previous
    mode afterwards; it is not moved.

    Args:
        model: A plain or Opacus-wrapped classifier returning logits.
        x: Features, shape ``(n, *feature_shape)``.
        y: Integer labels, shape ``(n,)``.
        batch_size: Examples per forward pass.
        device: Where the model lives; defaults to the device of its parameters.

    Raises:
        ValueError: On empty or mismatched data or a non-positive batch size.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> evaluate(model, np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 0]))[1]
        0.5
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    where = device if device is not None else _model_device(model)
    x_t, y_t = _data_tensors(x, y, where)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in zip(torch.split(x_t, batch_size), torch.split(y_t, batch_size), strict=True):
            logits = model(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return loss_sum / len(y_t), correct / len(y_t)


def _data_tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x_arr, y_arr = np.asarray(x), np.asarray(y)
    if x_arr.ndim < 2 or len(x_arr) == 0:
        raise ValueError(f"x must have shape (n, *feature_shape) with n >= 1; got {x_arr.shape}")
    if not np.issubdtype(x_arr.dtype, np.floating) or not np.isfinite(x_arr).all():
        raise ValueError(f"x must be finite floats; got dtype {x_arr.dtype}")
    if y_arr.shape != (len(x_arr),) or not np.issubdtype(y_arr.dtype, np.integer):
        raise ValueError(
            f"y must be integer labels of shape ({len(x_arr)},); got {y_arr.dtype} {y_arr.shape}"
        )
    if y_arr.min() < 0:
        raise ValueError("labels must be >= 0")
    return (
        torch.tensor(x_arr, dtype=torch.float32, device=device),
        torch.tensor(y_arr, dtype=torch.long, device=device),
    )


def client_tensors(
    x: np.ndarray, y: np.ndarray, public_size: int | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A client's checked data as tensors on ``device``, and its public example count.

    Raises:
        ValueError: On empty, non-finite or mismatched data, or ``public_size`` outside [1, n].

    >>> x, y, n = client_tensors(np.zeros((3, 2), np.float32), np.array([0, 1, 0]), None, torch.device("cpu"))
    >>> tuple(x.shape), y.dtype, n
    ((3, 2), torch.int64, 3)
    """
    x_t, y_t = _data_tensors(x, y, device)
    public = len(y_t) if public_size is None else public_size
    if not 1 <= public <= len(y_t):
        raise ValueError(f"public_size must be in [1, {len(y_t)}]; got {public_size}")
    return x_t, y_t, public


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def _dp_parts(spec: DpSgdSpec, *, num_examples: int, optim: OptimSpec) -> _DpParts:
    return _DpParts(
        spec=spec,
        sample_rate=poisson_sample_rate(num_examples, optim.batch_size),
        accountant=create_accountant(mechanism=spec.accountant),
    )


def _wrap_for_per_sample_gradients(model: nn.Module) -> nn.Module:
    ModuleValidator.validate(model, strict=True)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    wrapped.forbid_grad_accumulation()  # a missed zero_grad would silently mix two Poisson batches
    return cast(nn.Module, wrapped)


def _build_optimizer(
    model: nn.Module, optim: OptimSpec, dp: _DpParts | None, streams: RoundStreams
) -> torch.optim.Optimizer:
    base: torch.optim.Optimizer
    if optim.optimizer == "sgd":
        base = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum)
    else:
        base = torch.optim.Adam(model.parameters(), lr=optim.lr)
    if dp is None:
        return base
    private = StreamDPOptimizer(
        base,
        streams=streams,
        noise_multiplier=dp.spec.noise_multiplier,
        max_grad_norm=dp.spec.max_grad_norm,
        expected_batch_size=optim.batch_size,
        loss_reduction="mean",
    )
    private.attach_step_hook(dp.accountant.get_optimizer_hook_fn(sample_rate=dp.sample_rate))
    return cast(torch.optim.Optimizer, private)


def _total_steps(history: Sequence[GaussianEvent]) -> int:
    return sum(step.steps for step in history)
