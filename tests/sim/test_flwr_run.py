"""The same apps run under plain ``flwr run .`` (pyproject's [tool.flwr.app]), and resume there."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.privacy.client_budget import ClientBudget
from fedlab.privacy.ledger import PrivacyLedger
from fedlab.sim.inline import simulate_inline

from .processes import committed_rounds, kill_tree, wait_until

REPO = Path(__file__).resolve().parents[2]


def processes_using(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if marker in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_flwr_run_dot_trains_with_the_fedlab_apps_and_resumes_a_killed_run(tmp_path):
    """The deployed ServerApp (secret server randomness): killed after round 2, resumed to round 4."""
    home = tmp_path / "flwr-home"
    out = tmp_path / "run"
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    assert flwr is not None
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    def command(resume: bool) -> list[str]:
        return [
            flwr, "run", ".", "--stream",
            "--federation-config", "num-supernodes=10 client-resources-num-cpus=1",
            "--run-config", f"overrides='run.rounds=4' out-dir='{out}' resume={str(resume).lower()}",
        ]  # fmt: skip

    first = subprocess.Popen(
        command(False), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: len(committed_rounds(out)) >= 2 or first.poll() is not None, timeout=300)
    finally:
        first.kill()
        for proc in processes_using(str(home)):  # the local SuperLink `flwr run` started, and its runs
            kill_tree(proc.pid)
    assert 2 <= len(committed_rounds(out)) < 4
    try:
        result = subprocess.run(
            command(True), cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False
        )
    finally:
        for proc in processes_using(str(home)):
            kill_tree(proc.pid)
    assert result.returncode == 0, result.stdout + result.stderr
    assert committed_rounds(out) == [1, 2, 3, 4], "contiguous rounds, none committed twice"
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 4
    assert (out / "ledger.sqlite").exists() and (out / "plots" / "accuracy.png").exists()
    assert not processes_using(str(home))
    # Each client's epsilon covers all four rounds (its ClientApp state did not survive the kill).
    config = load_config(
        REPO / "simulations" / "digits-dp.toml",
        ['simulation.backend="inline"', "simulation.workers=0", "run.rounds=4"],
    )
    whole = simulate_inline(config, tmp_path / "inline", SilentObserver())
    assert summary["client_epsilons"] == pytest.approx(whole["client_epsilons"], rel=1e-9)


@pytest.mark.slow
def test_the_example_flower_app_trains_with_fedlabs_wrapper_mods_and_ledger_under_flwr_run(tmp_path):
    """examples/flower-app: the user's FedAvg app plus fedlab's DP wrapper, two mods and ledger."""
    home, out = tmp_path / "flwr-home", tmp_path / "out"
    flwr = shutil.which("flwr", path=str(Path(sys.executable).parent))
    assert flwr is not None
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(flwr).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superlink
    }
    command = [
        flwr, "run", str(REPO / "examples" / "flower-app"), "--stream",
        "--federation-config", "num-supernodes=3 client-resources-num-cpus=1",
        "--run-config", f"out-dir='{out}'",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, check=False)
    finally:
        for proc in processes_using(str(home)):
            kill_tree(proc.pid)
    assert (out / "result.json").exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert sorted(result["accuracy"]) == ["0", "1", "2"]  # the server's held-out digits, every round
    # Every device clipped (clipping_mod) within what the server accepts: none rejected.
    assert result["clients"] == {"1": 3, "2": 3} and result["rejected"] == {"1": 0, "2": 0}
    # The epsilon the app reports is what `fedlab privacy epsilon` gives for its mechanism.
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "fedlab"), "privacy", "epsilon", "--noise-multiplier", "1",
         "--sample-rate", "1", "--steps", "2", "--delta", "1e-5", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result["epsilon"] == pytest.approx(json.loads(cli.stdout)["epsilon"], rel=1e-9)
    with PrivacyLedger.open(out / "ledger.sqlite") as ledger:
        assert [r.round for r in ledger.rounds()] == [1, 2]
        assert ledger.federation_totals()[0].epsilon == pytest.approx(result["epsilon"], rel=1e-9)
    for device in range(3):  # each device charged the whole announced run once, and released both rounds
        with ClientBudget.open(out / f"device-{device}-budget.sqlite") as budget:
            assert [r.server_round for r in budget.releases()] == [1, 2]
            (charge,) = budget.charges()
            assert charge.params == {"noise_multiplier": 1.0, "sample_rate": 1.0, "steps": 2}
    assert not processes_using(str(home))
