"""Keeps benchmarks/secure_noise.py working: runs ``--quick`` and checks the JSON line's shape.

No timing assertions: CI machines are too noisy to judge speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "secure_noise.py"
TIME_KEYS = ("torch_normal_ms", "opacus_secure_mode_ms", "fedlab_secure_ms")
RATIO_KEYS = ("ratio_fedlab_over_torch", "ratio_fedlab_over_opacus_secure")
PEERS = {"torch_normal", "opacus_secure_mode", "fedlab_secure"}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_mode_prints_one_complete_json_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout
    record: dict[str, Any] = json.loads(lines[0])
    assert record["benchmark"] == "secure_noise"
    assert record["d"] == 10**4
    for key in (*TIME_KEYS, *RATIO_KEYS):
        assert _positive(record[key]), (key, record[key])
    # Every peer produced std-1 noise (10^4 draws: the sample std is within a few percent).
    assert set(record["sample_std"]) == PEERS
    for peer, std in record["sample_std"].items():
        assert abs(std - 1.0) < 0.1, (peer, std)
    workload = record["workload"]
    assert workload["mode"] == "quick"
    assert workload["torch_threads"] == 1
    assert workload["repeats"] >= 1
    assert isinstance(workload["loadavg_1m_before"], (int, float))
