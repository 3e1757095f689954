"""Attacks on a device's own budget by the server that stages the run's config (no network).

Each test plays a server that sends the real EdgeClient handlers a config (and round values) meant
to make the device release more than its owner allowed: a large delta, no noise, central DP. The
device's rule must hold whatever the server says.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest

from fedlab.core.config import config_from_dict
from fedlab.flower.client_privacy import BUDGET_REFUSED
from fedlab.flower.records import METRICS
from fedlab.privacy.accountants import epsilon_of
from fedlab.privacy.client_budget import ClientBudget
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.skellam import SKELLAM_RDP_ORDERS
from fedlab.secagg.encoding import FixedPointCodec

from . import edge_messages
from .conftest import write_partitions
from .edge_messages import advertise_message, device, train_message

task_identity = pytest.fixture(autouse=True)(edge_messages.task_identity)

BASE = {
    "run": {"rounds": 3},
    "model": {"kind": "logreg"},
    "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.5},
}


def config(**sections):
    return config_from_dict({**BASE, **sections})


def dpsgd(delta: float, noise: float = 1.0, **extra):
    return config(
        dp={"mode": "dpsgd", "noise_multiplier": noise, "max_grad_norm": 2.0, "delta": delta}, **extra
    )


def budget_of(state):
    return ClientBudget.open(state / "budget.sqlite")


@pytest.mark.parametrize("server_delta", [0.5, 0.9])
def test_a_server_delta_above_the_devices_is_refused(tmp_path, server_delta):
    data = write_partitions(tmp_path, 3)[0]
    # Opacus' conversion at delta 0.5 gives 0.22 and at 0.9 gives -1.84: both "within" 8.
    client, context = device(dpsgd(server_delta), data, tmp_path / "state", max_epsilon=8.0)
    reply = client.train(train_message(dpsgd(server_delta), 1), context)
    assert reply.has_error(), f"the device trained a round at the server's delta {server_delta}"
    assert reply.error.code == BUDGET_REFUSED and "delta" in reply.error.reason
    # The same at the key-advertising stage of a secure round: nothing (no key) leaves.
    secure = dpsgd(server_delta, secagg={"enabled": True})
    client, context = device(secure, data, tmp_path / "state", max_epsilon=8.0)
    codec = FixedPointCodec.for_sum(bits=32, clip=1.0, max_summands=3)
    reply = client.secagg(advertise_message(2, codec), context)
    assert reply.has_error() and reply.error.code == BUDGET_REFUSED and "delta" in reply.error.reason
    with budget_of(tmp_path / "state") as budget:
        assert budget.releases() == [] and budget.charges() == []
        assert [r.server_round for r in budget.refusals()] == [1, 2]
        assert all(r.planned_epsilon >= 0.0 for r in budget.refusals())


def test_the_devices_epsilon_is_never_negative(tmp_path):
    # So much noise that Opacus' RDP conversion at delta 0.1 goes below zero.
    data = write_partitions(tmp_path, 3)[0]
    noisy = dpsgd(0.1, noise=50.0)
    client, context = device(noisy, data, tmp_path / "state", delta=0.1)
    reply = client.train(train_message(noisy, 1), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    reported = reply.content.metric_records[METRICS]["epsilon"]
    assert reported >= 0.0, f"the device reported epsilon {reported}"
    with budget_of(tmp_path / "state") as budget:
        assert [c.epsilon for c in budget.charges()] == [0.0]


def test_a_noiseless_round_needs_the_devices_opt_in(tmp_path):
    data = write_partitions(tmp_path, 3)[0]
    plain = config(dp={"mode": "none"})
    client, context = device(plain, data, tmp_path / "a")  # no max epsilon
    reply = client.train(train_message(plain, 1), context)
    assert reply.has_error(), "the device released a noiseless update without opting in"
    assert reply.error.code == BUDGET_REFUSED and "non-private" in reply.error.reason
    # Under SecAgg+ too, at stage 0: a sum of noiseless updates is a noiseless release.
    secure = config(dp={"mode": "none"}, secagg={"enabled": True})
    client, context = device(secure, data, tmp_path / "a")
    codec = FixedPointCodec.for_sum(bits=32, clip=1.0, max_summands=3)
    reply = client.secagg(advertise_message(2, codec), context)
    assert reply.has_error() and reply.error.code == BUDGET_REFUSED and "non-private" in reply.error.reason
    with budget_of(tmp_path / "a") as budget:
        assert budget.releases() == []
    # With the opt-in and no limit it trains, and the release is on record (never twice).
    client, context = device(plain, data, tmp_path / "b", allow_non_private=True)
    assert not client.train(train_message(plain, 1), context).has_error()
    assert client.train(train_message(plain, 1), context).has_error()
    with budget_of(tmp_path / "b") as budget:
        assert [(r.server_round, r.mechanism) for r in budget.releases()] == [(1, "none")]
        assert [c.epsilon for c in budget.charges()] == [math.inf]
    # With the opt-in and a finite maximum, a noiseless release (infinite epsilon) is over budget.
    client, context = device(plain, data, tmp_path / "c", allow_non_private=True, max_epsilon=8.0)
    assert client.train(train_message(plain, 1), context).has_error()


def rdp_epsilon(z: float, q: float, rounds: int, delta: float) -> float:
    """Independently: dp_accounting's RDP accountant on the device's integer orders."""
    accountant = dp_accounting.rdp.RdpAccountant(orders=[float(a) for a in SKELLAM_RDP_ORDERS])
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


def test_a_central_round_is_charged_the_whole_run_once(tmp_path):
    data = write_partitions(tmp_path, 3)[0]
    z, q, rounds = 1.1, 0.5, 4
    central = config(
        run={"rounds": rounds},
        dp={"mode": "central", "noise_multiplier": z, "clip_norm": 1.0, "delta": 1e-5},
        server={"fraction_train": q},
    )
    values = {"clipping_norm": 1.0, "noise-multiplier": z, "sample-rate": q, "rounds": float(rounds)}
    whole_run = rdp_epsilon(z, q, rounds, 1e-5)
    assert whole_run >= epsilon_of([GaussianEvent(noise_multiplier=z, sample_rate=q, steps=rounds)],
                                   delta=1e-5, accountant="pld")  # fmt: skip
    client, context = device(central, data, tmp_path / "state", max_epsilon=8.0)
    first = client.train(train_message(central, 1, **values), context)
    assert not first.has_error(), f"the device refused a central round within budget: {first.error.reason}"
    second = client.train(train_message(central, 2, **values), context)
    assert not second.has_error()
    with budget_of(tmp_path / "state") as budget:
        assert [(r.server_round, r.mechanism) for r in budget.releases()] == [
            (1, "dp-fedavg"),
            (2, "dp-fedavg"),
        ]
        (charge,) = budget.charges()  # once per run, at its first participation
        assert charge.mechanism == "dp-fedavg" and charge.server_round == 1
        assert charge.epsilon == pytest.approx(whole_run, rel=1e-9)
    # Never twice; never beyond the announced rounds; never other settings within the run.
    assert "already released" in client.train(train_message(central, 2, **values), context).error.reason
    assert client.train(train_message(central, rounds + 1, **values), context).has_error()
    assert client.train(train_message(central, 3, **{**values, "noise-multiplier": 0.5}), context).has_error()
    # A central round without its public DP settings, or without noise, is refused.
    fresh, fresh_context = device(central, data, tmp_path / "other", max_epsilon=8.0)
    missing = {k: v for k, v in values.items() if k != "noise-multiplier"}
    assert fresh.train(train_message(central, 1, **missing), fresh_context).has_error()
    assert fresh.train(
        train_message(central, 1, **{**values, "noise-multiplier": 0.0}), fresh_context
    ).has_error()
    # A device whose maximum is below the whole run's epsilon refuses the first round, on record.
    small, small_context = device(central, data, tmp_path / "small", max_epsilon=whole_run / 2)
    refused = small.train(train_message(central, 1, **values), small_context)
    assert refused.has_error() and refused.error.code == BUDGET_REFUSED
    with budget_of(tmp_path / "small") as budget:
        assert budget.releases() == [] and [r.server_round for r in budget.refusals()] == [1]


def test_a_server_understating_q_is_caught_by_the_devices_participation_count(tmp_path):
    # The server announces q = 0.01 (a tiny whole-run charge) but asks the device every round.
    data = write_partitions(tmp_path, 3)[0]
    rounds = 100
    central = config(
        run={"rounds": rounds},
        dp={"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-5},
        server={"fraction_train": 0.01},
    )
    values = {"clipping_norm": 1.0, "noise-multiplier": 1.0, "sample-rate": 0.01, "rounds": float(rounds)}
    client, context = device(central, data, tmp_path / "state", max_epsilon=8.0)
    answered = [client.train(train_message(central, r, **values), context) for r in range(1, 14)]
    trained = [r for r, reply in enumerate(answered, 1) if not reply.has_error()]
    # Binomial(100, 0.01) exceeds 11 with probability below 1e-9: the 12th round is refused.
    assert trained == list(range(1, 12))
    assert all("implausible" in reply.error.reason for reply in answered[11:])
