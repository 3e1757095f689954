"""Local PyTorch training for one federated client, optionally with DP-SGD (Opacus).

Data comes in as numpy arrays (``x`` float32 ``(n, *feature_shape)``, ``y`` int64);
weights go in and out as lists of float32 arrays in ``state_dict`` order; the update
is a :class:`fedlab.core.update.Update` holding the delta. Privacy spending is a
history of :class:`~fedlab.privacy.events.GaussianEvent` records carried by the caller
(converted to Opacus' accountant history only inside :mod:`fedlab.training.accounting`).
The package also holds what runs around local training: the client runtime, the
run recorder, the SecAgg+ client, the device's privacy budget and
:class:`PrivateTraining` (DP-SGD on a model, optimizer and data loader of your own).

It imports torch, opacus, numpy and the lower fedlab layers (core, data, privacy,
secagg), keeps no module-level mutable state, and draws every random number from
an explicit generator: seeded by the caller, or keyed by a fresh secret
(:mod:`fedlab.training.randomness`).
"""

from fedlab.training.accounting import (
    OpacusAccountant,
    epsilon_from_history,
    noise_multiplier_for_epsilon,
)
from fedlab.training.device import resolve_device
from fedlab.training.local import (
    DpSgdSpec,
    LocalTrainer,
    OptimSpec,
    TrainResult,
    evaluate,
    poisson_plan,
)
from fedlab.training.models import build_model, get_weights, set_weights
from fedlab.training.private import PrivateTraining

__all__ = [
    "DpSgdSpec",
    "LocalTrainer",
    "OpacusAccountant",
    "OptimSpec",
    "PrivateTraining",
    "TrainResult",
    "build_model",
    "epsilon_from_history",
    "evaluate",
    "get_weights",
    "noise_multiplier_for_epsilon",
    "poisson_plan",
    "resolve_device",
    "set_weights",
]
