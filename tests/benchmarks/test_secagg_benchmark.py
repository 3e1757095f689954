"""Keeps benchmarks/secagg.py working: runs ``--quick`` and checks the JSON lines' shape.

No timing assertions: CI machines are too noisy to judge speed. The sums are checked, though: every
peer's mean must match numpy's within its quantization step.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "secagg.py"
PEER_KEYS = {"server_cpu_s", "client_cpu_s", "total_cpu_s", "bytes_up_per_client", "wall_s", "max_abs_error"}
STAGES_FEDLAB = {"advertise", "share_keys", "masked_input", "unmask"}
STAGES_FLOWER = {"setup", "share_keys", "collect_masked_vectors", "unmask"}


def _run_quick() -> list[dict[str, Any]]:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_mode_prints_complete_json_lines() -> None:
    records = _run_quick()
    kinds = [r["kind"] for r in records]
    assert kinds == ["micro", "scaling", "acceptance", "end_to_end"], kinds
    assert all(r["benchmark"] == "secagg" for r in records)

    micro = records[0]
    assert (micro["num_clients"], micro["vector_length"]) == (10, 10**4)
    assert 2 <= micro["threshold"] <= micro["neighbours"]
    for peer in ("plain", "fedlab", "flower"):
        assert PEER_KEYS.issubset(micro[peer]), (peer, micro[peer])
        assert _positive(micro[peer]["server_cpu_s"]), peer
        assert _positive(micro[peer]["bytes_up_per_client"]), peer
    assert set(micro["fedlab"]["client_stage_cpu_s"]) == STAGES_FEDLAB
    assert set(micro["flower"]["client_stage_cpu_s"]) == STAGES_FLOWER
    assert micro["flower"]["flower_scope"]
    assert micro["flower"]["num_shares"] == micro["neighbours"] + 1
    # The secure sums are right: within one quantization step of numpy's mean.
    assert micro["fedlab"]["max_abs_error"] <= micro["fedlab"]["quantization_bound"] + 1e-12
    assert micro["flower"]["max_abs_error"] < 1e-5
    assert micro["plain"]["max_abs_error"] < 1e-9
    # One masked uint64 vector per client dominates the upload.
    assert micro["fedlab"]["bytes_up_per_client"] >= 8 * micro["vector_length"]
    for ratios in ("ratio_fedlab_flower", "ratio_fedlab_plain"):
        assert _positive(micro[ratios]["server_cpu"]), ratios

    scaling = records[1]
    assert scaling["num_clients"] == [10]
    assert scaling["fitted_exponent"] is None

    e2e = records[3]
    assert e2e["workload"]["num_clients"] == 10
    assert e2e["primary"] is True
    assert _positive(e2e["secagg_off_round_s"])
    assert _positive(e2e["secagg_on_round_s"])
    assert _positive(e2e["ratio_on_off"])
    assert isinstance(e2e["acceptance_overhead_at_most_50pct"], bool)
