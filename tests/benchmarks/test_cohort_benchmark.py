"""Keeps benchmarks/cohort.py working: runs ``--quick`` and checks its JSON line (no timings judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cohort.py"


def test_quick_mode_prints_one_line_with_both_peers() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    record = json.loads(lines[0])
    assert (record["benchmark"], record["model"], record["device"], record["cohort"]) == (
        "cohort",
        "logreg",
        "cpu",
        8,
    )
    assert record["sequential_client_steps_per_s"] > 0 and record["cohort_client_steps_per_s"] > 0
