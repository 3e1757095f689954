"""Helpers shared by the training tests (a uniquely named module, importable by basename)."""

from __future__ import annotations

import dp_accounting
import numpy as np
from dp_accounting import rdp
from opacus.accountants import RDPAccountant

from fedlab.training import DpSgdSpec, OptimSpec

# Opacus' hooks always trigger this harmless torch warning on the first layer.
BACKWARD_HOOK_WARNING = "ignore:Full backward hook is firing:UserWarning"


def blobs(n: int, *, features: int = 10, classes: int = 3, spread: float = 0.5, seed: int = 0):
    """Well-separated Gaussian blobs: a linearly separable classification problem."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(classes, features))
    y = rng.integers(0, classes, size=n).astype(np.int64)
    x = (centres[y] + rng.normal(scale=spread, size=(n, features))).astype(np.float32)
    return x, y


def sgd(*, lr: float = 0.1, batch_size: int = 16, local_epochs: int = 1, momentum: float = 0.0) -> OptimSpec:
    return OptimSpec(
        optimizer="sgd", lr=lr, momentum=momentum, local_epochs=local_epochs, batch_size=batch_size
    )


def dpsgd(*, z: float = 1.1, clip: float = 1.0, accountant: str = "rdp") -> DpSgdSpec:
    return DpSgdSpec(noise_multiplier=z, max_grad_norm=clip, delta=1e-5, accountant=accountant)


def dp_accounting_rdp_epsilon(history, delta):
    """The same composition computed independently by Google's dp_accounting."""
    accountant = rdp.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
    for s in history:
        sampled = dp_accounting.PoissonSampledDpEvent(
            s.sample_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier)
        )
        accountant.compose(dp_accounting.SelfComposedDpEvent(sampled, s.steps))
    return accountant.get_epsilon(delta)
