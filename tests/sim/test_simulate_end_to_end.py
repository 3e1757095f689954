"""``fedlab simulate`` on Flower's simulation engine writes every promised artefact."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.privacy.ledger import PrivacyLedger

from .processes import run_to_end

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"round", "accuracy", "loss", "epsilon_max", "epsilon_mean", "clients", "seconds"}


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "run"
    cwd = out.parent
    code, output = run_to_end(
        "simulate",
        str(REPO / "simulations" / "digits-dp.toml"),
        "--set",
        "run.rounds=3",
        "--out",
        str(out),
        cwd=cwd,
    )
    assert code == 0, output
    return out, output


@pytest.mark.slow
def test_run_directory_holds_metrics_summary_ledger_and_plots(dp_run):
    out, output = dp_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row.keys() >= REQUIRED
        assert row["clients"] == 10 and 0.0 <= row["accuracy"] <= 1.0
    assert rows[0]["epsilon_max"] < rows[1]["epsilon_max"] < rows[2]["epsilon_max"] <= 8.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["accuracy"] == rows[-1]["accuracy"]
    assert len(summary["client_epsilons"]) == 10
    assert max(summary["client_epsilons"].values()) == pytest.approx(rows[-1]["epsilon_max"])
    for plot in ("accuracy.png", "epsilon.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round" in output and str(out) in output


@pytest.mark.slow
def test_ledger_agrees_with_reported_epsilons(dp_run):
    out, _ = dp_run
    with PrivacyLedger.open(out / "ledger.sqlite") as ledger:
        assert ledger.last_round() == 3
        totals = {c.client_id: c for c in ledger.client_totals()}
    summary = json.loads((out / "summary.json").read_text())
    assert set(totals) == set(summary["client_epsilons"])
    for cid, eps in summary["client_epsilons"].items():
        assert totals[cid].epsilon == pytest.approx(eps)
        assert totals[cid].rounds == 3
    result = subprocess.run(
        [sys.executable, "-m", "fedlab", "privacy", "ledger", str(out), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    printed = json.loads(result.stdout)
    assert printed["rounds_committed"] == 3
    assert printed["epsilon_max"] == pytest.approx(summary["epsilon_max"])
