"""Reopening a run directory: the config check, the metrics repair, histories from ledger rows."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.checkpoint import Checkpoint
from fedlab.core.errors import LedgerError
from fedlab.privacy.events import GaussianEvent
from fedlab.training.run_resume import config_changes, histories_from_rows, repair_metrics


def test_config_changes_name_every_changed_added_and_removed_key() -> None:
    old = {"run": {"rounds": 3, "seed": 0}, "dp": {"mode": "dpsgd"}}
    new = {"run": {"rounds": 4, "seed": 0}, "dp": {"mode": "dpsgd", "delta": 1e-5}}
    assert config_changes(old, new) == ["dp.delta (unset -> 1e-05)", "run.rounds (3 -> 4)"]
    assert config_changes(old, json.loads(json.dumps(old))) == []


def line(round_num: int) -> dict:
    return {"round": round_num, "accuracy": 0.5, "loss": 1.0, "train_loss": None, "epsilon_max": None,
            "epsilon_mean": None, "clients": 3, "seconds": 0.1, "failures": 0}  # fmt: skip


def write(path: Path, rows: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def checkpoint(round_num: int) -> Checkpoint:
    return Checkpoint(
        round_num=round_num, weights=(np.zeros(1, np.float32),), state={"metrics": line(round_num)}
    )


def test_a_torn_line_is_dropped_and_the_committed_round_written_from_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, [line(1), line(2)], torn='{"round": 3, "accur')
    history = repair_metrics(path, checkpoint(3))
    assert [m.round for m in history] == [1, 2, 3]
    assert [json.loads(x)["round"] for x in path.read_text().splitlines()] == [1, 2, 3]
    assert history[0].extra == {"failures": 0} and np.isnan(history[0].train_loss)


def test_a_line_of_an_uncommitted_round_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, [line(1), line(2), line(3)])
    assert [m.round for m in repair_metrics(path, checkpoint(2))] == [1, 2]
    assert len(path.read_text().splitlines()) == 2


def test_a_missing_earlier_line_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write(path, [line(1), line(3)])
    with pytest.raises(LedgerError, match="missing or repeated"):
        repair_metrics(path, checkpoint(3))


def test_histories_merge_a_clients_rows_as_opacus_merges_steps() -> None:
    rows = [
        ("a", 1.0, 0.1, 3), ("b", 1.0, 0.2, 2),  # round 1
        ("a", 1.0, 0.1, 3),  # round 2: same (z, q): the entry grows
        ("a", 1.5, 0.1, 1), ("c", 0.0, 1.0, 1),  # round 3: a new z; c trained without DP-SGD
    ]  # fmt: skip
    assert histories_from_rows(rows) == {
        "a": (GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=6),
              GaussianEvent(noise_multiplier=1.5, sample_rate=0.1, steps=1)),
        "b": (GaussianEvent(noise_multiplier=1.0, sample_rate=0.2, steps=2),),
    }  # fmt: skip
