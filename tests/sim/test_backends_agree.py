"""The in-process backend and Flower's engine run the same logic: same seed, same weights."""

import json
from pathlib import Path

import numpy as np
import pytest

from .processes import run_to_end

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--set", "run.rounds=2", "--set", "server.fraction_train=0.5", "--set", "train.local_epochs=1"]


def run_backend(backend: str, out: Path, *extra: str) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    config = str(REPO / "simulations" / "digits.toml")
    args = ["simulate", config, *SMALL, *extra, "--set", f'simulation.backend="{backend}"']
    code, output = run_to_end(*args, "--quiet", "--out", str(out), cwd=out.parent)
    assert code == 0, output
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [(), ("--set", 'server.optimizer="fedadam"', "--set", "server.lr=0.1")],
    ids=["fedavg", "fedadam"],
)
def test_inline_and_flower_backends_give_the_same_model(tmp_path, extra):
    inline = run_backend("inline", tmp_path / "inline", *extra)
    flower = run_backend("flower", tmp_path / "flower", *extra)
    a = np.load(tmp_path / "inline" / "model.npz")
    b = np.load(tmp_path / "flower" / "model.npz")
    assert a.files == b.files
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert inline["accuracy"] == pytest.approx(flower["accuracy"])
    rows = [json.loads(x) for x in (tmp_path / "inline" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rows] == [5, 5], "half of the 10 clients train each round"


def test_inline_backend_reports_dp_epsilon_in_process(tmp_path):
    from fedlab.core.config import load_config
    from fedlab.core.metrics import SilentObserver
    from fedlab.privacy.ledger import PrivacyLedger
    from fedlab.sim.inline import simulate_inline

    config = load_config(REPO / "simulations" / "digits-dp.toml", ["run.rounds=2", "data.num_clients=4"])
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    assert summary["rounds_completed"] == 2
    assert 0.0 < summary["epsilon_max"] <= 8.0
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.last_round() == 2
        assert {c.client_id for c in ledger.client_totals()} == {"0", "1", "2", "3"}
