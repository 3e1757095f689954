"""``fedlab privacy epsilon/calibrate`` and ``fedlab sweep``: exact JSON forms and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedlab.privacy.accountants import epsilon_of
from fedlab.privacy.events import GaussianEvent

from .test_cli_errors import assert_one_line_error, run_fedlab

REPO = Path(__file__).resolve().parents[2]


def fedlab_json(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "fedlab", *args, "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("accountant", ["pld", "prv", "rdp"])
def test_epsilon_json_matches_the_library(accountant):
    out = fedlab_json(
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "1.1",
        "--sample-rate",
        "0.01",
        "--steps",
        "500",
        "--delta",
        "1e-5",
        "--accountant",
        accountant,
    )
    assert set(out) == {"epsilon", "delta", "accountant", "noise_multiplier", "sample_rate", "steps"}
    event = GaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=500)
    assert out["epsilon"] == pytest.approx(epsilon_of([event], delta=1e-5, accountant=accountant))
    assert out["accountant"] == accountant and out["steps"] == 500


def test_calibrate_json_never_overshoots():
    out = fedlab_json(
        "privacy",
        "calibrate",
        "--target-epsilon",
        "2",
        "--delta",
        "1e-5",
        "--sample-rate",
        "0.02",
        "--steps",
        "300",
    )
    assert out["epsilon"] <= 2.0
    below = GaussianEvent(noise_multiplier=out["noise_multiplier"] * 0.99, sample_rate=0.02, steps=300)
    assert epsilon_of([below], delta=1e-5, accountant="pld") > 2.0, "1% less noise must overshoot: tight"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sample-rate", "1.5"], "--sample-rate"),
        (["--sample-rate", "0"], "--sample-rate"),
        (["--delta", "1"], "--delta"),
        (["--noise-multiplier", "-1"], "--noise-multiplier"),
        (["--steps", "0"], "--steps"),
        (["--accountant", "gdp"], "--accountant"),
    ],
)
def test_bad_epsilon_arguments_give_one_line_and_exit_2(tmp_path, args, fragment):
    base = {"--noise-multiplier": "1", "--sample-rate": "0.1", "--steps": "10", "--delta": "1e-5"}
    merged = {**base, **dict(zip(args[::2], args[1::2], strict=True))}
    flat = [item for pair in merged.items() for item in pair]
    assert_one_line_error(run_fedlab("privacy", "epsilon", *flat, cwd=tmp_path), fragment)


def test_sweep_writes_table_and_plot(tmp_path):
    out = tmp_path / "sweep"
    result = run_fedlab(
        "sweep",
        str(REPO / "simulations" / "digits-dp.toml"),
        "--epsilons",
        "2,inf",
        "--out",
        str(out),
        "--set",
        "run.rounds=2",
        "--set",
        'simulation.backend="inline"',
        "--set",
        "data.num_clients=4",
        "--set",
        "train.batch_size=32",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = (out / "sweep.csv").read_text().splitlines()
    assert lines[0] == "epsilon,accuracy_mean,accuracy_std,seeds,rounds,noise_multiplier,epsilon_spent"
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "inf"]
    assert float(lines[1].split(",")[-1]) <= 2.0
    assert (out / "sweep.md").read_text().startswith("| epsilon |")
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
