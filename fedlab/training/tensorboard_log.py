"""``run.tensorboard = true``: every round's metrics and epsilon also go to TensorBoard event files.

:class:`TensorBoardObserver` forwards to another observer and writes each released round's
central accuracy and loss, the clients' largest and mean cumulative epsilon (finite ones only: a
run without DP has none) and the round's numeric extras as scalars at step = round, into
``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR/tensorboard``). It needs the optional
``tensorboard`` package (``pip install "fedlab-privacy[tensorboard]"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlab.core.errors import ConfigError
from fedlab.core.metrics import RoundMetrics, RoundObserver

TENSORBOARD_DIR = "tensorboard"


class TensorBoardObserver:
    """Writes each round to TensorBoard event files in ``run_dir/tensorboard``, then tells ``inner``.

    Args:
        run_dir: The run directory.
        inner: The observer that also receives every call (a progress bar, ...).

    Raises:
        ConfigError: If the ``tensorboard`` package is not installed.

    Example:
        >>> import tempfile
        >>> from fedlab.core.metrics import SilentObserver
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> board = TensorBoardObserver(run_dir, SilentObserver())
        >>> board.on_start(1)
        >>> board.on_round(RoundMetrics(round=1, accuracy=0.9, loss=0.3, train_loss=0.4,
        ...                             epsilon_max=1.5, epsilon_mean=1.2, clients=10, seconds=0.1))
        >>> board.on_finish({})
        >>> any((run_dir / TENSORBOARD_DIR).iterdir())
        True
    """

    def __init__(self, run_dir: Path, inner: RoundObserver) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                'run.tensorboard: needs the tensorboard package (pip install "fedlab-privacy[tensorboard]")'
            ) from None
        self._writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self._inner = inner

    def on_start(self, total_rounds: int) -> None:
        """Pass the start on."""
        self._inner.on_start(total_rounds)

    def on_round(self, metrics: RoundMetrics) -> None:
        """Write the round's scalars (flushed), then pass it on."""
        values: dict[str, Any] = {
            "accuracy": metrics.accuracy,
            "loss": metrics.loss,
            "epsilon/max": metrics.epsilon_max,
            "epsilon/mean": metrics.epsilon_mean,
            **{f"extra/{k}": v for k, v in metrics.extra.items()},
        }
        for tag, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self._writer.add_scalar(tag, float(value), global_step=metrics.round)
        self._writer.flush()
        self._inner.on_round(metrics)

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Close the event file, then pass the summary on."""
        self._writer.close()
        self._inner.on_finish(summary)
