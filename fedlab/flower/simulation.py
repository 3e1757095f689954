"""Run a federation on Flower's simulation engine (Ray), the path that scales to a cluster."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.simulation import run_simulation

from fedlab.core.config import RunConfig
from fedlab.core.errors import FedlabError
from fedlab.core.metrics import RoundObserver
from fedlab.flower.client import PartitionDataSource, make_client_app
from fedlab.flower.server import ServerSettings, make_server_app
from fedlab.training.recorder import SUMMARY_FILE
from fedlab.training.run_resume import check_resumable


def client_resources(config: RunConfig) -> dict[str, float]:
    """Ray resources per virtual client: CPUs from the config, a GPU fraction only if CUDA exists."""
    gpus = config.simulation.num_gpus_per_client if torch.cuda.is_available() else 0.0
    return {"num_cpus": config.simulation.num_cpus_per_client, "num_gpus": gpus}


def _quiet_flower_logs() -> None:
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def simulate_with_flower(
    config: RunConfig, run_dir: Path, observer: RoundObserver, *, resume: bool = False
) -> dict[str, Any]:
    """Run ``config`` with ``flwr.simulation.run_simulation`` and return the summary.

    Args:
        config: The validated run configuration.
        run_dir: A fresh run directory (with ``resume``: the run's own).
        observer: Receives per-round progress.
        resume: Go on with the run in ``run_dir`` after its last committed round.

    Raises:
        FedlabError: If the run ended without writing its summary.

    """
    if resume:
        check_resumable(run_dir, config)  # one line now, not a traceback inside the ServerApp
    settings = ServerSettings(
        config=config, run_dir=run_dir, min_nodes=config.data.num_clients, observer=observer, resume=resume
    )

    def settings_for(_: Context) -> ServerSettings:
        return settings

    backend_config: dict[str, Any] = {
        "client_resources": client_resources(config),
        "init_args": {"address": config.simulation.ray_address, "include_dashboard": False}
        if config.simulation.ray_address  # join a running Ray cluster (``ray start --head``)
        else {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
    }
    _quiet_flower_logs()
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=make_server_app(settings_for),
        client_app=make_client_app(PartitionDataSource(config), seeded=True),  # simulation: reproducible
        num_supernodes=config.data.num_clients,
        backend_config=backend_config,
    )
    summary_path = run_dir / SUMMARY_FILE
    if not summary_path.is_file():
        raise FedlabError(f"the simulation ended without a summary in {run_dir} (see the log above)")
    summary: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
    return summary
