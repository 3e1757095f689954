"""Keeps benchmarks/sim_scale.py working: ``--quick`` prints W1, W2 and W3 JSON lines (no timing checks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_scale.py"


@pytest.mark.slow
def test_sim_scale_quick_prints_one_json_line_per_measurement():
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.strip()]
    kinds = [line["measurement"] for line in lines]
    assert kinds == ["W1", "W2", "W2", "W2-summary", "W3"]
    for line in (lines[0], lines[-1]):
        for peer in ("fedlab_inline", "bare_loop"):
            assert line[peer]["total_s"] > 0 and line[peer]["peak_rss_mb"] > 0
            assert line[peer]["rounds_completed"] == 2
        assert line["ratio_inline_vs_bare_total"] > 0
    assert lines[-1]["fedlab_inline"]["epsilon_max"] > 0
    assert lines[3]["ratio_peak_rss_inline_vs_bare_largest"] > 0
