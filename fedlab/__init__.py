"""fedlab: privacy-preserving federated learning on Flower and Opacus.

The layers (top imports bottom, never the reverse) are described in the
project's DESIGN.md: ``core``/``data`` at the bottom, then ``privacy``/``secagg``,
then ``algorithms``/``training``, then ``flower``/``sim``, then ``cli``.

The names a Flower app of your own uses are importable from here too; each loads its
module on first use, so ``import fedlab`` alone imports neither flwr nor torch.

Example:
    >>> import fedlab
    >>> fedlab.GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=3).steps
    3
    >>> fedlab.FedlabDpFedAvg is __import__("fedlab.flower").flower.FedlabDpFedAvg
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "FedlabDpFedAvg": "fedlab.flower",
    "DpFedAvgServer": "fedlab.algorithms.dp_fedavg",
    "FlowerAccountant": "fedlab.flower",
    "DeviceBudgetMod": "fedlab.flower",
    "clipping_mod": "fedlab.flower",
    "private_training": "fedlab.flower",
    "SecAggMod": "fedlab.flower",
    "SecAggWorkflow": "fedlab.flower",
    "PrivateTraining": "fedlab.training",
    "GaussianEvent": "fedlab.privacy",
    "PldAccountant": "fedlab.privacy",
    "RdpAccountant": "fedlab.privacy",
    "PrivacyLedger": "fedlab.privacy",
    "calibrate_noise_multiplier": "fedlab.privacy",
    "epsilon_of": "fedlab.privacy",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """The public name ``name``, imported from its package on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fedlab' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    """The module's names, the lazily imported public ones included."""
    return sorted([*globals(), *_PUBLIC])
