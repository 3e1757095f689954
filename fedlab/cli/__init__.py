"""The ``fedlab`` command (typer + rich): simulate, privacy tools, plots."""
