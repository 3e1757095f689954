"""fedlab's SecAgg+ mod and workflow in a user's app on Flower's simulation engine (Ray processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.sim.secagg_engine_app import NODES, ROUNDS, initial, step_of

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_secure_rounds_on_the_simulation_engine_give_the_mean_of_the_users_updates(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sim.secagg_engine_app", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    result_file = tmp_path / "result.json"
    assert result_file.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert (result["released"], result["aborted"]) == (ROUNDS, 0)
    assert [row["included"] for row in result["history"]] == [NODES] * ROUNDS
    assert result["dtypes"] == {"w": "float32", "b": "float64"}
    for key, array in initial().items():
        mean = np.mean([np.asarray(step_of(p)[key], dtype=np.float64) for p in range(NODES)], axis=0)
        np.testing.assert_allclose(result["arrays"][key], array.numpy() + ROUNDS * mean, atol=1e-5)
