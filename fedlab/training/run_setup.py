"""What every backend builds before its first round: the data, the initial model and the run recorder.

The Flower ServerApp (:mod:`fedlab.flower.server`) and the inline simulator
(:mod:`fedlab.sim.inline`) both start here, so a run's data, initial model and run directory do not
depend on the backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedlab.core.config import RunConfig
from fedlab.core.metrics import RoundObserver
from fedlab.data.federated import build_federated_data
from fedlab.data.types import FederatedData
from fedlab.training.models import get_weights, model_for
from fedlab.training.recorder import RunRecorder
from fedlab.training.tensorboard_log import TensorBoardObserver


@dataclass(frozen=True)
class RunSetup:
    """A run ready for its first round.

    Attributes:
        data: The federated data (clients' partitions and the central test set).
        model: A model of the run's architecture, used by the recorder for central evaluation.
        recorder: Keeps the run directory (ledger, metrics, model, summary).
        initial_weights: The initial global model, seeded by the run seed.

    """

    data: FederatedData
    model: torch.nn.Module
    recorder: RunRecorder
    initial_weights: list[np.ndarray]


def set_up_run(
    config: RunConfig,
    *,
    run_dir: Path,
    observer: RoundObserver,
    data: FederatedData | None = None,
    resume: bool = False,
) -> RunSetup:
    """Build the run's data (unless given), its initial model and its recorder in ``run_dir``.

    Args:
        config: The validated run configuration.
        run_dir: A fresh run directory (created).
        observer: Receives per-round progress (with ``run.tensorboard``, through a
            :class:`~fedlab.training.tensorboard_log.TensorBoardObserver`).
        data: The run's data if the caller already built it from ``config.data`` and
            ``config.run.seed``; built here otherwise.
        resume: Reopen the run in ``run_dir`` after its last committed round (the recorder's
            :attr:`~fedlab.training.recorder.RunRecorder.resumed` says where it goes on).

    Raises:
        ConfigError: With ``resume``, if ``config`` is not the run's.
        LedgerError: With ``resume``, if the run cannot go on (no checkpoint, inconsistent ledger).

    Example:
        >>> import tempfile
        >>> from fedlab.core.config import config_from_dict
        >>> from fedlab.core.metrics import SilentObserver
        >>> raw = {"data": {"dataset": "synthetic", "num_clients": 3}, "model": {"kind": "mlp"}}
        >>> config = config_from_dict(raw)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     setup = set_up_run(config, run_dir=Path(tmp) / "run", observer=SilentObserver())
        ...     (setup.data.num_clients, len(setup.initial_weights) > 0)
        (3, True)

    """
    if data is None:
        data = build_federated_data(config.data, seed=config.run.seed)
    model = model_for(config, feature_shape=data.feature_shape, num_classes=data.num_classes)
    if config.run.tensorboard:
        observer = TensorBoardObserver(run_dir, observer)
    recorder = RunRecorder(
        run_dir=run_dir, config=config, model=model, test_set=data.test, observer=observer, resume=resume
    )
    return RunSetup(data, model, recorder, get_weights(model))
