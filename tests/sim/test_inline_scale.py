"""The inline backend drives 10^5 clients in CI time: per-round cost follows the sampled clients."""

import json
import time
from pathlib import Path

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[2]


def test_hundred_thousand_clients_run_a_few_rounds_quickly(tmp_path):
    config = load_config(
        REPO / "simulations" / "digits.toml",
        [
            'data.dataset="synthetic"',
            'data.partitioner="dirichlet"',
            "data.num_clients=100000",
            "data.min_partition_size=16",
            'model.kind="logreg"',
            "run.rounds=3",
            "server.fraction_train=0.0001",
            "train.local_epochs=1",
            "simulation.workers=0",
        ],
    )
    started = time.perf_counter()
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    elapsed = time.perf_counter() - started
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == 3
    assert [r["clients"] for r in rows] == [10, 10, 10]
    assert all(r["available"] == 100000 for r in rows)
    assert elapsed < 30.0, f"10^5 clients took {elapsed:.1f} s"
