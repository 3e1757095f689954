"""A real two-node Ray cluster on this machine: ``fedlab simulate --backend flower`` runs on both nodes.

The steps are the README's ("A Ray cluster"): ``ray start --head --port=P``, a second node
``ray start --address=HEAD:P``, then ``fedlab simulate`` with ``simulation.ray_address``; each node
here gets one CPU and the cluster a private temporary directory, so that each node runs one
virtual client at a time and the test can stop exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from .processes import kill_tree, process_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Connects to the cluster and prints, per node, the classes of the actors that ran there.
ACTORS_BY_NODE = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = {}
for actor in state.actors().values():
    nodes.setdefault(actor["Address"]["NodeID"], []).append(actor["ActorClassName"])
print(json.dumps({"nodes": len(ray.nodes()), "actors": nodes}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(proc.info.get("cmdline") or []):
            found.append(proc)
    return found


@pytest.mark.slow
def test_fedlab_simulate_trains_on_both_nodes_of_a_two_node_ray_cluster(tmp_path: Path) -> None:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths: <= 107 bytes
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"}
    address = f"127.0.0.1:{free_port()}"
    ray = str(BIN / "ray")
    head = [ray, "start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=1",
            "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"]  # fmt: skip
    worker = [ray, "start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats"]
    try:
        for command in (head, worker):
            started = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=180, check=False
            )
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        out = tmp_path / "run"
        run = subprocess.run(
            [str(BIN / "fedlab"), "simulate", str(REPO / "simulations" / "digits-dp.toml"), "--out", str(out),
             "--set", 'simulation.backend="flower"', "--set", f'simulation.ray_address="{address}"',
             "--set", "run.rounds=2", "--quiet"],
            env=env, capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2
        probe = subprocess.run(
            [sys.executable, "-c", ACTORS_BY_NODE, address],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        assert seen["nodes"] == 2
        ran = [node for node, classes in seen["actors"].items() if "ClientAppActor" in classes]
        assert len(ran) == 2, seen  # Flower's client actors ran on both nodes
    finally:  # every process of both nodes (their agents and workers are their children)
        tracked = [p for root in cluster_processes(temp_dir) for p in process_tree(root.pid)]
        if tracked:
            kill_tree(tracked[0].pid, tracked)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tracked)
