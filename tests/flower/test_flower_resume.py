"""The Flower backend resumes a killed run: contiguous rounds, none twice, epsilons charged in full."""

import json
from pathlib import Path

import pytest

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline
from tests.sim.processes import (
    committed_rounds,
    kill_tree,
    process_tree,
    run_to_end,
    start_fedlab,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "simulations" / "digits-dp.toml"
ROUNDS = ["--set", "run.rounds=5"]


@pytest.mark.slow
def test_a_killed_flower_run_resumes_with_contiguous_rounds_and_full_epsilons(tmp_path):
    run = tmp_path / "run"
    proc = start_fedlab("simulate", str(CONFIG), *ROUNDS, "--quiet", "--out", str(run), cwd=tmp_path)
    tracked = []
    try:
        assert wait_until(lambda: len(committed_rounds(run)) >= 2 or proc.poll() is not None, timeout=240)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        tracked = process_tree(proc.pid)
    finally:
        kill_tree(proc.pid, tracked)  # the driver and Ray's processes, all SIGKILLed
    before = committed_rounds(run)
    assert 2 <= len(before) < 5

    code, output = run_to_end("simulate", "--resume", str(run), "--quiet", cwd=tmp_path)
    assert code == 0, output
    assert committed_rounds(run) == [1, 2, 3, 4, 5], "rounds contiguous, none committed twice"
    rounds = [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4, 5]

    # The resumed ClientApps start with empty context state; the server charges each report on
    # the client's ledger history, so every epsilon is that of all five rounds (as inline, where
    # the histories are kept in one process).
    summary = json.loads((run / "summary.json").read_text())
    config = load_config(CONFIG, ['simulation.backend="inline"', "simulation.workers=0", "run.rounds=5"])
    whole = simulate_inline(config, tmp_path / "inline", SilentObserver())
    assert summary["client_epsilons"].keys() == whole["client_epsilons"].keys()
    for cid, eps in whole["client_epsilons"].items():
        assert summary["client_epsilons"][cid] == pytest.approx(eps, rel=1e-9), cid
