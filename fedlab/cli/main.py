"""The ``fedlab`` command line.

Every user error (bad config, missing file, unreadable ledger) ends with one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from fedlab.cli.common import fail, fail_if_run_failed, fresh_run_dir, guarded, refuse_out_with_resume
from fedlab.core.config import RunConfig, load_config
from fedlab.core.errors import ConfigError
from fedlab.core.metrics import RoundObserver, SilentObserver
from fedlab.data.types import FederatedData

T = TypeVar("T")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Private federated learning.",
)
privacy_app = typer.Typer(no_args_is_help=True, help="Privacy budgets: ledgers, epsilon, calibration.")
app.add_typer(privacy_app, name="privacy")
DISTRIBUTION = "fedlab-privacy"


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"{DISTRIBUTION} {version(DISTRIBUTION)}")
        except PackageNotFoundError:
            typer.echo(f"{DISTRIBUTION} (not installed: run from source)")
        raise typer.Exit(0)


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Private federated learning."""


def _check_data(config: RunConfig) -> FederatedData:
    """Build the run's data once, refusing a batch larger than the smallest client."""
    from fedlab.data.federated import build_federated_data, check_batch_size

    data = build_federated_data(config.data, seed=config.run.seed)
    check_batch_size(data, config.train.batch_size)
    return data


def _simulate(
    config: RunConfig,
    run_dir: Path,
    observer: RoundObserver,
    data: FederatedData | None = None,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    if config.simulation.backend == "inline":
        from fedlab.sim.inline import simulate_inline

        return simulate_inline(config, run_dir, observer, data=data, resume=resume)
    from fedlab.flower.simulation import simulate_with_flower

    return simulate_with_flower(config, run_dir, observer, resume=resume)


def _resumed_config(run_dir: Path, config_path: Path | None, overrides: list[str]) -> RunConfig:
    """The config of a run to resume: CONFIG.toml if given, else the run's ``config.json``."""
    from fedlab.core.config import config_from_dict
    from fedlab.core.toml_input import apply_overrides
    from fedlab.training.run_resume import require_run_dir, stored_config

    require_run_dir(run_dir)
    if config_path is not None:
        return load_config(config_path, overrides)
    return config_from_dict(apply_overrides(stored_config(run_dir), overrides))


def _per_client(epsilons: dict[str, float | None], *, shown: int = 12) -> str:
    """The first ``shown`` clients' epsilons, and how many more there are (summary.json has all)."""
    items = list(epsilons.items())
    text = ", ".join(f"{k}: {v:.2f}" if v is not None else f"{k}: inf" for k, v in items[:shown])
    return text + (f", ... ({len(items) - shown} more in summary.json)" if len(items) > shown else "")


def _print_summary(console: Console, summary: Mapping[str, Any]) -> None:
    table = Table(title=f"fedlab run {summary['run_name']}", show_header=False)
    table.add_row("rounds", f"{summary['rounds_completed']} / {summary['rounds_planned']}")
    table.add_row("test accuracy", f"{summary['accuracy']:.4f}" if summary["accuracy"] is not None else "-")
    if summary["dp_mode"] == "none":
        table.add_row("privacy", "none (epsilon = infinity)")
    else:
        table.add_row("delta", f"{summary['delta']:g}")
        if summary.get("epsilon_user") is not None:
            table.add_row("epsilon (user level)", f"{summary['epsilon_user']:.3f}")
        else:
            spread = f"{summary['epsilon_max']:.3f} / {summary['epsilon_mean']:.3f}"
            table.add_row("epsilon max / mean", spread)
            table.add_row("epsilon per client", _per_client(summary["client_epsilons"]))
    table.add_row("seconds", f"{summary['seconds']:.1f}")
    table.add_row("results", str(summary["run_dir"]))
    console.print(table)


@app.command()
def simulate(
    config_path: Annotated[
        Path | None, typer.Argument(metavar="CONFIG.toml", help="A fedlab TOML config.", show_default=False)
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: a new one under runs/).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar (for scripts).")] = False,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="inline (fast, in-process) or flower (Ray); overrides the config."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Go on with an interrupted run after its last committed round (its config, unchanged).",
        ),
    ] = None,
) -> None:
    """Run a federation of simulated clients and write metrics, ledger, plots and summary.

    Ready configs: simulations/*.toml (for example simulations/digits-dp.toml).

    Every key: README.md, section "Configuration"; defaults in fedlab/core/config.py.
    """
    chosen = [f'simulation.backend="{backend}"'] if backend is not None else []
    settings = [*(overrides or []), *chosen]
    refuse_out_with_resume(resume, out)
    if resume is not None:
        config = guarded(lambda: _resumed_config(resume, config_path, settings))
    elif config_path is None:
        fail("missing CONFIG.toml (or --resume RUN_DIR)")
    else:
        path = config_path
        config = guarded(lambda: load_config(path, settings))
    data = guarded(lambda: _check_data(config))
    run_dir = resume if resume is not None else guarded(lambda: fresh_run_dir(config, out))
    console = Console()
    console.print(f"{'resuming' if resume else 'run directory:'} {run_dir}", highlight=False)
    from fedlab.cli.plots import write_run_plots
    from fedlab.cli.progress import round_progress

    observer: RoundObserver = SilentObserver() if quiet else round_progress(console)
    summary = guarded(lambda: _simulate(config, run_dir, observer, data, resume=resume is not None))
    write_run_plots(run_dir)
    fail_if_run_failed(summary, f"results in {run_dir}")
    if not quiet:
        _print_summary(console, summary)
    console.print(f"results written to {run_dir}", highlight=False)


@app.command()
def sweep(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.toml", help="A fedlab TOML config with DP.")],
    epsilons: Annotated[
        str, typer.Option("--epsilons", help="Target epsilons, e.g. 1,2,4,8,inf.")
    ] = "1,2,4,8,inf",
    seeds: Annotated[int, typer.Option("--seeds", help="Runs per epsilon (seeds run.seed, +1, ...).")] = 1,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output directory (default: under runs/).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
    ] = None,
) -> None:
    """One simulation per target epsilon (inf = no DP): a table (CSV, Markdown) and a plot."""
    from fedlab.cli.sweep import parse_epsilons, run_sweep

    config = guarded(lambda: load_config(config_path, overrides or []))
    targets = guarded(lambda: parse_epsilons(epsilons))
    if seeds < 1:
        fail(f"--seeds must be >= 1; got {seeds}")
    guarded(lambda: _check_data(config))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    directory = out or Path("runs") / f"sweep-{config.run.name}-{stamp}"
    console = Console()

    def simulate_one(run_config: RunConfig, run_dir: Path) -> dict[str, Any]:
        console.print(f"running {run_config.run.name} -> {run_dir}", highlight=False)
        summary = _simulate(run_config, run_dir, SilentObserver())
        from fedlab.cli.plots import write_run_plots

        write_run_plots(run_dir)
        return summary

    rows = guarded(lambda: run_sweep(config, targets, seeds, directory, simulate_one))
    table = Table(title=f"sweep {config.run.name}")
    for column in rows[0].as_dict():
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.as_dict().values()))
    console.print(table)
    console.print(f"table and plot written to {directory}", highlight=False)


def _ledger_table(console: Console, summary: Mapping[str, Any]) -> None:
    console.print(
        f"run {summary['run_name']}: {summary['rounds_committed']} rounds committed, "
        f"delta {summary['delta']:g}",
        highlight=False,
    )
    table = Table(title="client spending")
    for column in ("client", "rounds", "steps", "epsilon", "last round"):
        table.add_column(column)
    for c in summary["clients"]:
        eps = c["epsilon"]
        eps_text = (
            "inf (no DP)" if eps is None or (isinstance(eps, float) and math.isinf(eps)) else f"{eps:.4f}"
        )
        table.add_row(
            str(c["client_id"]), str(c["rounds"]), str(c["total_steps"]), eps_text, str(c["last_round"])
        )
    console.print(table)
    if summary["epsilon_max"] is not None and math.isfinite(summary["epsilon_max"]):
        console.print(
            f"federation: client epsilon max {summary['epsilon_max']:.4f}, "
            f"mean {summary['epsilon_mean']:.4f}",
            highlight=False,
        )
    for f in summary.get("federation", []):
        console.print(f"federation ({f['mechanism']}): epsilon {f['epsilon']:.4f}", highlight=False)
    if not summary.get("federation"):
        console.print("federation: no server-side release recorded", highlight=False)


@privacy_app.command("ledger")
def privacy_ledger(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="A run directory holding ledger.sqlite.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Print what each client and the federation have spent, from the run's ledger."""
    from fedlab.privacy.ledger import read_ledger_summary

    path = run_dir / "ledger.sqlite" if run_dir.is_dir() else run_dir
    summary = guarded(lambda: read_ledger_summary(path))
    if as_json:
        sys.stdout.write(json.dumps(_finite_or_null(summary)) + "\n")
    else:
        _ledger_table(Console(), summary)


def _check_dp_arguments(*, sample_rate: float, delta: float, steps: int, noise: float | None = None) -> None:
    """Refuse out-of-range DP arguments with one line naming the option."""
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"--sample-rate must be in (0, 1]; got {sample_rate!r}")
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"--delta must be in (0, 1); got {delta!r}")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1; got {steps!r}")
    if noise is not None and not noise >= 0.0:
        raise ConfigError(f"--noise-multiplier must be >= 0; got {noise!r}")


def _accountant_name(name: str) -> str:
    from fedlab.privacy.accountants import ACCOUNTANTS

    if name not in ACCOUNTANTS:
        raise ConfigError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}; got {name!r}")
    return name


def _emit(payload: Mapping[str, Any], as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(_finite_or_null(dict(payload))) + "\n")
    else:
        Console().print(text, highlight=False)


AccountantOption = Annotated[str, typer.Option("--accountant", help="pld (tight, default), prv or rdp.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]


@privacy_app.command("epsilon")
def privacy_epsilon(
    noise_multiplier: Annotated[
        float, typer.Option("--noise-multiplier", help="Gaussian noise multiplier z.")
    ],
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="Poisson sampling rate q in (0, 1].")],
    steps: Annotated[int, typer.Option("--steps", help="Number of compositions T.")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta in (0, 1).")],
    accountant: AccountantOption = "pld",
    as_json: JsonOption = False,
) -> None:
    """Epsilon of T compositions of the Poisson-subsampled Gaussian mechanism."""

    def compute() -> dict[str, Any]:
        _check_dp_arguments(sample_rate=sample_rate, delta=delta, steps=steps, noise=noise_multiplier)
        from fedlab.privacy.accountants import epsilon_of
        from fedlab.privacy.events import GaussianEvent

        event = GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        epsilon = epsilon_of([event], delta=delta, accountant=_accountant_name(accountant))
        return {
            "epsilon": epsilon,
            "delta": delta,
            "accountant": accountant,
            "noise_multiplier": noise_multiplier,
            "sample_rate": sample_rate,
            "steps": steps,
        }

    result = guarded(compute)
    _emit(result, as_json, f"epsilon = {result['epsilon']:.6g} at delta = {delta:g} ({accountant})")


@privacy_app.command("calibrate")
def privacy_calibrate(
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="The epsilon not to exceed.")],
    delta: Annotated[float, typer.Option("--delta", help="Target delta in (0, 1).")],
    sample_rate: Annotated[float, typer.Option("--sample-rate", help="Poisson sampling rate q in (0, 1].")],
    steps: Annotated[int, typer.Option("--steps", help="Number of compositions T.")],
    accountant: AccountantOption = "pld",
    as_json: JsonOption = False,
) -> None:
    """The smallest noise multiplier found whose epsilon is at most the target."""

    def compute() -> dict[str, Any]:
        _check_dp_arguments(sample_rate=sample_rate, delta=delta, steps=steps)
        if not target_epsilon > 0.0:
            raise ConfigError(f"--target-epsilon must be > 0; got {target_epsilon!r}")
        from fedlab.privacy.accountants import epsilon_of
        from fedlab.privacy.calibration import calibrate_noise_multiplier
        from fedlab.privacy.events import GaussianEvent

        name = _accountant_name(accountant)
        try:
            noise = calibrate_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=name,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        event = GaussianEvent(noise_multiplier=noise, sample_rate=sample_rate, steps=steps)
        return {
            "noise_multiplier": noise,
            "epsilon": epsilon_of([event], delta=delta, accountant=name),
            "target_epsilon": target_epsilon,
            "delta": delta,
            "accountant": name,
            "sample_rate": sample_rate,
            "steps": steps,
        }

    result = guarded(compute)
    _emit(
        result,
        as_json,
        f"noise multiplier = {result['noise_multiplier']:.6g} gives epsilon = {result['epsilon']:.6g} "
        f"<= {target_epsilon:g} at delta = {delta:g} ({accountant})",
    )


def _finite_or_null(value: Any) -> Any:
    """Replace inf/nan (a noiseless release's epsilon) by None so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def _register_deployment_commands() -> None:
    from fedlab.cli.audit import register as register_audit
    from fedlab.cli.data import register as register_data
    from fedlab.cli.deploy import register
    from fedlab.cli.pretrain import register as register_pretrain

    register(app)
    register_audit(app)
    register_data(app)
    register_pretrain(app)


_register_deployment_commands()


def main() -> None:
    """Entry point of the ``fedlab`` console script."""
    app()
