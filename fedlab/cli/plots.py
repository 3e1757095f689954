"""Plots of a run, drawn from its ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedlab.core.metrics import read_metrics
from fedlab.training.recorder import METRICS_FILE


def _line_plot(
    path: Path, xs: list[int], series: dict[str, list[float | None]], ylabel: str, title: str
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, ys in series.items():
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_run_plots(run_dir: Path) -> list[Path]:
    """Write ``plots/accuracy.png`` and ``plots/epsilon.png`` for a run directory.

    Returns:
        The paths written (none if the run has no metrics yet).

    """
    rows = read_metrics(run_dir / METRICS_FILE)
    if not rows:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    rounds = [int(r["round"]) for r in rows]
    accuracy, epsilon = out / "accuracy.png", out / "epsilon.png"
    _line_plot(
        accuracy,
        rounds,
        {"test accuracy": [r["accuracy"] for r in rows]},
        "accuracy",
        "Central test accuracy",
    )
    _line_plot(
        epsilon,
        rounds,
        {"max over clients": [r["epsilon_max"] for r in rows], "mean": [r["epsilon_mean"] for r in rows]},
        "epsilon",
        "Cumulative client epsilon (null = no DP)",
    )
    return [accuracy, epsilon]
