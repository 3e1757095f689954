"""Round progress fed by the server's round observer: a rich bar on a terminal, plain lines elsewhere."""

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


def _status(metrics: RoundMetrics) -> str:
    clients = metrics.clients or 0
    rate = clients / metrics.seconds if metrics.seconds > 0 else 0.0
    return (
        f"acc {metrics.accuracy:.3f}  loss {metrics.loss:.3f}  "
        f"eps max {_eps(metrics.epsilon_max)}  clients {metrics.clients}  {rate:.1f} clients/s"
    )


class PlainRoundProgress:
    """One whole line per round, no colour or cursor codes (output that is not a terminal).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> progress = PlainRoundProgress(Console(file=out))
        >>> progress.on_start(2)
        >>> progress.on_round(RoundMetrics(round=1, accuracy=0.5, loss=1.0, train_loss=0.9,
        ...                                epsilon_max=1.5, epsilon_mean=1.5, clients=3, seconds=1.0))
        >>> out.getvalue().splitlines()
        ['round 1/2  acc 0.500  loss 1.000  eps max 1.50  clients 3  3.0 clients/s']
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._total = 0

    def on_start(self, total_rounds: int) -> None:
        """Remember the number of rounds."""
        self._total = total_rounds

    def on_round(self, metrics: RoundMetrics) -> None:
        """Print the round's line."""
        line = f"round {metrics.round}/{self._total}  {_status(metrics)}"
        self._console.print(line, highlight=False, markup=False, soft_wrap=True)

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Nothing more to print."""


def round_progress(console: Console) -> RichRoundProgress | PlainRoundProgress:
    """A rich bar when ``console`` is a terminal, else :class:`PlainRoundProgress`.

    Example:
        >>> import io
        >>> type(round_progress(Console(file=io.StringIO()))).__name__
        'PlainRoundProgress'
    """
    return RichRoundProgress(console) if console.is_terminal else PlainRoundProgress(console)


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
        self._progress.update(self._task, advance=1, status=_status(metrics))

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Stop the bar."""
        self._progress.stop()
