"""Checkpoints in the ledger: committed with their round or not at all, only the latest kept."""

import sqlite3
from pathlib import Path

import pytest

from fedlab.core.errors import LedgerError
from fedlab.privacy import ClientSpend, PrivacyLedger


def spend(client_id: str) -> ClientSpend:
    return ClientSpend(client_id=client_id, noise_multiplier=1.0, sample_rate=0.1, steps=3, epsilon=0.5)


def test_the_checkpoint_goes_with_its_round_and_replaces_the_last(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger.create(path, run_name="r", delta=1e-5, config_json="{}") as ledger:
        assert ledger.checkpoint() is None
        ledger.commit_round(1, [spend("a")], checkpoint=b"one")
        ledger.commit_round(2, [spend("a"), spend("b")], checkpoint=b"two")
        assert ledger.checkpoint() == b"two"
        with pytest.raises(LedgerError):  # a refused round leaves the committed checkpoint
            ledger.commit_round(2, [spend("c")], checkpoint=b"bad")
        assert ledger.checkpoint() == b"two"
        ledger.commit_round(3, [])  # a round without a checkpoint: nothing to resume from
        assert ledger.checkpoint() is None
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM checkpoint").fetchone()[0] == 0


def test_rows_come_back_in_round_order(tmp_path: Path) -> None:
    with PrivacyLedger.create(tmp_path / "l.sqlite", run_name="r", delta=1e-5, config_json="{}") as ledger:
        ledger.commit_round(1, [spend("b"), spend("a")])
        ledger.commit_round(2, [spend("a")])
        assert [row[0] for row in ledger.client_rows()] == ["a", "b", "a"]


def test_a_version_1_ledger_opens_and_gains_an_empty_checkpoint_table(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with PrivacyLedger.create(path, run_name="r", delta=1e-5, config_json="{}") as ledger:
        ledger.commit_round(1, [spend("a")], checkpoint=b"x")
    with sqlite3.connect(path) as conn:  # as fedlab before checkpoints wrote it
        conn.execute("DROP TABLE checkpoint")
        conn.execute("PRAGMA user_version = 1")
    with PrivacyLedger.open(path) as ledger:
        assert ledger.last_round() == 1 and ledger.checkpoint() is None
        ledger.commit_round(2, [spend("a")], checkpoint=b"y")
        assert ledger.checkpoint() == b"y"
