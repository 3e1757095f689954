"""Launching a real deployment: certificates, the SuperLink, SuperNodes and ``flwr run``.

This is the only package that knows the command-line flags of ``flower-superlink``,
``flower-supernode`` and ``flwr`` (they change between Flower releases; it targets
flwr 1.41, whose SuperLink serves its Fleet, Control and Runtime APIs over HTTP(S) on
one ``--host/--port``). Its modules:

- :mod:`~fedlab.flower.deploy.certificates`: private CA, server certificate, device keys.
- :mod:`~fedlab.flower.deploy.federation`: the federation file (``[deployment]`` + run config).
- :mod:`~fedlab.flower.deploy.processes`: Flower processes: environment, output, stop by PID.
- :mod:`~fedlab.flower.deploy.superlink`: the server: SuperLink, device keys, ``flwr run``.
- :mod:`~fedlab.flower.deploy.client`: the device: launch checks, SuperNode command and run.
- :mod:`~fedlab.flower.deploy.settings`: the device settings file.
- :mod:`~fedlab.flower.deploy.supernode`: ``python -m fedlab.flower.deploy supernode ...``.

Threat model of a fedlab deployment (what each piece stops):

- **TLS** (private CA, server certificate): stops eavesdropping and tampering on the
  device-server link and devices talking to an impostor server. It does not
  authenticate devices (no mTLS in Flower 1.41).
- **SuperNode authentication** (registered EC public keys, signed requests): stops
  unregistered devices from joining and a device from taking another's node id.
  It does not stop a registered device from sending poisoned updates.
- **Control API on loopback**: in flwr 1.41 the Control API (submit runs, register
  keys) has no authentication and shares the Fleet port, so fedlab binds to loopback
  unless the federation file sets ``allow_public_control_api = true`` (then put a
  reverse proxy that forwards only ``/v1/fleet/`` in front of it).
"""

from fedlab.flower.deploy.certificates import (
    CertificateFiles,
    check_device_key,
    check_root_cert,
    init_certificates,
)
from fedlab.flower.deploy.client import (
    ACTIVATION_REFUSED,
    CLIENT_FAILURES,
    FATAL_MARKERS,
    HEARTBEAT_BOUNDS,
    HEARTBEAT_INTERVAL,
    ClientLaunch,
    check_client_launch,
    explain_client_failure,
    node_config,
    run_client,
    supernode_command,
)
from fedlab.flower.deploy.errors import DeploymentError
from fedlab.flower.deploy.federation import (
    DEFAULT_PORT,
    LOOPBACK,
    DeploymentSection,
    Federation,
    load_federation,
    parse_deployment,
)
from fedlab.flower.deploy.processes import LineSink, flower_env, free_port, stop_process
from fedlab.flower.deploy.settings import read_device_settings
from fedlab.flower.deploy.superlink import (
    APP_FILES,
    CONNECTION,
    RUN_CONFIG_FILE,
    ServerResult,
    register_device_keys,
    run_command,
    run_server,
    stage_app,
    superlink_command,
    write_flwr_config,
)
from fedlab.flower.deploy.supernode import HEARTBEAT_MODULES, supernode_main

__all__ = [
    "ACTIVATION_REFUSED",
    "APP_FILES",
    "CLIENT_FAILURES",
    "CONNECTION",
    "DEFAULT_PORT",
    "FATAL_MARKERS",
    "HEARTBEAT_BOUNDS",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_MODULES",
    "LOOPBACK",
    "RUN_CONFIG_FILE",
    "CertificateFiles",
    "ClientLaunch",
    "DeploymentError",
    "DeploymentSection",
    "Federation",
    "LineSink",
    "ServerResult",
    "check_client_launch",
    "check_device_key",
    "check_root_cert",
    "explain_client_failure",
    "flower_env",
    "free_port",
    "init_certificates",
    "load_federation",
    "node_config",
    "parse_deployment",
    "read_device_settings",
    "register_device_keys",
    "run_client",
    "run_command",
    "run_server",
    "stage_app",
    "stop_process",
    "superlink_command",
    "supernode_command",
    "supernode_main",
    "write_flwr_config",
]
