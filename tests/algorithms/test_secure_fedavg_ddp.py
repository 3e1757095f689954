"""Distributed DP under secure aggregation: the ledger's epsilon equals an independent Skellam computation."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedlab.algorithms.runs import run_configured
from fedlab.core.errors import ConfigError
from fedlab.core.metrics import SilentObserver
from fedlab.privacy.skellam import SkellamAccountant, SkellamEvent, SkellamParams
from fedlab.training.models import build_model, get_weights
from fedlab.training.recorder import LEDGER_FILE, METRICS_FILE, RunRecorder

from .secure_local_transport import LocalSecureTransport
from .test_secure_fedavg_rounds import NUM_CLIENTS, MemoryRecorder, make_config

DDP = {"mode": "distributed", "target_epsilon": 4.0, "delta": 1e-5, "clip_norm": 0.5}


def test_ddp_epsilon_in_ledger_equals_independent_skellam_accounting(tmp_path: Path) -> None:
    config = make_config(
        run={"rounds": 3},
        dp=DDP,
        secagg={"bits": 20, "min_survivors": 0.8, "simulate_dropout": 0.0},
        train={"lr": 0.5},
    )
    transport = LocalSecureTransport(config, dropouts={2: {0: {"0", "1", "2"}}})  # round 2 aborts
    fed = transport.federated
    model = build_model(
        "logreg", feature_shape=fed.feature_shape, num_classes=fed.num_classes, hidden=64, seed=3
    )
    recorder = RunRecorder(
        run_dir=tmp_path / "run", config=config, model=model, test_set=fed.test, observer=SilentObserver()
    )
    outcome = run_configured(
        config,
        transport=transport,
        recorder=recorder,
        initial_weights=get_weights(model),
        num_clients=NUM_CLIENTS,
    )
    summary = recorder.finish(stopped_because=outcome.stopped_because)
    with sqlite3.connect(tmp_path / "run" / LEDGER_FILE) as db:
        rows = db.execute(
            "SELECT round, mechanism, noise_multiplier, sample_rate, steps, epsilon"
            " FROM federation_spend ORDER BY round"
        ).fetchall()
    released = [r for r in rows if r[1] == "skellam-ddp-released"]
    rows = [r for r in rows if r[1] == "skellam-ddp"]  # against the server: the run's epsilon
    assert [r[0] for r in rows] == [r[0] for r in released] == [1, 3]  # round 2 aborted: no spend
    assert all(r[3] == 1.0 and r[4] == 1 for r in rows + released)  # q = 1 here
    z = rows[0][2]
    # Independently: 650 parameters, q = 1, cohort 6, at least ceil(0.8 * 6) = 5 noise shares, 20 bits.
    params = SkellamParams(clip=0.5, noise_multiplier=z, num_clients=6, min_survivors=5, bits=20, dim=650)
    accountant = SkellamAccountant()
    for _ in rows:
        accountant.compose(SkellamEvent(params=params, sample_rate=1.0, steps=1))
    assert rows[-1][5] == pytest.approx(accountant.epsilon(delta=1e-5), rel=1e-9)
    # Readers of the released models: add/remove, the noise topped up to all 6 shares.
    readers = SkellamAccountant()
    for _ in released:
        readers.compose(SkellamEvent(params=params, sample_rate=1.0, steps=1, num_survivors=6))
    assert released[-1][5] == pytest.approx(readers.epsilon(delta=1e-5), rel=1e-9)
    assert released[-1][5] < rows[-1][5]
    # Calibrated for 3 planned rounds: 2 released rounds spend less than the 4.0 target.
    assert rows[-1][5] < 4.0
    full = SkellamAccountant()
    full.compose(SkellamEvent(params=params, sample_rate=1.0, steps=3))
    assert 3.9 < full.epsilon(delta=1e-5) <= 4.0
    assert summary["epsilon_user"] == pytest.approx(rows[-1][5])
    metrics = [json.loads(line) for line in (tmp_path / "run" / METRICS_FILE).read_text().splitlines()]
    assert metrics[1]["aborted"] == "ADVERTISE_KEYS" and "abort_reason" in metrics[1]
    assert metrics[0]["denominator"] == 6.0
    assert math.isfinite(summary["accuracy"])


def test_ddp_budget_guard_stops_before_exceeding_max_epsilon(tmp_path: Path) -> None:
    config = make_config(
        run={"rounds": 3},
        dp={**DDP, "max_epsilon": 3.0},
        secagg={"bits": 20, "min_survivors": 0.8},
    )
    transport = LocalSecureTransport(config)
    weights = [np.zeros((10, 64), dtype=np.float32), np.zeros(10, dtype=np.float32)]
    recorder = MemoryRecorder()
    outcome = run_configured(
        config, transport=transport, recorder=recorder, initial_weights=weights, num_clients=NUM_CLIENTS
    )
    assert outcome.stopped_because.startswith("privacy budget")
    spent = [f.epsilon for *_, federation in recorder.released for f in federation]
    assert spent and max(spent) <= 3.0


def test_ddp_refuses_fixed_fraction_sampling_below_one() -> None:
    with pytest.raises(ConfigError, match=r"^server\.sampling"):
        make_config(dp=DDP, server={"fraction_train": 0.5, "sampling": "fraction"})
