"""Same seed, same model: inline with worker processes, inline in-process, and Flower agree."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline

from .processes import run_to_end
from .test_backends_agree import SMALL, run_backend

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = [item for item in SMALL if item != "--set"]


def run_inline(out: Path, workers: int, extra: tuple[str, ...] = (), base: str = "digits.toml") -> dict:
    config = load_config(REPO / "simulations" / base, [*OVERRIDES, *extra, f"simulation.workers={workers}"])
    return simulate_inline(config, out, SilentObserver(), wait_for_workers=True)


def run_flower(out: Path, base: str, extra: tuple[str, ...]) -> dict:
    args = ["simulate", str(REPO / "simulations" / base), *SMALL]
    args += [a for item in [*extra, 'simulation.backend="flower"'] for a in ("--set", item)]
    code, output = run_to_end(*args, "--quiet", "--out", str(out), cwd=out.parent)
    assert code == 0, output
    return json.loads((out / "summary.json").read_text())


def assert_same_model(a: Path, b: Path) -> None:
    x, y = np.load(a / "model.npz"), np.load(b / "model.npz")
    assert x.files == y.files
    for key in x.files:
        np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inline_workers_in_process_and_flower_give_the_same_model(tmp_path):
    pooled = run_inline(tmp_path / "pooled", workers=2)
    local = run_inline(tmp_path / "local", workers=0)
    run_backend("flower", tmp_path / "flower")
    rows = [json.loads(x) for x in (tmp_path / "pooled" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["workers"] == 2 for r in rows), "the worker processes trained every round"
    assert_same_model(tmp_path / "pooled", tmp_path / "local")
    assert_same_model(tmp_path / "pooled", tmp_path / "flower")
    assert pooled["accuracy"] == local["accuracy"]


@pytest.mark.slow
def test_inline_and_flower_spend_the_same_epsilon_under_dp_sgd(tmp_path):
    dp = ("run.rounds=2", "data.num_clients=4")
    inline = run_inline(tmp_path / "inline", workers=2, extra=dp, base="digits-dp.toml")
    flower = run_flower(tmp_path / "flower", "digits-dp.toml", dp)
    assert inline["client_epsilons"] == pytest.approx(flower["client_epsilons"])
    assert inline["epsilon_max"] == pytest.approx(flower["epsilon_max"])


def test_central_dp_runs_the_configured_dp_fedavg_loop_over_the_inline_transport(tmp_path):
    from fedlab.privacy.ledger import PrivacyLedger

    extra = (
        'dp.mode="central"', "dp.noise_multiplier=1.0", "dp.clip_norm=0.5", "simulation.dropout=0.2",
        "dp.record_participation=true",  # the device counts below are withheld by default
    )  # fmt: skip
    summary = run_inline(tmp_path / "run", workers=0, extra=extra)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rounds_completed"] == 2
    assert all("sim_seconds" in r for r in rows)
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.federation_totals(), "the server's DP-FedAvg releases are in the ledger"
