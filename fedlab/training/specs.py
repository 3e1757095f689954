"""What one client's local training is asked to do, and what it returns (no torch here).

:class:`OptimSpec` (optimizer and schedule), :class:`DpSgdSpec` (sample-level DP-SGD),
:func:`poisson_plan` (the sample rate and step count a DP-SGD round takes) and
:class:`TrainResult` (a round's delta and privacy spend), shared by every trainer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedlab.core.config import TrainSection
from fedlab.core.update import Update
from fedlab.privacy.events import GaussianEvent
from fedlab.training.accounting import ACCOUNTANTS

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

    Example:
        >>> OptimSpec(optimizer="sgd", lr=0.1, momentum=0.9, local_epochs=1, batch_size=32).lr
        0.1
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

    Example:
        >>> DpSgdSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp").max_grad_norm
        1.0
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

    Example:
        >>> import numpy as np
        >>> from fedlab.core.update import Update
        >>> result = TrainResult(update=Update((np.zeros(2),), 8), loss=0.7, steps=1, history=(),
        ...                      epsilon=0.0, noise_multiplier=0.0, sample_rate=0.0)
        >>> result.update.num_examples, result.epsilon
        (8, 0.0)
    """

    update: Update
    loss: float
    steps: int
    history: tuple[GaussianEvent, ...]
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
    return poisson_sample_rate(num_examples, optim.batch_size), optim.local_epochs * (
        num_examples // optim.batch_size
    )


def poisson_sample_rate(num_examples: int, batch_size: int) -> float:
    """The DP-SGD Poisson sample rate ``batch_size / num_examples``.

    Raises:
        ValueError: If ``batch_size`` is not in ``[1, num_examples]``.

    >>> poisson_sample_rate(100, 25)
    0.25
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"DP-SGD needs 1 <= batch_size <= number of examples; got batch_size={batch_size}, "
            f"num_examples={num_examples}"
        )
    return batch_size / num_examples
