"""``run.tensorboard = true``: the event files hold the same per-round numbers as metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline
from fedlab.training.tensorboard_log import TENSORBOARD_DIR

REPO = Path(__file__).resolve().parents[2]


def test_every_rounds_accuracy_and_epsilon_go_to_tensorboard(tmp_path: Path) -> None:
    config = load_config(
        REPO / "simulations" / "digits-dp.toml",
        ["run.rounds=3", "run.tensorboard=true", "simulation.workers=0"],
    )
    simulate_inline(config, tmp_path / "run", SilentObserver())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / TENSORBOARD_DIR))
    events.Reload()
    for tag, key in (
        ("accuracy", "accuracy"),
        ("epsilon/max", "epsilon_max"),
        ("epsilon/mean", "epsilon_mean"),
    ):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)  # float32


def test_without_the_key_no_event_files_are_written(tmp_path: Path) -> None:
    config = load_config(REPO / "simulations" / "digits-dp.toml", ["run.rounds=1", "simulation.workers=0"])
    simulate_inline(config, tmp_path / "run", SilentObserver())
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()
