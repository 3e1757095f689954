"""Simulated devices: stragglers past the deadline, dropouts, availability, the virtual clock."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.privacy.ledger import PrivacyLedger
from fedlab.sim.devices import settle_round
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[2]
SLOW = {1, 4, 7}  # devices 100x slower than the rest


def write_trace(path: Path, num_clients: int) -> Path:
    rows = ["client,speed,upload_mbps,download_mbps,latency_s"]
    rows += [f"{k},{0.01 if k in SLOW else 1.0},10,50,0.05" for k in range(num_clients)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_trace_run_drops_stragglers_at_the_deadline_and_the_ledger_holds_only_contributors(tmp_path):
    trace = write_trace(tmp_path / "devices.csv", 10)
    config = load_config(
        REPO / "simulations" / "digits-dp.toml",
        [
            "run.rounds=3",
            "server.fraction_train=0.6",
            'simulation.devices="trace"',
            f'simulation.device_trace="{trace}"',
            "simulation.step_seconds=0.5",
            "simulation.round_deadline=10.0",
            "simulation.workers=0",
        ],
    )
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["dropped_straggler"] for r in rows) > 0, "some slow device was sampled"
    for r in rows:
        assert r["sampled"] == 6
        assert r["clients"] == r["sampled"] - r["dropped_straggler"]
        assert r["failures"] == r["dropped_straggler"]
        assert 0 < r["sim_seconds"] <= 10.0
        assert r["seconds"] > 0
    assert rows[-1]["sim_clock"] == pytest.approx(sum(r["sim_seconds"] for r in rows))
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        contributors = {c.client_id for c in ledger.client_totals()}
        assert [rec.num_clients for rec in ledger.rounds()] == [r["clients"] for r in rows]
    assert contributors.isdisjoint({str(k) for k in SLOW})
    assert contributors == set(summary["client_epsilons"])


def test_settle_round_target_closes_the_round_at_the_target_arrival():
    times = np.array([4.0, 1.0, 3.0, 2.0, 9.0])
    dropped = np.array([False, False, False, True, False])
    out = settle_round(times, dropped, deadline=5.0, target=2)
    assert out.arrived.tolist() == [1, 2]
    assert out.over_target.tolist() == [0]
    assert out.stragglers.tolist() == [4]
    assert out.dropouts.tolist() == [3]
    assert out.seconds == 3.0


def test_settle_round_waits_for_the_deadline_when_the_target_is_missed():
    out = settle_round(np.array([1.0, 8.0]), np.array([False, False]), deadline=5.0, target=2)
    assert out.arrived.tolist() == [0] and out.stragglers.tolist() == [1] and out.seconds == 5.0


def test_availability_and_dropout_are_seeded_and_reduce_who_trains(tmp_path):
    overrides = [
        'data.dataset="synthetic"',
        "data.num_clients=2000",
        'model.kind="logreg"',
        "run.rounds=2",
        "server.fraction_train=0.01",
        "simulation.availability=0.5",
        "simulation.dropout=0.3",
        "simulation.workers=0",
        "data.min_partition_size=32",
    ]
    runs = []
    for name in ("a", "b"):
        config = load_config(REPO / "simulations" / "digits.toml", overrides)
        simulate_inline(config, tmp_path / name, SilentObserver())
        runs.append([json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    strip = [
        [{k: v for k, v in r.items() if k not in ("seconds", "started_at")} for r in run] for run in runs
    ]
    assert strip[0] == strip[1], "same seed, same devices, same drops"
    for r in runs[0]:
        assert 800 < r["available"] < 1200
        assert r["sampled"] == round(0.01 * r["available"])
        assert r["clients"] == r["sampled"] - r["dropped_dropout"]
    assert sum(r["dropped_dropout"] for r in runs[0]) > 0
