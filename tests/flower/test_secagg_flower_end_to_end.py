"""``fedlab simulate simulations/digits-secagg-ddp.toml`` on Flower's engine: SecAgg+ with distributed DP."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.sim.processes import run_to_end

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_flower_secagg_ddp_run_trains_and_records_epsilon(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, output = run_to_end(
        "simulate",
        str(REPO / "simulations" / "digits-secagg-ddp.toml"),
        "--backend",
        "flower",
        "--set",
        "run.rounds=3",
        "--set",
        "data.num_clients=12",
        "--set",
        "dp.record_participation=true",  # `included` below: withheld by default under user-level DP
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert code == 0, output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    released = [r for r in rows if "aborted" not in r]
    assert released, rows
    for row in released:
        assert row["included"] >= 9  # ceil(0.7 * 12) noise shares at least
        assert row["denominator"] == 12.0
    with sqlite3.connect(out / "ledger.sqlite") as db:
        query = "SELECT round, mechanism, epsilon FROM federation_spend ORDER BY round, mechanism"
        rows_spent = db.execute(query).fetchall()
    spends = [r for r in rows_spent if r[1] == "skellam-ddp"]  # against the server: the run's epsilon
    readers = [r for r in rows_spent if r[1] == "skellam-ddp-released"]
    assert [r[0] for r in spends] == [r[0] for r in readers] == [r["round"] for r in released]
    assert 0.0 < readers[-1][2] < spends[-1][2] <= 8.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epsilon_user"] == pytest.approx(spends[-1][2])
    assert 0.0 <= summary["accuracy"] <= 1.0
