"""One client's local training: plain minibatch SGD, or sample-level DP-SGD with Opacus.

A :class:`LocalTrainer` is built once per client and reused every round. Under DP it
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
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from fedlab.core.config import DpSection, TrainSection
from fedlab.core.update import Update
from fedlab.training.accounting import (
    ACCOUNTANTS,
    PrivacyStep,
    epsilon_from_history,
    history_from_opacus,
    noise_multiplier_for_epsilon,
)
from fedlab.training.models import get_weights, set_weights
from fedlab.training.randomness import RoundStreams

__all__ = [
    "DpSgdSpec",
    "LocalTrainer",
    "OptimSpec",
    "PrivacyStep",
    "TrainResult",
    "evaluate",
    "noise_multiplier_for_epsilon",
    "poisson_plan",
]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True, kw_only=True)
class OptimSpec:
    """How a client trains locally.

    Attributes:
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: Learning rate, > 0.
        momentum: SGD momentum in [0, 1); ignored by Adam.
        local_epochs: Passes over the local data per round, >= 1.
        batch_size: Batch size; with DP the *expected* batch size, so the Poisson
            sample rate is ``batch_size / n``.

    """

    optimizer: str
    lr: float
    momentum: float
    local_epochs: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if not (self.lr > 0.0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be finite and > 0; got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {self.momentum!r}")
        if self.local_epochs < 1:
            raise ValueError(f"local_epochs must be >= 1; got {self.local_epochs!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size!r}")

    @classmethod
    def from_config(cls, train: TrainSection) -> OptimSpec:
        """Build the spec from the ``[train]`` section of a run config."""
        return cls(
            optimizer=train.optimizer,
            lr=train.lr,
            momentum=train.momentum,
            local_epochs=train.local_epochs,
            batch_size=train.batch_size,
        )


@dataclass(frozen=True, kw_only=True)
class DpSgdSpec:
    """Sample-level DP-SGD on a client.

    Attributes:
        noise_multiplier: Noise std over ``max_grad_norm`` (``z``), >= 0. Zero means
            clipping without noise: no privacy (epsilon is reported as ``inf``).
        max_grad_norm: Per-sample gradient clipping bound ``C``, > 0.
        delta: Target delta for reporting epsilon, in (0, 1).
        accountant: Opacus accountant, ``"rdp"`` or ``"prv"``.

    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float
    accountant: str

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0.0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {self.noise_multiplier!r}")
        if not (self.max_grad_norm > 0.0 and math.isfinite(self.max_grad_norm)):
            raise ValueError(f"max_grad_norm must be finite and > 0; got {self.max_grad_norm!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1); got {self.delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {self.accountant!r}")

    @classmethod
    def from_config(cls, dp: DpSection, *, noise_multiplier: float | None = None) -> DpSgdSpec:
        """Build the spec from a ``[dp]`` section with ``mode = "dpsgd"``.

        Args:
            dp: The section.
            noise_multiplier: The calibrated multiplier (see
                :func:`noise_multiplier_for_epsilon`); required when the section sets
                ``target_epsilon``, forbidden when it sets ``noise_multiplier``.

        Raises:
            ValueError: If the section is not DP-SGD or the multiplier is missing or
                given twice.

        """
        if dp.mode != "dpsgd":
            raise ValueError(f"dp.mode is {dp.mode!r}, not 'dpsgd'")
        if (dp.noise_multiplier is None) == (noise_multiplier is None):
            raise ValueError("give the noise multiplier exactly once: in the section or calibrated")
        chosen = dp.noise_multiplier if dp.noise_multiplier is not None else noise_multiplier
        assert chosen is not None
        return cls(
            noise_multiplier=chosen,
            max_grad_norm=dp.max_grad_norm,
            delta=dp.delta,
            accountant=dp.resolved_accountant,
        )


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What one round of local training produced.

    Attributes:
        update: Local weights after training minus the global weights received;
            ``num_examples`` and ``weight`` are the number of local examples.
        loss: Mean training loss over every example seen this round (NaN if none
            were seen). Not privatised.
        steps: Optimizer steps taken this round.
        history: The client's whole accountant history after this round (empty
            without DP).
        epsilon: Cumulative epsilon at the spec's delta over ``history``. Without DP
            it is 0.0, meaning "no DP accounting", not "private"; with noise
            multiplier 0 it is ``inf``.
        noise_multiplier: Noise multiplier used (0.0 without DP).
        sample_rate: Poisson sample rate used (0.0 without DP).

    """

    update: Update
    loss: float
    steps: int
    history: tuple[PrivacyStep, ...]
    epsilon: float
    noise_multiplier: float
    sample_rate: float

    @property
    def private(self) -> bool:
        """Whether this round ran DP-SGD (and so has an accountant history)."""
        return bool(self.history)


def poisson_plan(num_examples: int, optim: OptimSpec) -> tuple[float, int]:
    """Return the DP-SGD ``(sample_rate, steps_per_round)`` a trainer will use.

    The sample rate is ``batch_size / num_examples``; each local epoch is
    ``num_examples // batch_size`` Poisson steps (Opacus' ``int(1 / sample_rate)``,
    computed without float rounding). Plan a budget with exactly these numbers:
    ``noise_multiplier_for_epsilon(sample_rate=q, steps=rounds * steps_per_round, ...)``.

    Raises:
        ValueError: If ``batch_size`` is not in ``[1, num_examples]``.

    Examples:
        >>> spec = OptimSpec(optimizer="sgd", lr=0.1, momentum=0.0, local_epochs=2, batch_size=32)
        >>> poisson_plan(144, spec)
        (0.2222222222222222, 8)

    """
    return _poisson_sample_rate(num_examples, optim.batch_size), optim.local_epochs * (
        num_examples // optim.batch_size
    )


def _poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"DP-SGD needs 1 <= batch_size <= number of examples; got batch_size={batch_size}, "
            f"num_examples={num_examples}"
        )
    return batch_size / num_examples


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
        self._x, self._y = _data_tensors(x, y, device)
        self._optim = optim
        self._device = device
        self._seed = seed
        self._streams = RoundStreams(device)
        model.to(device)
        self._dp = None if dp is None else _dp_parts(dp, num_examples=len(self._y), optim=optim)
        self._model = model if dp is None else _wrap_for_per_sample_gradients(model)
        self._optimizer = _build_optimizer(self._model, optim, self._dp, self._streams)

    @property
    def model(self) -> nn.Module:
        """The module trained every round (Opacus' ``GradSampleModule`` under DP)."""
        return self._model

    @property
    def num_examples(self) -> int:
        """Number of local training examples ``n``."""
        return len(self._y)

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
        history: Sequence[PrivacyStep] = (),
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

    def epsilon(self, history: Sequence[PrivacyStep]) -> float:
        """Return the epsilon at this trainer's delta of ``history``, with its accountant.

        Without DP the only valid history is the empty one, reported as 0.0.

        Raises:
            ValueError: If a non-empty history is given to a trainer without DP.

        """
        if self._dp is None:
            if history:
                raise ValueError("a trainer without DP has no delta or accountant to evaluate a history")
            return 0.0
        return epsilon_from_history(history, delta=self._dp.spec.delta, accountant=self._dp.spec.accountant)

    def _load_global_weights(self, global_weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        set_weights(self._model, global_weights)
        return get_weights(self._model)

    def _start_round(self, prior: tuple[PrivacyStep, ...]) -> None:
        self._optimizer.zero_grad(set_to_none=True)
        self._optimizer.state.clear()
        if self._dp is not None:
            self._dp.accountant.history = [step.as_opacus() for step in prior]
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
        return epoch_batches(self._streams, len(self._y), self._optim.batch_size, rate)

    def _train_step(self, indices: torch.Tensor) -> float:
        """Take one optimizer step on the given examples; return their summed loss."""
        return train_step(self._model, self._optimizer, self._x, self._y, indices)

    def _history_after(self, prior: tuple[PrivacyStep, ...], steps: int) -> tuple[PrivacyStep, ...]:
        if self._dp is None:
            return ()
        after = history_from_opacus(self._dp.accountant.history)
        if _total_steps(after) != _total_steps(prior) + steps:
            raise RuntimeError("accountant history does not match the steps taken")
        return after

    def _delta_update(self, received: list[np.ndarray]) -> Update:
        local = get_weights(self._model)
        delta = tuple(
            np.subtract(new, old, dtype=np.float32) for new, old in zip(local, received, strict=True)
        )
        n = len(self._y)
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


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return torch.device("cpu") if first is None else first.device


def start_streams(streams: RoundStreams, *, seed: int, round_seed: int | None, secret: bytes | None) -> None:
    """Start a round's streams from ``round_seed`` (with the client ``seed``) or from ``secret``.

    Raises:
        ValueError: If neither or both are given, or ``round_seed`` is negative.
    """
    if (round_seed is None) == (secret is None):
        raise ValueError("give exactly one of round_seed (simulation) and secret (deployment)")
    if secret is not None:
        streams.start_secret(secret)
        return
    assert round_seed is not None
    if round_seed < 0:
        raise ValueError(f"round_seed must be >= 0; got {round_seed}")
    streams.start_seeded(seed=seed, round_seed=round_seed)


def epoch_batches(
    streams: RoundStreams, num_examples: int, batch_size: int, sample_rate: float | None
) -> Iterable[torch.Tensor]:
    """One epoch's batches: ``n // batch_size`` Poisson batches under DP, else shuffled minibatches."""
    if sample_rate is None:
        return streams.shuffled_batches(num_examples, batch_size)
    return streams.poisson_batches(num_examples, sample_rate=sample_rate, steps=num_examples // batch_size)


def _dp_parts(spec: DpSgdSpec, *, num_examples: int, optim: OptimSpec) -> _DpParts:
    return _DpParts(
        spec=spec,
        sample_rate=_poisson_sample_rate(num_examples, optim.batch_size),
        accountant=create_accountant(mechanism=spec.accountant),
    )


def _wrap_for_per_sample_gradients(model: nn.Module) -> nn.Module:
    ModuleValidator.validate(model, strict=True)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    wrapped.forbid_grad_accumulation()  # a missed zero_grad would silently mix two Poisson batches
    return cast(nn.Module, wrapped)


class StreamDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus' ``DPOptimizer`` drawing its Gaussian noise from the trainer's round streams.

    In a seeded round Opacus draws the noise with the streams' torch generator, exactly as
    ``DPOptimizer`` does. In a secret round each step's noise is
    ``streams.secret_noise.normal(0, z * C)`` (ChaCha20, floating-point mitigation), and
    ``secure_mode`` is set, so no draw comes from a generator anyone else can seed.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, streams: RoundStreams, **kwargs: object) -> None:
        super().__init__(optimizer, generator=streams.noise_generator, **kwargs)
        self._streams = streams

    def add_noise(self) -> None:
        """Add the step's noise to the clipped, summed gradients (Opacus' step 2)."""
        source = self._streams.secret_noise
        self.secure_mode = source is not None
        if source is None:
            super().add_noise()
            return
        std = float(self.noise_multiplier * self.max_grad_norm)
        for p in self.params:
            summed = p.summed_grad
            noise = torch.from_numpy(source.normal(0.0, std, size=tuple(summed.shape)))
            p.grad = (summed + noise.to(dtype=summed.dtype, device=summed.device)).view_as(p)


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


def _total_steps(history: Sequence[PrivacyStep]) -> int:
    return sum(step.steps for step in history)
