"""Per-round metrics of a run, written as one JSON object per line (``metrics.jsonl``)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class RoundMetrics:
    """What a run reports after releasing the global model of one round.

    Attributes:
        round: Round number, from 1.
        accuracy: Central test accuracy of the released global model.
        loss: Central test loss of the released global model.
        train_loss: Mean training loss reported by the round's clients.
        epsilon_max: Largest cumulative client epsilon so far (inf without DP,
            written as null).
        epsilon_mean: Mean cumulative client epsilon over clients that trained so far.
        clients: Number of client updates aggregated this round (None: withheld).
        seconds: Wall-clock seconds the round took.
        extra: Further named values (e.g. failures, noise multiplier).

    """

    round: int
    accuracy: float
    loss: float
    train_loss: float
    epsilon_max: float
    epsilon_mean: float
    clients: int | None
    seconds: float
    extra: Mapping[str, float | int | str] = field(default_factory=dict)

    def to_json(self) -> str:
        """Return the metrics as one JSON line (``extra`` merged into the top level)."""
        row: dict[str, Any] = asdict(self)
        row.update(row.pop("extra"))
        return json.dumps({k: _finite_or_none(v) for k, v in row.items()})


def _finite_or_none(value: Any) -> Any:
    """Map inf/nan (e.g. the epsilon of a non-private run) to JSON null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_metrics(path: Path, metrics: RoundMetrics) -> None:
    """Append one round's metrics to a JSON-lines file and flush it to disk."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(metrics.to_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read every complete JSON line of a metrics file (a torn last line is skipped)."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class RoundObserver(Protocol):
    """Receives progress from a running federation (e.g. a progress bar)."""

    def on_start(self, total_rounds: int) -> None:
        """Called once before the first round."""

    def on_round(self, metrics: RoundMetrics) -> None:
        """Called after each round's global model is released."""

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Called once with the run summary."""


class SilentObserver:
    """An observer that reports nothing (for scripts and deployments)."""

    def on_start(self, total_rounds: int) -> None:
        """Ignore the start."""

    def on_round(self, metrics: RoundMetrics) -> None:
        """Ignore a round."""

    def on_finish(self, summary: Mapping[str, Any]) -> None:
        """Ignore the summary."""
