"""Plots of a run, drawn from its ``metrics.jsonl`` and titled from its ``config.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedlab.core.metrics import read_metrics
from fedlab.training.recorder import CONFIG_FILE, METRICS_FILE

# The first series is drawn last, wide and hollow, so a second series equal to it stays visible.
_STYLES = ({"marker": "o", "linewidth": 2.5, "markersize": 8, "markerfacecolor": "none", "zorder": 3},
           {"marker": ".", "linewidth": 1.2, "linestyle": "--", "zorder": 2})  # fmt: skip


def _line_plot(
    path: Path, xs: list[int], series: dict[str, list[float | None]], ylabel: str, title: str
) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, ys), style in zip(series.items(), _STYLES, strict=False):
        ax.plot(xs, [float("nan") if y is None else y for y in ys], label=label, **style)  # type: ignore[arg-type]
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_titles(config: dict[str, Any]) -> tuple[str, str]:
    """The accuracy and epsilon plot titles of a run with ``config`` (its ``config.json``).

    Example:
        >>> plot_titles({"run": {"name": "digits-dp"}, "dp": {"mode": "dpsgd", "delta": 1e-5,
        ...                                                   "target_epsilon": 8.0}})
        ('digits-dp: central test accuracy', 'digits-dp: cumulative client epsilon (delta 1e-05, budget 8)')
        >>> plot_titles({"run": {"name": "plain"}, "dp": {"mode": "none"}})[1]
        'plain: no differential privacy in this run (no epsilon to plot)'
    """
    name = str(config.get("run", {}).get("name", "run"))
    dp = config.get("dp", {})
    if dp.get("mode", "none") == "none":
        return (
            f"{name}: central test accuracy",
            f"{name}: no differential privacy in this run (no epsilon to plot)",
        )
    budget = dp.get("target_epsilon")
    spent = f"delta {dp.get('delta'):g}" + (f", budget {budget:g}" if isinstance(budget, int | float) else "")
    return f"{name}: central test accuracy", f"{name}: cumulative client epsilon ({spent})"


def write_run_plots(run_dir: Path) -> list[Path]:
    """Write ``plots/accuracy.png`` and ``plots/epsilon.png`` for a run directory.

    Returns:
        The paths written (none if the run has no metrics yet).

    Example:
        >>> import tempfile
        >>> write_run_plots(Path(tempfile.mkdtemp()))
        []
    """
    rows = read_metrics(run_dir / METRICS_FILE)
    if not rows:
        return []
    config_path = run_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    accuracy_title, epsilon_title = plot_titles(config)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    rounds = [int(r["round"]) for r in rows]
    accuracy, epsilon = out / "accuracy.png", out / "epsilon.png"
    _line_plot(accuracy, rounds, {"test accuracy": [r["accuracy"] for r in rows]}, "accuracy", accuracy_title)
    _line_plot(
        epsilon,
        rounds,
        {"max over clients": [r["epsilon_max"] for r in rows], "mean": [r["epsilon_mean"] for r in rows]},
        "epsilon",
        epsilon_title,
    )
    return [accuracy, epsilon]
