"""ClientApp entry point for ``flwr run .`` (see ``[tool.flwr.app]`` in pyproject.toml).

In simulation each virtual client is partition ``partition-id`` of the configured data.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedlab.core.config import RunConfig
from fedlab.flower.app_config import config_from_run_config
from fedlab.flower.client import PartitionDataSource, make_client_app

APP_ROOT = Path(__file__).resolve().parents[1]


def config_from_context(context: Context) -> RunConfig:
    """Read the fedlab config named by the Flower run config."""
    return config_from_run_config(context.run_config, app_root=APP_ROOT)


app = make_client_app(PartitionDataSource(config_from_context))
