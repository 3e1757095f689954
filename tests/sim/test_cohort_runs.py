"""Whole runs with the cohort trainer: the ledger cannot tell the trainers apart.

The same config run with ``simulation.trainer = "sequential"`` and ``"cohort"`` (in this process
and in worker processes) spends exactly the same per-client budget, row by row, and reaches the
same accuracy within float rounding; an impossible ``trainer = "cohort"`` is one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedlab.cli.main import app
from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"


def short_demo(trainer: str, workers: int):
    config = load_config(SIMULATIONS / "digits-dp.toml")
    simulation = dataclasses.replace(config.simulation, backend="inline", trainer=trainer, workers=workers)
    run = dataclasses.replace(config.run, rounds=6)
    return dataclasses.replace(config, simulation=simulation, run=run)


def ledger_rows(run_dir: Path) -> tuple[list[tuple], list[tuple]]:
    with sqlite3.connect(run_dir / "ledger.sqlite") as db:
        spend = db.execute("SELECT * FROM client_spend ORDER BY round, client_id").fetchall()
        rounds = db.execute("SELECT round, num_clients, num_federation FROM rounds ORDER BY round").fetchall()
    return spend, rounds


@pytest.mark.slow
def test_the_cohort_trainer_spends_the_same_budget_as_the_sequential_one(tmp_path):
    runs = {}
    for trainer, workers in (("sequential", 0), ("cohort", 0), ("cohort", 2)):
        out = tmp_path / f"{trainer}-{workers}"
        summary = simulate_inline(
            short_demo(trainer, workers), out, SilentObserver(), wait_for_workers=workers >= 2
        )
        runs[(trainer, workers)] = (summary, ledger_rows(out), json.loads((out / "config.json").read_text()))
    base_summary, base_ledger, _ = runs[("sequential", 0)]
    assert len(base_ledger[0]) == 6 * 10  # every client spent every round
    for key, (summary, ledger, config) in runs.items():
        assert config["simulation"]["trainer"] == key[0]  # what ran is recorded
        assert ledger == base_ledger, key  # client, round, noise, rate, steps, epsilon: identical
        assert summary["epsilon_max"] == base_summary["epsilon_max"]
        assert summary["accuracy"] == pytest.approx(base_summary["accuracy"], abs=0.01)


def test_an_impossible_cohort_trainer_is_one_line_and_exit_code_2(tmp_path):
    config = (
        (SIMULATIONS / "digits-dp.toml")
        .read_text()
        .replace('backend = "flower"', 'backend = "flower"\ntrainer = "cohort"')
    )
    path = tmp_path / "bad.toml"
    path.write_text(config)
    result = CliRunner().invoke(app, ["simulate", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: simulation.trainer: 'cohort' needs simulation.backend = 'inline'"]
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
