"""What every ``fedlab`` command shares: one-line errors with their exit codes, and fresh run directories."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError, FedlabError

T = TypeVar("T")

USER_ERROR = 2
"""Exit code of a user error: bad config, data, file or arguments, found before anything ran."""

RUNTIME_ERROR = 3
"""Exit code of a refusal or failure at run time (a refused connection, a run that did not complete)."""


def fail(message: str, code: int = USER_ERROR) -> NoReturn:
    """Print ``error: MESSAGE`` on one line of stderr (taken literally, no markup) and exit with ``code``."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``; a FedlabError becomes one line on stderr and exit code 2."""
    try:
        return action()
    except FedlabError as exc:
        fail(str(exc))


def fresh_run_dir(config: RunConfig, out: Path | None) -> Path:
    """The run directory: ``out`` (which must not hold a run) or a new one under ``runs/``.

    Raises:
        ConfigError: If ``out`` already holds a run (a ``ledger.sqlite``).
    """
    if out is not None:
        if (out / "ledger.sqlite").exists():
            raise ConfigError(f"--out {out}: already holds a run (ledger.sqlite); choose a new directory")
        return out
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{config.run.name}-{stamp}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def refuse_out_with_resume(resume: Path | None, out: Path | None) -> None:
    """``--resume`` goes on in the run's own directory: with ``--out`` too, one line and exit code 2."""
    if resume is not None and out is not None:
        fail("--resume and --out: a resumed run stays in its own directory")


def fail_if_run_failed(summary: Mapping[str, Any], where: str) -> None:
    """If the run's summary says it failed, ``error: the run failed: CAUSE (WHERE)`` and exit code 3."""
    from fedlab.training.recorder import FAILED

    because = str(summary.get("stopped_because", ""))
    if because.startswith(FAILED):
        fail(f"the run failed: {because[len(FAILED) :]} ({where})", RUNTIME_ERROR)
