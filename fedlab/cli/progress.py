"""A rich progress bar over rounds, fed by the server's round observer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedlab.core.metrics import RoundMetrics


def _eps(value: float) -> str:
    return "-" if math.isnan(value) else ("inf" if math.isinf(value) else f"{value:.2f}")


class RichRoundProgress:
    """Shows one bar over the rounds with accuracy and epsilon of the last one."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]round"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: Any = None

    def on_start(self, total_rounds: int) -> None:
        """Start the bar."""
        self._progress.start()
        self._task = self._progress.add_task("rounds", total=total_rounds, status="starting")

    def on_round(self, metrics: RoundMetrics) -> None:
        """Advance the bar and show the round's accuracy and epsilon."""
        clients = metrics.clients or 0
        rate = clients / metrics.seconds if metrics.seconds > 0 else 0.0
        status = (
            f"acc {metrics.accuracy:.3f}  loss {metrics.loss:.3f}  "
            f"eps max {_eps(metrics.epsilon_max)}  clients {metrics.clients}  {rate:.1f} clients/s"
        )
        self._progress.update(self._task, advance=1, status=status)

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Stop the bar."""
        self._progress.stop()
