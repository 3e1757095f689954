"""The SuperNode launcher: flower-supernode in this process with fedlab's heartbeat interval."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fedlab.flower.deploy.errors import DeploymentError
from fedlab.flower.deploy.processes import die_with_parent

# Flower 1.41 modules that read the SuperNode heartbeat interval (a module constant, no flag):
# fleet_http_connection sends it to the SuperLink (ActivateNode, SendNodeHeartbeat), heartbeat
# paces the HeartbeatSender thread with it.
HEARTBEAT_MODULES = ("flwr.supernode.fleet_http_connection", "flwr.supercore.heartbeat")


def supernode_main(argv: Sequence[str]) -> int:
    """Run flower-supernode in this process with fedlab's heartbeat interval.

    ``argv`` is ``supernode --heartbeat-interval SECONDS`` followed by flower-supernode's own
    flags. Flower 1.41 has no flag for the interval; it is a protocol field the SuperLink accepts
    per node (10..1800 s), read from ``HEARTBEAT_DEFAULT_INTERVAL`` in :data:`HEARTBEAT_MODULES`,
    which this sets before starting the SuperNode.

    Raises:
        DeploymentError: On a malformed command line, or a Flower without those module constants.
    """
    import importlib

    if len(argv) < 3 or argv[0] != "supernode" or argv[1] != "--heartbeat-interval":
        raise DeploymentError("usage: python -m fedlab.flower.deploy supernode --heartbeat-interval S ...")
    try:
        interval = float(argv[2])
    except ValueError:
        raise DeploymentError(f"--heartbeat-interval: not a number: {argv[2]!r}") from None
    for name in HEARTBEAT_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise DeploymentError(f"{name}.HEARTBEAT_DEFAULT_INTERVAL not found: fedlab needs flwr 1.41")
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", interval)  # noqa: B010
    from flwr.supernode.cli import flower_supernode

    die_with_parent()  # the SuperNode and its ClientApps never outlive `fedlab client`
    sys.argv = ["flower-supernode", *argv[3:]]
    flower_supernode()
    return 0
