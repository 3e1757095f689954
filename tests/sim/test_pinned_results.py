"""Refactors keep results: the demo and the user-level config give the models and epsilons they gave.

The numbers were measured at commit 4367d57 (before the consolidation of issue 13) with
``fedlab simulate CONFIG --backend inline`` and again after it; a change that moves them is a
change of behaviour, not a refactor. Training results are pinned to float-kernel precision.
The accuracies are those of the dependency set in ``constraints.txt`` (what CI installs): with the
same code at 8e1c4d7, an unconstrained install gave synthetic-user-dp 0.150 and the constrained set
0.146 (4 of its 1000 test examples; its epsilon identical); the same 0.150 comes from torch's AVX-512
kernels, so the runs use its AVX2 kernels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"

PINNED = {
    "digits-dp.toml": {
        "accuracy": 0.9222222222222223,
        "loss": 0.3029080073038737,
        "epsilon_max": 7.996052397177166,
    },
    "synthetic-user-dp.toml": {"accuracy": 0.146, "epsilon_user": 3.9962934981552705},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PINNED))
def test_a_shipped_config_gives_the_pinned_result(tmp_path, name):
    out = tmp_path / "run"
    # The kernels are pinned too: torch's AVX2 kernels (which every x86-64 CPU CI runs on has; on
    # others torch ignores the setting). With AVX-512 kernels the 100 noised rounds of
    # synthetic-user-dp end 4 of 1000 test examples apart (0.150), beyond any honest tolerance.
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    command = [sys.executable, "-m", "fedlab", "simulate", str(SIMULATIONS / name), "--backend", "inline"]
    result = subprocess.run(
        [*command, "--quiet", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key, value in PINNED[name].items():
        # Epsilons follow from the plan alone: to 1e-9. Models follow from float kernels, which
        # differ between CPUs (AVX2 vs AVX-512 summation order: the demo's loss moved by 7e-8):
        # to 1e-5, and accuracy to one test example in 360.
        tolerance = {
            "accuracy": pytest.approx(value, abs=1 / 360 + 1e-12),
            "loss": pytest.approx(value, rel=1e-5),
        }
        assert summary[key] == tolerance.get(key, pytest.approx(value, rel=1e-9, abs=0.0)), key
