"""A device's data on another scale than the server's is trained, but not silently (no network)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from fedlab.core.config import config_from_dict
from fedlab.flower.records import FEATURE_RANGE

from . import edge_messages
from .conftest import write_partitions
from .edge_messages import device, train_message

task_identity = pytest.fixture(autouse=True)(edge_messages.task_identity)

CONFIG = config_from_dict(
    {
        "run": {"rounds": 3},
        "model": {"kind": "logreg"},
        "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
    }
)


def scaling_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "scale them as the server does" in r.getMessage()]


def test_a_device_whose_features_are_not_scaled_like_the_servers_says_so_once(tmp_path, caplog):
    (scaled, raw) = write_partitions(tmp_path, 2)
    frame = pd.read_csv(raw)
    frame[[c for c in frame.columns if c != "label"]] *= 16.0  # the digits' raw 0..16 pixels
    frame.to_csv(raw, index=False)
    announced = {FEATURE_RANGE: [0.0, 1.0]}
    with caplog.at_level(logging.WARNING, logger="fedlab.client"):
        client, context = device(CONFIG, raw, tmp_path / "raw", max_epsilon=50.0)
        for server_round in (1, 2):
            assert not client.train(train_message(CONFIG, server_round, **announced), context).has_error()
        assert scaling_warnings(caplog) == [
            "device pi-1: features span [0, 16] but the server expects about [0, 1]; "
            "scale them as the server does (fedlab data split writes such files)"
        ]
        caplog.clear()
        client, context = device(CONFIG, scaled, tmp_path / "scaled", max_epsilon=50.0)
        assert not client.train(train_message(CONFIG, 1, **announced), context).has_error()
        assert scaling_warnings(caplog) == []
