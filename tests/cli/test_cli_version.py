"""``fedlab --version`` names the installed distribution; every command's help reads without cut-off lines."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import typer

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_distribution_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedlab", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fedlab-privacy {version('fedlab-privacy')}"


def _commands(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _commands(sub, f"{path} {name}")
    return found


def test_no_command_help_breaks_a_paragraph_mid_sentence() -> None:
    # The help keeps a docstring's line breaks: a paragraph wrapped in the source shows a cut-off line.
    from fedlab.cli.main import app

    for path, command in _commands(typer.main.get_command(app), "fedlab"):
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph.strip(), f"{path}: {paragraph!r}"
