"""The device's own budget: persisted whole rounds, old files migrated, and the refusal rule (no network)."""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3

import pytest

from fedlab.core.errors import ConfigError, LedgerError
from fedlab.flower.deploy import DeploymentError, load_federation, node_config, read_device_settings
from fedlab.flower.edge import device_settings
from fedlab.privacy.client_budget import ChargeRow, ClientBudget, RefusalRow, ReleaseRow
from fedlab.privacy.events import GaussianEvent
from fedlab.training.accounting import epsilon_from_history
from fedlab.training.device_budget import (
    DPSGD,
    Charge,
    DevicePolicy,
    charge_of,
    commit,
    decide,
    device_epsilon,
)

STEP = {"noise_multiplier": 1.0, "sample_rate": 0.05, "steps": 18}


def released(run_id: int, server_round: int, epsilon: float = 2.5) -> tuple[ReleaseRow, ChargeRow]:
    return (
        ReleaseRow(run_id=run_id, server_round=server_round, mechanism="dpsgd"),
        ChargeRow(run_id=run_id, server_round=server_round, mechanism="dpsgd", params=STEP, epsilon=epsilon),
    )


def test_budget_stores_run_ids_beyond_signed_64_bits(tmp_path):
    # Flower run ids are unsigned 64-bit; SQLite INTEGER is signed.
    big = 2**64 - 1
    release, charge = released(big, 1)
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        budget.commit_release(release, charge)
        budget.record_refusal(RefusalRow(run_id=big, server_round=2, planned_epsilon=3.0, max_epsilon=2.8))
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        assert budget.releases() == [release] and budget.charges() == [charge]
        assert budget.refusals()[0].run_id == big and budget.released(big, 1)
        with pytest.raises(LedgerError, match="already released"):
            budget.commit_release(release, charge)


def test_budget_persists_across_reopen_and_never_records_a_round_twice(tmp_path):
    path = tmp_path / "budget.sqlite"
    release, charge = released(7, 1)
    uncharged = ReleaseRow(run_id=7, server_round=2, mechanism="dp-fedavg")
    with ClientBudget.open(path) as budget:
        budget.commit_release(release, charge)
        budget.commit_release(uncharged)  # a later central round: released, not charged
        budget.record_refusal(
            RefusalRow(run_id=7, server_round=3, planned_epsilon=math.inf, max_epsilon=2.8, reason="why")
        )
    with ClientBudget.open(path) as budget:
        assert budget.releases() == [release, uncharged] and budget.charges() == [charge]
        assert [(r.server_round, r.planned_epsilon, r.reason) for r in budget.refusals()] == [
            (3, math.inf, "why")
        ]
        with pytest.raises(LedgerError, match="already released"):
            budget.commit_release(uncharged)
        # A release and its charge are one transaction: a bad charge leaves no release either.
        with pytest.raises(LedgerError, match="epsilon must be >= 0"):
            budget.commit_release(*released(7, 4, epsilon=-0.1))
        with pytest.raises(LedgerError, match="must belong to the round"):
            budget.commit_release(released(7, 5)[0], released(7, 6)[1])
        assert not budget.released(7, 4) and not budget.released(7, 5)
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError):
        ClientBudget.open(tmp_path / "other.sqlite")


def write_first_schema(path) -> None:
    """A budget file exactly as the first schema wrote it (raw SQL, no fedlab code)."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA application_id=1178878786")  # 0x46444342, "FDCB"
        conn.executescript(
            """
            CREATE TABLE spend (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, server_round INTEGER NOT NULL,
                noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
                sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
                steps INTEGER NOT NULL CHECK (steps >= 1), epsilon REAL NOT NULL, committed_at TEXT NOT NULL,
                UNIQUE (run_id, server_round));
            CREATE TABLE refusal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, server_round INTEGER NOT NULL,
                planned_epsilon REAL NOT NULL, max_epsilon REAL NOT NULL, refused_at TEXT NOT NULL);
            INSERT INTO spend VALUES (1, '18446744073709551615', 1, 1.0, 0.05, 18, 2.0, '2025-01-01');
            INSERT INTO spend VALUES (2, '18446744073709551615', 2, 1.0, 0.05, 18, -0.3, '2025-01-02');
            INSERT INTO refusal VALUES (1, '5', 9, 9.5, 8.0, '2025-01-01T00:02:00+00:00');
            """
        )


def test_a_budget_file_of_the_first_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "budget.sqlite"
    write_first_schema(path)
    big = 2**64 - 1
    for _ in range(2):  # the second open finds it migrated already
        with ClientBudget.open(path) as budget:
            assert [(r.run_id, r.server_round, r.mechanism) for r in budget.releases()] == [
                (big, 1, "dpsgd"), (big, 2, "dpsgd"),
            ]  # fmt: skip
            charges = budget.charges()
            assert [c.params for c in charges] == [STEP, STEP]
            assert [c.epsilon for c in charges] == [2.0, 0.0]  # a negative epsilon is clamped
            assert [(r.server_round, r.reason) for r in budget.refusals()] == [(9, "")]
            assert budget.released(big, 2) and not budget.released(big, 3)
    # The history is the DP-SGD steps it held: the same epsilon as Opacus gives for them.
    history = [charge_of(c) for c in charges]
    step = GaussianEvent(noise_multiplier=1.0, sample_rate=0.05, steps=18)
    assert history == [Charge(mechanism=DPSGD, event=step)] * 2
    assert device_epsilon(history, delta=1e-5) == epsilon_from_history(
        [step, step], delta=1e-5, accountant="rdp"
    )
    with sqlite3.connect(path) as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "spend" not in tables and conn.execute("PRAGMA user_version").fetchone()[0] == 2
    with ClientBudget.open(path) as budget:  # and it goes on
        budget.commit_release(*released(big, 3))
        assert len(budget.charges()) == 3


def test_the_rule_refuses_exactly_when_the_next_round_would_exceed_the_maximum(tmp_path):
    event = GaussianEvent(noise_multiplier=1.0, sample_rate=32 / 600, steps=600 // 32)
    step = Charge(mechanism=DPSGD, event=event)
    eps1 = epsilon_from_history([event], delta=1e-5, accountant="rdp")
    eps2 = epsilon_from_history([event, event], delta=1e-5, accountant="rdp")
    policy = DevicePolicy(max_epsilon=(eps1 + eps2) / 2)
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        first = decide(budget, policy, run_id=1, server_round=1, charge=step)
        assert first.refusal is None and first.epsilon == pytest.approx(eps1)
        commit(budget, first, run_id=1, server_round=1)
        second = decide(budget, policy, run_id=1, server_round=2, charge=step)
        assert second.refusal is not None and "budget spent" in second.refusal
        assert second.on_record and second.epsilon == pytest.approx(eps2)
        unlimited = DevicePolicy()
        assert decide(budget, unlimited, run_id=1, server_round=2, charge=step).refusal is None
        again = decide(budget, unlimited, run_id=1, server_round=1, charge=step)
        assert again.refusal is not None and "already released" in again.refusal and not again.on_record
        with pytest.raises(LedgerError):
            commit(budget, second, run_id=1, server_round=2)  # a refusal is never committed
        assert [json.dumps(c.params, sort_keys=True) for c in budget.charges()] == [
            json.dumps({"noise_multiplier": 1.0, "sample_rate": 32 / 600, "steps": 18}, sort_keys=True)
        ]


def test_the_device_rule_travels_in_the_node_config_and_the_settings_file(tmp_path):
    from fedlab.flower.deploy import ClientLaunch, check_client_launch

    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    launch = ClientLaunch(
        server="127.0.0.1:9092", root_cert=None, key=None, data=tmp_path / "d.csv", state_dir=tmp_path,
        device_id="pi", insecure=True, max_epsilon=8.0, delta=1e-6, allow_non_private=True,
    )  # fmt: skip
    from flwr.common.config import parse_config_args

    parsed = device_settings(parse_config_args([node_config(launch)]))
    assert (parsed.max_epsilon, parsed.delta, parsed.allow_non_private) == (8.0, 1e-6, True)
    default = device_settings(
        parse_config_args([node_config(dataclasses.replace(launch, allow_non_private=False))])
    )
    assert default.allow_non_private is False
    for bad in (0.0, 0.5, math.nan):
        with pytest.raises(DeploymentError, match=r"^--delta: must be in \(0, 0\.1\]"):
            check_client_launch(dataclasses.replace(launch, delta=bad))
    settings = tmp_path / "device.toml"
    settings.write_text("[device]\ndelta = 1e-6\nallow_non_private = true\n")
    assert read_device_settings(settings) == {"delta": 1e-6, "allow_non_private": True}
    settings.write_text('[device]\nallow_non_private = "yes"\n')
    with pytest.raises(ConfigError, match=r"^device\.allow_non_private: must be true or false"):
        read_device_settings(settings)
    with pytest.raises(ConfigError, match=r"^node config 'delta': must be in \(0, 0\.1\]"):
        device_settings({"data-path": "d.csv", "state-dir": "s", "device-id": "pi", "delta": 0.0})


def test_device_settings_and_federation_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="device-id"):
        device_settings({"data-path": "d.csv", "state-dir": "s"})
    bad = tmp_path / "f.toml"
    bad.write_text('[deployment]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match=r"deployment\.host: .*Control API"):
        load_federation(bad)
    bad.write_text("[deployment]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"deployment\.bogus: unknown key"):
        load_federation(bad)
    bad.write_text("[run]\nrounds = 2\n")
    with pytest.raises(ConfigError, match=r"missing the \[deployment\] table"):
        load_federation(bad)


def test_the_heartbeat_interval_is_a_fedlab_option_within_flowers_bounds(tmp_path):
    from fedlab.flower.deploy import HEARTBEAT_INTERVAL, ClientLaunch, check_client_launch, supernode_command

    (tmp_path / "d.csv").write_text("a,label\n1,0\n")
    launch = ClientLaunch(
        server="127.0.0.1:9092",
        root_cert=None,
        key=None,
        data=tmp_path / "d.csv",
        state_dir=tmp_path,
        device_id="pi",
        insecure=True,
    )
    command = supernode_command(launch, runtime_port=5000)
    assert command[1:6] == ["-m", "fedlab.flower.deploy", "supernode", "--heartbeat-interval", "10.0"]
    assert HEARTBEAT_INTERVAL == 10.0 and "--superlink" in command
    with pytest.raises(DeploymentError, match=r"--heartbeat-interval: must be in \[10, 1800\] seconds"):
        check_client_launch(dataclasses.replace(launch, heartbeat_interval=5.0))
