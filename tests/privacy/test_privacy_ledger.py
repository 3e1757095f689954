"""The privacy ledger: commit/read, refusals that change nothing, bad files."""

import hashlib
import json
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.errors import LedgerError
from fedlab.privacy import (
    ClientSpend,
    ClientTotal,
    FederationSpend,
    FederationTotal,
    PrivacyLedger,
    read_ledger_summary,
)


def spend(client_id: str, epsilon: float, steps: int = 10) -> ClientSpend:
    return ClientSpend(
        client_id=client_id, noise_multiplier=1.1, sample_rate=0.01, steps=steps, epsilon=epsilon
    )


def fed(epsilon: float, mechanism: str = "dp-fedavg") -> FederationSpend:
    return FederationSpend(
        mechanism=mechanism, noise_multiplier=0.9, sample_rate=0.1, steps=1, epsilon=epsilon
    )


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "privacy.sqlite"


@pytest.fixture
def ledger(ledger_path: Path) -> Iterator[PrivacyLedger]:
    ledger_path.parent.mkdir()
    with PrivacyLedger.create(
        ledger_path, run_name="demo", delta=1e-5, config_json='{"rounds": 3}'
    ) as created:
        created.commit_round(1, [spend("a", 0.5), spend("b", 0.4)], [fed(0.2)])
        created.commit_round(2, [spend("a", 0.9), spend("c", 0.3, steps=5)], [fed(0.3)])
    opened = PrivacyLedger.open(ledger_path)
    yield opened
    opened.close()


def snapshot(path: Path) -> tuple[list[str], dict[str, str]]:
    """The ledger's logical content and the bytes of every file SQLite keeps for it."""
    conn = sqlite3.connect(path)
    try:
        dump = list(conn.iterdump())
    finally:
        conn.close()
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.glob(path.name + "*"))
    }
    files.pop(path.name + "-shm", None)  # shared-memory index, not data
    return dump, files


def test_commit_and_read_back(ledger: PrivacyLedger) -> None:
    assert ledger.last_round() == 2
    meta = ledger.meta()
    assert (meta["run_name"], meta["delta"], meta["config_json"]) == ("demo", 1e-5, '{"rounds": 3}')
    assert meta["created_at"].endswith("+00:00")
    rounds = ledger.rounds()
    assert [(r.round, r.num_clients, r.epsilon_max) for r in rounds] == [(1, 2, 0.5), (2, 2, 0.9)]
    assert rounds[0].epsilon_mean == pytest.approx(0.45)
    assert rounds[0].committed_at <= rounds[1].committed_at
    assert ledger.client_totals() == [
        ClientTotal(client_id="a", rounds=2, total_steps=20, epsilon=0.9, last_round=2),
        ClientTotal(client_id="b", rounds=1, total_steps=10, epsilon=0.4, last_round=1),
        ClientTotal(client_id="c", rounds=1, total_steps=5, epsilon=0.3, last_round=2),
    ]
    assert ledger.federation_totals() == [
        FederationTotal(mechanism="dp-fedavg", rounds=2, total_steps=2, epsilon=0.3, last_round=2)
    ]


def test_summary_is_json_serializable(ledger: PrivacyLedger, ledger_path: Path) -> None:
    summary = json.loads(json.dumps(read_ledger_summary(ledger_path)))
    assert summary["run_name"] == "demo"
    assert summary["delta"] == 1e-5
    assert summary["rounds_committed"] == 2
    assert summary["epsilon_max"] == 0.9
    assert summary["epsilon_mean"] == pytest.approx((0.9 + 0.4 + 0.3) / 3)
    assert [c["client_id"] for c in summary["clients"]] == ["a", "b", "c"]
    assert summary["federation"][0]["epsilon"] == 0.3
    assert [r["round"] for r in summary["rounds"]] == [1, 2]


def test_empty_ledger(ledger_path: Path) -> None:
    ledger_path.parent.mkdir()
    PrivacyLedger.create(ledger_path, run_name="empty", delta=1e-6, config_json="{}").close()
    summary = read_ledger_summary(ledger_path)
    assert summary["rounds_committed"] == 0
    assert summary["epsilon_max"] is None
    assert summary["clients"] == summary["federation"] == summary["rounds"] == []


def test_round_without_clients(ledger: PrivacyLedger) -> None:
    ledger.commit_round(3, [])
    assert ledger.rounds()[-1].num_clients == 0
    assert ledger.rounds()[-1].epsilon_max is None


@pytest.mark.parametrize("round_num", [1, 2, 4, 10, 0, -1])
def test_duplicate_or_out_of_order_round_is_refused_and_file_unchanged(
    ledger: PrivacyLedger, ledger_path: Path, round_num: int
) -> None:
    before = snapshot(ledger_path)
    with pytest.raises(LedgerError) as err:
        ledger.commit_round(round_num, [spend("a", 5.0)])
    assert "\n" not in str(err.value)
    assert snapshot(ledger_path) == before
    assert ledger.last_round() == 2
    ledger.commit_round(3, [spend("a", 1.2)])  # the ledger stays usable
    assert ledger.last_round() == 3


def test_refusal_messages_say_why(ledger: PrivacyLedger) -> None:
    with pytest.raises(LedgerError, match="round 2 is already committed"):
        ledger.commit_round(2, [])
    with pytest.raises(LedgerError, match="expected 3"):
        ledger.commit_round(5, [])


@pytest.mark.parametrize(
    ("clients", "federation"),
    [
        ([spend("a", 1.0), spend("a", 1.1)], []),
        ([spend("a", 1.0)], [fed(0.4), fed(0.5)]),
    ],
)
def test_repeated_ids_in_a_round_are_refused_and_file_unchanged(
    ledger: PrivacyLedger, ledger_path: Path, clients: list[ClientSpend], federation: list[FederationSpend]
) -> None:
    before = snapshot(ledger_path)
    with pytest.raises(LedgerError, match="twice"):
        ledger.commit_round(3, clients, federation)
    assert snapshot(ledger_path) == before


def test_bad_round_number_types_are_refused(ledger: PrivacyLedger) -> None:
    for bad in (3.0, True, "3"):
        with pytest.raises(LedgerError, match="round number"):
            ledger.commit_round(bad, [])  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="ClientSpend"):
        ledger.commit_round(3, [fed(0.1)])  # type: ignore[list-item]


def test_stale_second_handle_cannot_commit_the_same_round(ledger: PrivacyLedger, ledger_path: Path) -> None:
    with PrivacyLedger.open(ledger_path) as other:
        ledger.commit_round(3, [spend("a", 1.0)])
        with pytest.raises(LedgerError, match="already committed"):
            other.commit_round(3, [spend("b", 1.0)])
        other.commit_round(4, [spend("b", 1.0)])
    assert ledger.last_round() == 4


def test_resumed_run_continues_from_last_round(ledger: PrivacyLedger, ledger_path: Path) -> None:
    ledger.close()
    with PrivacyLedger.open(ledger_path) as resumed:
        assert resumed.last_round() == 2
        resumed.commit_round(resumed.last_round() + 1, [spend("b", 0.8)])
    with PrivacyLedger.open(ledger_path) as again:
        assert again.last_round() == 3
        assert {c.client_id: c.rounds for c in again.client_totals()} == {"a": 2, "b": 2, "c": 1}


def test_client_epsilon_is_never_under_counted(ledger: PrivacyLedger) -> None:
    ledger.commit_round(3, [spend("a", 0.1)])  # a (buggy) lower cumulative epsilon later
    totals = {c.client_id: c for c in ledger.client_totals()}
    assert totals["a"].epsilon == 0.9
    assert totals["a"].last_round == 3


def test_create_refuses_to_overwrite(ledger: PrivacyLedger, ledger_path: Path, tmp_path: Path) -> None:
    before = snapshot(ledger_path)
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(ledger_path, run_name="again", delta=1e-5, config_json="{}")
    assert snapshot(ledger_path) == before
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    with pytest.raises(LedgerError, match="already exists"):
        PrivacyLedger.create(other, run_name="x", delta=1e-5, config_json="{}")
    assert other.read_text() == "keep me"


def test_create_validates_delta_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="delta"):
        PrivacyLedger.create(tmp_path / "l.sqlite", run_name="x", delta=0.0, config_json="{}")
    assert not (tmp_path / "l.sqlite").exists()
    with pytest.raises(LedgerError, match="cannot create"):
        PrivacyLedger.create(tmp_path / "missing" / "l.sqlite", run_name="x", delta=1e-5, config_json="{}")


def test_ledger_uses_wal(ledger: PrivacyLedger, ledger_path: Path) -> None:
    conn = sqlite3.connect(ledger_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def one_line_error(path: Path) -> str:
    with pytest.raises(LedgerError) as err:
        PrivacyLedger.open(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_open_missing_file(tmp_path: Path) -> None:
    assert "not found" in one_line_error(tmp_path / "nope.sqlite")
    assert not (tmp_path / "nope.sqlite").exists()
    assert "not found" in one_line_error(tmp_path)  # a directory


def test_open_non_ledger_files(tmp_path: Path) -> None:
    text = tmp_path / "text.sqlite"
    text.write_text("this is not a database, just some text that is long enough " * 20)
    assert "file is not a database" in one_line_error(text)
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    assert "not a fedlab privacy ledger" in one_line_error(empty)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    assert "not a fedlab privacy ledger" in one_line_error(other)
    assert other.read_bytes() == before  # opening never modifies someone else's file


def test_open_detects_tampering(ledger: PrivacyLedger, ledger_path: Path) -> None:
    ledger.close()
    conn = sqlite3.connect(ledger_path)
    conn.execute("DELETE FROM client_spend WHERE round = 2 AND client_id = 'c'")
    conn.commit()
    conn.close()
    assert "round 2 has a different number of rows" in one_line_error(ledger_path)


def test_open_detects_gap_in_rounds(ledger: PrivacyLedger, ledger_path: Path) -> None:
    ledger.close()
    conn = sqlite3.connect(ledger_path)
    conn.execute("UPDATE rounds SET round = 5 WHERE round = 2")
    conn.commit()
    conn.close()
    assert "not contiguous" in one_line_error(ledger_path)


def test_spend_records_are_keyword_only_validated_and_normalised() -> None:
    with pytest.raises(TypeError):
        ClientSpend("a", 1.0, 0.1, 1, 0.5)  # type: ignore[misc]
    for kwargs in [
        {"client_id": ""},
        {"client_id": 7},
        {"noise_multiplier": -1.0},
        {"sample_rate": 0.0},
        {"steps": 0},
        {"steps": 1.0},
        {"epsilon": -0.1},
        {"epsilon": math.nan},
    ]:
        base = {"client_id": "a", "noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "epsilon": 0.5}
        with pytest.raises(ValueError):
            ClientSpend(**{**base, **kwargs})  # type: ignore[arg-type]
    record = ClientSpend(
        client_id="a",
        noise_multiplier=np.float32(1.0),
        sample_rate=np.float64(0.1),
        steps=np.int64(3),
        epsilon=np.float32(0.5),
    )
    assert (type(record.noise_multiplier), type(record.steps), type(record.epsilon)) == (float, int, float)
    noiseless = FederationSpend(
        mechanism="m", noise_multiplier=0.0, sample_rate=1.0, steps=1, epsilon=math.inf
    )
    assert noiseless.epsilon == math.inf


def test_numpy_values_and_infinite_epsilon_are_stored(ledger: PrivacyLedger) -> None:
    record = ClientSpend(
        client_id="np",
        noise_multiplier=np.float32(1.0),
        sample_rate=np.float64(0.1),
        steps=np.int64(3),
        epsilon=np.float32(0.5),
    )
    ledger.commit_round(
        3,
        [record],
        [FederationSpend(mechanism="m", noise_multiplier=0.0, sample_rate=1.0, steps=1, epsilon=math.inf)],
    )
    assert {c.client_id: c.total_steps for c in ledger.client_totals()}["np"] == 3
    assert {f.mechanism: f.epsilon for f in ledger.federation_totals()}["m"] == math.inf


def test_context_manager_closes(ledger_path: Path) -> None:
    ledger_path.parent.mkdir()
    with PrivacyLedger.create(ledger_path, run_name="x", delta=1e-5, config_json="{}") as created:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        created.last_round()
    created.close()  # idempotent
