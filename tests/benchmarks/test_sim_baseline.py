"""Keeps benchmarks/sim_baseline.py working: runs ``--quick`` and checks the JSON line's shape.

No timing assertions: CI machines are too noisy to judge speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_baseline.py"
PEER_KEYS = {"total_s", "startup_s", "steady_round_s", "peak_rss_mb", "final_accuracy"}
POSITIVE_KEYS = ("total_s", "startup_s", "steady_round_s", "peak_rss_mb")
RATIO_KEYS = ("ratio_total", "ratio_steady_round", "ratio_peak_rss")


def _run_quick() -> dict[str, Any]:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    record: dict[str, Any] = json.loads(lines[0])
    return record


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_quick_mode_prints_one_complete_json_line() -> None:
    record = _run_quick()
    assert record["benchmark"] == "sim_baseline"
    assert record["workload"]["mode"] == "quick"
    rounds = record["workload"]["rounds"]
    for peer in ("fedlab_flower", "bare_loop"):
        result = record[peer]
        assert PEER_KEYS.issubset(result), (peer, result)
        for key in POSITIVE_KEYS:
            assert _positive(result[key]), (peer, key, result[key])
        assert 0.0 <= result["final_accuracy"] <= 1.0
        assert result["rounds_completed"] == rounds
        assert result["leftover_processes"] == 0
    assert "first_round_s" in record["fedlab_flower"]
    for key in RATIO_KEYS:
        assert _positive(record[key]), (key, record[key])
