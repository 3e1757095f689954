"""``fedlab sweep``: one simulation per target epsilon, a table and a privacy/utility plot."""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError

Simulate = Callable[[RunConfig, Path], dict[str, Any]]


def parse_epsilons(text: str) -> list[float]:
    """Parse ``1,2,4,8,inf`` into floats; each must be > 0 (``inf`` = no DP).

    >>> parse_epsilons("1, 2.5,inf")
    [1.0, 2.5, inf]
    """
    values: list[float] = []
    for item in text.split(","):
        try:
            value = float(item.strip())
        except ValueError:
            raise ConfigError(f"--epsilons: not a number: {item.strip()!r}") from None
        if not value > 0.0:
            raise ConfigError(f"--epsilons: each epsilon must be > 0 or inf; got {item.strip()!r}")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons: give at least one value")
    return values


def config_for(base: RunConfig, epsilon: float, seed: int) -> RunConfig:
    """The base config at one target epsilon (``inf``: no DP) and one seed."""
    run = dataclasses.replace(base.run, seed=seed, name=f"{base.run.name}-eps{epsilon:g}-seed{seed}")
    if math.isinf(epsilon):
        dp = dataclasses.replace(base.dp, mode="none")
    else:
        dp = dataclasses.replace(base.dp, target_epsilon=epsilon, noise_multiplier=None)
    return base.replace(run=run, dp=dp)


@dataclass(frozen=True)
class SweepRow:
    """One target epsilon's results over seeds."""

    epsilon: float
    accuracy_mean: float
    accuracy_std: float
    seeds: int
    rounds: float
    noise_multiplier: float
    epsilon_spent: float | None

    def as_dict(self) -> dict[str, Any]:
        """The row for CSV/Markdown (inf written as ``inf``)."""
        return {
            "epsilon": "inf" if math.isinf(self.epsilon) else f"{self.epsilon:g}",
            "accuracy_mean": f"{self.accuracy_mean:.4f}",
            "accuracy_std": f"{self.accuracy_std:.4f}",
            "seeds": self.seeds,
            "rounds": f"{self.rounds:g}",
            "noise_multiplier": f"{self.noise_multiplier:.4g}",
            "epsilon_spent": "-" if self.epsilon_spent is None else f"{self.epsilon_spent:.4g}",
        }


def summarize(epsilon: float, summaries: Sequence[dict[str, Any]]) -> SweepRow:
    """Aggregate the runs of one epsilon."""
    accuracies = [float(s["accuracy"]) for s in summaries]
    spent = [s["epsilon_max"] for s in summaries if s.get("epsilon_max") is not None]
    return SweepRow(
        epsilon=epsilon,
        accuracy_mean=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        seeds=len(summaries),
        rounds=float(np.mean([s["rounds_completed"] for s in summaries])),
        noise_multiplier=float(np.mean([s.get("noise_multiplier", 0.0) for s in summaries])),
        epsilon_spent=max(spent) if spent else None,
    )


def write_table(rows: Sequence[SweepRow], out: Path) -> tuple[Path, Path]:
    """Write ``sweep.csv`` and ``sweep.md``."""
    dicts = [r.as_dict() for r in rows]
    columns = list(dicts[0])
    csv_path, md_path = out / "sweep.csv", out / "sweep.md"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(dicts)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(d[c]) for c in columns) + " |" for d in dicts]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return csv_path, md_path


def write_plot(rows: Sequence[SweepRow], out: Path) -> Path:
    """Write ``sweep.png``: accuracy against epsilon, the non-private run as a line."""
    finite = [r for r in rows if math.isfinite(r.epsilon)]
    fig, ax = plt.subplots(figsize=(6, 4))
    if finite:
        ax.errorbar(
            [r.epsilon for r in finite],
            [r.accuracy_mean for r in finite],
            yerr=[r.accuracy_std for r in finite],
            marker="o",
            capsize=3,
            label="DP",
        )
        ax.set_xscale("log")
        ax.set_xticks([r.epsilon for r in finite], [f"{r.epsilon:g}" for r in finite])
        ax.minorticks_off()
    for r in rows:
        if math.isinf(r.epsilon):
            ax.axhline(r.accuracy_mean, color="grey", linestyle="--", label="no DP (epsilon = inf)")
            if r.accuracy_std > 0:
                low, high = r.accuracy_mean - r.accuracy_std, r.accuracy_mean + r.accuracy_std
                ax.axhspan(low, high, color="grey", alpha=0.15, label="no DP, mean +/- std over seeds")
    ax.set_xlabel("target epsilon")
    ax.set_ylabel("test accuracy")
    ax.set_title("Privacy / utility")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_sweep(
    base: RunConfig, epsilons: Sequence[float], seeds: int, out: Path, simulate: Simulate
) -> list[SweepRow]:
    """Run every (epsilon, seed) and write the table and plot into ``out``."""
    if not base.dp.enabled and any(math.isfinite(e) for e in epsilons):
        raise ConfigError("dp.mode: a sweep over finite epsilons needs dp.mode = 'dpsgd' or 'central'")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for epsilon in epsilons:
        summaries = [
            simulate(config_for(base, epsilon, base.run.seed + i), out / f"eps-{epsilon:g}" / f"seed-{i}")
            for i in range(seeds)
        ]
        rows.append(summarize(epsilon, summaries))
    write_table(rows, out)
    write_plot(rows, out)
    return rows
