"""``fedlab data split``: per-device data files from a config's data set, in ``fedlab client``'s format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedlab.cli.common import guarded
from fedlab.core.config import load_config

data_app = typer.Typer(no_args_is_help=True, help="Per-device data files.")


@data_app.command("split")
def data_split(
    config_path: Annotated[
        Path, typer.Argument(metavar="CONFIG.toml", help="A fedlab config: its [data] section is split.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Directory for client-<i>.csv (new or empty).")],
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help='Override a key, e.g. data.partitioner="dirichlet" (repeatable).'),
    ] = None,
) -> None:
    """Split the data set as a simulation would (IID, Dirichlet, ...) and write one CSV per client.

    Features are written as the server loads them (so scaled like its test set).

    Labels are the task's class numbers; the server's held-out test set is not written.
    """
    from fedlab.data.export import write_client_files
    from fedlab.data.federated import build_federated_data

    config = guarded(lambda: load_config(config_path, overrides or []))
    data = guarded(lambda: build_federated_data(config.data, seed=config.run.seed))
    paths = guarded(lambda: write_client_files(data, out))
    console = Console()
    shape = ",".join(str(d) for d in data.feature_shape)
    console.print(
        f"wrote {len(paths)} client files to {out} ({config.data.partitioner} split of "
        f'{config.data.dataset}); in each device\'s settings: data = "{paths[0].name}" (its own), '
        f'feature_shape = "{shape}", num_classes = {data.num_classes}',
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` commands to ``app``."""
    app.add_typer(data_app, name="data")
