"""ClientApp entry point for ``flwr run .`` (see ``[tool.flwr.app]`` in pyproject.toml).

In simulation each virtual client is partition ``partition-id`` of the configured data.
On a device (a SuperNode started by ``fedlab client``, whose node config carries
``data-path``, ``state-dir``, ``device-id`` and ``max-epsilon``) the client trains on
the device's local files within its own persistent privacy budget.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedlab.core.config import RunConfig
from fedlab.flower.app_config import config_from_run_config
from fedlab.flower.client import PartitionDataSource
from fedlab.flower.node_app import make_node_client_app

APP_ROOT = Path(__file__).resolve().parents[1]


def config_from_context(context: Context) -> RunConfig:
    """Read the fedlab config named by the Flower run config."""
    return config_from_run_config(context.run_config, app_root=APP_ROOT)


app = make_node_client_app(PartitionDataSource(config_from_context), config_from_context)
