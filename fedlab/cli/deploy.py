"""Deployment commands (``fedlab certs``, ``fedlab server``, ``fedlab client``): being built for issue 6."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the deployment commands to the ``fedlab`` app (none yet)."""
