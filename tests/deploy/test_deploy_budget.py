"""The device's own budget: persisted whole rounds, and the refusal rule (no network)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError, LedgerError
from fedlab.flower.deploy import DeploymentError, load_federation
from fedlab.flower.edge import device_settings, plan_round
from fedlab.privacy.client_budget import ClientBudget, RefusalRow, SpendRow
from fedlab.training.accounting import PrivacyStep, epsilon_from_history

CONFIG = config_from_dict(
    {
        "run": {"rounds": 3},
        "train": {"batch_size": 32, "local_epochs": 1},
        "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "delta": 1e-5, "accountant": "rdp"},
    }
)


def test_budget_stores_run_ids_beyond_signed_64_bits(tmp_path):
    # Flower run ids are unsigned 64-bit; SQLite INTEGER is signed.
    big = 2**64 - 1
    row = SpendRow(run_id=big, server_round=1, noise_multiplier=1.0, sample_rate=0.05, steps=18, epsilon=2.5)
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        budget.commit_spend(row)
        budget.record_refusal(RefusalRow(run_id=big, server_round=2, planned_epsilon=3.0, max_epsilon=2.8))
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        assert budget.spends() == [row]
        assert budget.refusals()[0].run_id == big
        with pytest.raises(LedgerError, match="already spent"):
            budget.commit_spend(row)


def test_budget_persists_across_reopen_and_never_records_a_round_twice(tmp_path):
    path = tmp_path / "budget.sqlite"
    row = SpendRow(run_id=7, server_round=1, noise_multiplier=1.0, sample_rate=0.05, steps=18, epsilon=2.5)
    with ClientBudget.open(path) as budget:
        budget.commit_spend(row)
        budget.record_refusal(RefusalRow(run_id=7, server_round=2, planned_epsilon=3.0, max_epsilon=2.8))
    with ClientBudget.open(path) as budget:
        assert budget.spends() == [row]
        assert [r.server_round for r in budget.refusals()] == [2]
        with pytest.raises(LedgerError, match="already spent"):
            budget.commit_spend(row)
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError):
        ClientBudget.open(tmp_path / "other.sqlite")


def test_plan_round_refuses_exactly_when_the_next_round_would_exceed_the_maximum():
    step = PrivacyStep(noise_multiplier=1.0, sample_rate=32 / 600, steps=600 // 32)
    eps1 = epsilon_from_history([step], delta=1e-5, accountant="rdp")
    eps2 = epsilon_from_history([step, step], delta=1e-5, accountant="rdp")
    first = plan_round(CONFIG, 600, (), max_epsilon=(eps1 + eps2) / 2)
    assert first.allowed and first.planned_epsilon == pytest.approx(eps1)
    second = plan_round(CONFIG, 600, (step,), max_epsilon=(eps1 + eps2) / 2)
    assert not second.allowed and second.planned_epsilon == pytest.approx(eps2)
    assert plan_round(CONFIG, 600, (step,), max_epsilon=math.inf).allowed
    no_dp = CONFIG.replace(dp=CONFIG.dp.__class__(mode="none"))
    assert not plan_round(no_dp, 600, (), max_epsilon=10.0).allowed  # a noiseless release is infinite


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
