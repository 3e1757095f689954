"""``fedlab audit``: the claimed epsilon beside an empirical lower bound, with its evidence on disk.

Writes, in the output directory: ``audit.json`` (the report), ``audit.md`` (a table),
``plots/audit_scores.png`` (canary scores, included vs not) and ``plots/audit_bound.png``
(lower bound and estimate against the claim), and one run directory per seed (``seed-S``).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import numpy as np
import typer
from rich.console import Console

from fedlab.cli.common import fail, guarded
from fedlab.core.config import load_config
from fedlab.core.errors import ConfigError
from fedlab.core.metrics import RoundObserver, SilentObserver

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_audit(report: Any, out: Path) -> list[Path]:
    """Write ``audit.json``, ``audit.md`` and the two plots for an :class:`~fedlab.sim.audit.AuditReport`."""
    summary = report.to_dict()
    (out / "audit.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "audit.md").write_text(audit_markdown(summary), encoding="utf-8")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    scores = np.concatenate([r.scores for r in report.runs])
    included = np.concatenate([r.included for r in report.runs])
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = [float(b) for b in np.histogram_bin_edges(scores, bins=40)]
    ax.hist(scores[included], bins=bins, alpha=0.6, label="included canaries")
    ax.hist(scores[~included], bins=bins, alpha=0.6, label="canaries not included")
    ax.set_xlabel("canary score (higher: more likely included)")
    ax.set_ylabel("canaries")
    ax.set_title(f"{summary['mode']} / {summary['threat']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "audit_scores.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    names = ["claimed", "lower bound", "estimate"]
    values = [summary["claimed_epsilon"], summary["epsilon_lower_bound"], summary["epsilon_estimate"]]
    ax.bar(names, [0.0 if v is None or not math.isfinite(v) else v for v in values], color=["C0", "C3", "C2"])
    ax.set_ylabel("epsilon")
    ax.set_title(f"confidence {summary['one_run']['confidence']:g}, delta {summary['delta']:g}")
    fig.tight_layout()
    fig.savefig(plots / "audit_bound.png", dpi=100)
    plt.close(fig)
    return [out / "audit.json", out / "audit.md", plots / "audit_scores.png", plots / "audit_bound.png"]


def audit_markdown(summary: dict[str, Any]) -> str:
    """The report as a Markdown table.

    >>> text = audit_markdown({"mode": "dpsgd", "threat": "updates", "adjacency": "a", "delta": 1e-5,
    ...     "claimed_epsilon": 4.0, "epsilon_lower_bound": 1.5, "bound_over_claimed": 0.375,
    ...     "bound": "one-run f-DP", "tradeoff_rejected": False, "guesses": 4, "correct": 4,
    ...     "epsilon_estimate": 3.4, "threshold_bound": {"epsilon_lower_bound": 1.0},
    ...     "one_run": {"epsilon_lower_bound": 1.2, "num_canaries": 10, "confidence": 0.95}})
    >>> "| 4.000 | 1.500 | 0.38 | one-run f-DP | no | 1.200 |" in text
    True
    """
    run = summary["one_run"]
    rejected = {None: "-", True: "**yes**", False: "no"}[summary["tradeoff_rejected"]]
    rows = [
        "| mode | threat | adjacency | delta | claimed epsilon | lower bound | bound / claimed | bound "
        "| claimed trade-off rejected | one-run (eps, delta) bound | estimate | threshold bound | canaries "
        "| guesses | correct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {summary['mode']} | {summary['threat']} | {summary['adjacency']} | {summary['delta']:g} "
        f"| {summary['claimed_epsilon']:.3f} | {summary['epsilon_lower_bound']:.3f} "
        f"| {_number(summary['bound_over_claimed'], 2)} | {summary['bound']} | {rejected} "
        f"| {run['epsilon_lower_bound']:.3f} | {_number(summary['epsilon_estimate'], 3)} "
        f"| {summary['threshold_bound']['epsilon_lower_bound']:.3f} | {run['num_canaries']} "
        f"| {summary['guesses']} | {summary['correct']} |",
    ]
    note = (
        f"\nAll at confidence {run['confidence']:g}. Lower bound: one-run f-DP (Mahloujifar, Melis, "
        "Chaudhuri 2025) against the run's own Gaussian releases with their noise scaled (DP-SGD, central "
        "DP), "
        "else one-run (epsilon, delta) (Steinke, Nasr, Jagielski 2023); 'claimed trade-off rejected': the "
        "canaries rule out the privacy the run's noise gives, for any mechanism. Estimate: Andrew et al. "
        "2024 (Gaussian fit, not a bound); threshold bound: Clopper-Pearson, treating a run's canaries as "
        "independent.\n"
    )
    return "\n".join(rows) + "\n" + note


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def audit(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.toml", help="A fedlab TOML config with DP.")],
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
    ] = None,
    canaries: Annotated[int, typer.Option("--canaries", help="Canaries per run.")] = 1000,
    threat: Annotated[
        str, typer.Option("--threat", help="final-model, updates or server-knows-config.")
    ] = "updates",
    confidence: Annotated[float, typer.Option("--confidence", help="Confidence of the bound.")] = 0.95,
    seeds: Annotated[
        int, typer.Option("--seeds", help="Runs (seeds run.seed, +1, ...), canaries pooled.")
    ] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: under runs/).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Run the federation with canaries; print the claimed epsilon and a measured lower bound."""
    from fedlab.cli.progress import round_progress
    from fedlab.sim.audit import AuditSettings, run_audit

    config = guarded(lambda: load_config(config_path, overrides or []))
    settings = AuditSettings(threat=threat, canaries=canaries, confidence=confidence, seeds=seeds)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    directory = out or Path("runs") / f"audit-{config.run.name}-{stamp}"
    if directory.exists() and any(directory.iterdir()):
        fail(f"--out {directory}: not empty; choose a new directory")
    console = Console()

    def observer(seed: int) -> RoundObserver:
        if quiet:
            return SilentObserver()
        console.print(f"audit run {seed + 1}/{seeds}", highlight=False)
        return round_progress(console)

    try:
        report = run_audit(config, settings, directory, observer)
    except ConfigError as exc:
        fail(str(exc))
    write_audit(report, directory)
    summary = report.to_dict()
    console.print(
        f"{summary['mode']} / {summary['threat']} ({summary['adjacency']}, delta {summary['delta']:g}): "
        f"claimed epsilon {summary['claimed_epsilon']:.3f}; lower bound {summary['epsilon_lower_bound']:.3f} "
        f"at confidence {confidence:g}, {summary['bound']} ({summary['correct']} of {summary['guesses']} "
        f"guesses right, {summary['one_run']['num_canaries']} canaries); "
        f"estimate {_number(summary['epsilon_estimate'], 3)}",
        highlight=False,
    )
    if summary["epsilon_lower_bound"] > summary["claimed_epsilon"]:
        console.print("[bold red]the measured lower bound exceeds the claimed epsilon[/]")
    elif summary["tradeoff_rejected"]:
        console.print("[bold red]the canaries rule out the privacy that the run's noise would give[/]")
    console.print(f"audit written to {directory}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``fedlab audit`` to the ``fedlab`` app."""
    app.command("audit")(audit)
