"""The inline backend drives 10^5 clients: per-round work follows the sampled clients, not the population.

Timings live in ``benchmarks/sim_scale.py`` (W2: 10^3 to 10^6 clients); this test counts work.
"""

import json
from pathlib import Path

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.data.synthetic import SyntheticFederatedData
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[2]


def test_hundred_thousand_clients_materialize_only_the_sampled_ones(tmp_path, monkeypatch):
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
    materialized: list[int] = []
    client = SyntheticFederatedData.client

    def counted(self, i):
        materialized.append(i)
        return client(self, i)

    monkeypatch.setattr(SyntheticFederatedData, "client", counted)
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == 3
    assert [r["clients"] for r in rows] == [10, 10, 10]
    assert all(r["available"] == 100000 for r in rows)
    # Each sampled client's data is built once, when it trains; nothing for the other 10^5 clients.
    assert len(materialized) == 30, len(materialized)
