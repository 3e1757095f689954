"""A run killed with SIGKILL mid-round leaves a ledger of whole rounds that still reads."""

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlab.privacy.ledger import PrivacyLedger

from .processes import kill_tree, process_tree, start_fedlab, wait_until

REPO = Path(__file__).resolve().parents[2]


def committed_rounds(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_mid_round_leaves_whole_rounds(tmp_path):
    out = tmp_path / "run"
    ledger = out / "ledger.sqlite"
    proc = start_fedlab(
        "simulate",
        str(REPO / "simulations" / "digits-dp.toml"),
        "--set",
        "run.rounds=60",
        "--quiet",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    tracked = []
    try:
        assert wait_until(lambda: committed_rounds(ledger) >= 2 or proc.poll() is not None, timeout=240)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        tracked = process_tree(proc.pid)
        # Land somewhere inside a round: rounds take about a second here.
        time.sleep(random.Random().uniform(0.0, 1.5))
    finally:
        kill_tree(proc.pid, tracked)
    assert proc.poll() is not None

    with PrivacyLedger.open(ledger) as opened:
        last = opened.last_round()
        rounds = opened.rounds()
        totals = opened.client_totals()
    assert last >= 2
    assert [r.round for r in rounds] == list(range(1, last + 1))
    assert all(r.num_clients == 10 for r in rounds), "every committed round holds all of its client rows"
    assert all(t.rounds == last for t in totals), "no client row of a committed round is missing"
    metrics = [
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.endswith("}")
    ]
    assert len(metrics) <= last, "no model was released before its spending was committed"

    result = subprocess.run(
        [sys.executable, "-m", "fedlab", "privacy", "ledger", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rounds_committed"] == last
