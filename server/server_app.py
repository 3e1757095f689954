"""ServerApp entry point for ``flwr run .`` (see ``[tool.flwr.app]`` in pyproject.toml).

The run config's ``config`` key names a fedlab TOML file relative to the app
directory; ``overrides``, ``out-dir`` and ``resume`` (with ``out-dir``: go on with that run
after its last committed round) are optional. Server randomness (DP noise, the
SecAgg+ graph seeds) is secret (``os.urandom``), as a deployment needs; ``fedlab simulate``
builds its own seeded settings instead. When the run stopped, every connected node is told why,
so that a device's ``fedlab client`` exits instead of retrying.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedlab.cli.plots import write_run_plots
from fedlab.flower.app_config import config_from_run_config, resume_from_run_config, run_dir_from_run_config
from fedlab.flower.server import ServerSettings, make_server_app

APP_ROOT = Path(__file__).resolve().parents[1]


def settings_from_context(context: Context) -> ServerSettings:
    """Build the server settings from the Flower run config."""
    config = config_from_run_config(context.run_config, app_root=APP_ROOT)
    run_dir = run_dir_from_run_config(context.run_config, config)
    # A real deployment: server noise and SecAgg+ graph seeds from os.urandom, never the run seed.
    return ServerSettings(
        config=config,
        run_dir=run_dir,
        min_nodes=config.data.num_clients,
        secure_noise=True,
        resume=resume_from_run_config(context.run_config),
        announce_end=True,
    )


app = make_server_app(settings_from_context, after_run=write_run_plots)
