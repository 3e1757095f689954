"""The same apps run under plain ``flwr run .`` (pyproject's [tool.flwr.app])."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from .processes import kill_tree

REPO = Path(__file__).resolve().parents[2]


def processes_using(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_flwr_run_dot_trains_with_the_fedlab_apps(tmp_path):
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    assert flwr is not None
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        flwr,
        "run",
        ".",
        "--stream",
        "--federation-config",
        "num-supernodes=10 client-resources-num-cpus=1",
        "--run-config",
        f"overrides='run.rounds=2' out-dir='{out}'",
    ]
    try:
        result = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False
        )
    finally:
        for proc in processes_using(str(home)):  # the local SuperLink `flwr run` leaves behind
            kill_tree(proc.pid)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 2
    assert len(summary["client_epsilons"]) == 10
    assert (out / "ledger.sqlite").exists() and (out / "plots" / "accuracy.png").exists()
    assert not processes_using(str(home))
