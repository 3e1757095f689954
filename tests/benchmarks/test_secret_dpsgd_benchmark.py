"""Keeps benchmarks/secret_dpsgd.py working: runs ``--quick`` and checks its JSON line (no timings judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "secret_dpsgd.py"


def test_quick_mode_prints_one_line_with_both_peers_and_a_calibrated_noise_scale() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    record = json.loads(lines[0])
    assert (record["benchmark"], record["model"], record["device"]) == ("secret_dpsgd", "logreg", "cpu")
    assert record["seeded_round_s"] > 0 and record["secret_round_s"] > 0
    assert record["steps_per_round"] == 600 // 32
    # Two secret rounds differ by noise of the calibrated scale (650 coordinates: ~3% spread).
    assert 0.85 < record["noise_std_ratio"] < 1.15
