"""``fedlab pretrain``: train a config's model without DP on its corpus' public split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedlab.cli.common import fail, guarded
from fedlab.core.config import load_config


def pretrain_command(
    config_path: Annotated[
        Path, typer.Argument(metavar="CONFIG.toml", help="A fedlab config with a text data set.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (a new .npz file).")],
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Passes over the public split.")] = 1,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: section.key=value (repeatable).")
    ] = None,
) -> None:
    """Pre-train on the corpus clients the federation leaves out (no DP) and write model.npz.

    Start a private run from it with model.init = "OUT" (and train.finetune = "full" or "lora").
    """
    from fedlab.data.federated import build_federated_data
    from fedlab.data.text import TEXT_DATASETS, public_text
    from fedlab.training.pretrain import pretrain
    from fedlab.training.recorder import save_model

    config = guarded(lambda: load_config(config_path, overrides or []))
    if config.data.dataset not in TEXT_DATASETS:
        dataset = config.data.dataset
        fail(f"data.dataset: fedlab pretrain needs text or stdlib (its public split); got {dataset!r}")
    if out.suffix != ".npz" or out.exists():
        fail(f"--out: must name a new .npz file; got {out}")
    public, clients = guarded(lambda: public_text(config.data))
    test = guarded(lambda: build_federated_data(config.data, seed=config.run.seed)).test
    result = guarded(lambda: pretrain(config, public, test, epochs=epochs))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(out, result.weights)
    Console().print(
        f"pre-trained {config.model.kind} on {len(public)} examples of {clients} public clients for {epochs} "
        f"epoch(s): test accuracy {result.test_accuracy:.4f}, loss {result.test_loss:.4f}; wrote {out}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``pretrain`` command to ``app``."""
    app.command("pretrain")(pretrain_command)
