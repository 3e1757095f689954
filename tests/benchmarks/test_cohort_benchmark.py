"""Keeps benchmarks/cohort.py working: runs ``--quick --e2e``, checks its JSON lines (no timings judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cohort.py"


@pytest.mark.slow
def test_quick_mode_prints_the_micro_and_end_to_end_lines(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--e2e"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert len(records) == 4, done.stdout
    micro, sequential, cohort, ratios = records
    assert (micro["benchmark"], micro["model"], micro["device"], micro["cohort"]) == (
        "cohort",
        "logreg",
        "cpu",
        8,
    )
    for peer in ("sequential", "cohort", "plain_sequential"):
        assert micro[f"{peer}_client_steps_per_s"] > 0
    assert micro["cohort_planned_mb"] > 0
    assert (sequential["trainer"], cohort["trainer"]) == ("sequential", "cohort")
    assert sequential["rounds_completed"] == cohort["rounds_completed"] == 2
    assert sequential["leftover_processes"] == cohort["leftover_processes"] == 0
    assert ratios["same_epsilon"] is True  # the trainers spend the same budget
    assert ratios["ratio_total_sequential_over_cohort"] > 0
