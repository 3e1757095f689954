"""The device's epsilon against independent computations; monotone, never negative (no network)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import create_accountant

from fedlab.core.errors import LedgerError
from fedlab.privacy.client_budget import ChargeRow
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.skellam import SKELLAM_RDP_ORDERS, SkellamAccountant, SkellamEvent, SkellamParams
from fedlab.privacy.skellam_release import server_view_event
from fedlab.training.accounting import epsilon_from_history
from fedlab.training.device_budget import (
    DP_FEDAVG,
    DPSGD,
    NOISELESS_CHARGE,
    SKELLAM_DDP,
    Charge,
    DeviceAccountant,
    charge_of,
    device_epsilon,
)

PARAMS = SkellamParams(clip=0.5, noise_multiplier=1.2, num_clients=3, min_survivors=3, bits=20, dim=650)
ORDERS = [float(a) for a in SKELLAM_RDP_ORDERS]


def sgd(z: float, q: float, steps: int) -> Charge:
    return Charge(mechanism=DPSGD, event=GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps))


def central(z: float, q: float, steps: int) -> Charge:
    return Charge(mechanism=DP_FEDAVG, event=GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps))


def ddp(event: SkellamEvent) -> Charge:
    return Charge(mechanism=SKELLAM_DDP, event=event)


def test_dpsgd_alone_is_opacus_known_answer():
    assert device_epsilon([sgd(1.5, 0.04, 2250)], delta=1e-5) == pytest.approx(7.32911117143, abs=1e-9)


def test_gaussian_mix_equals_dp_accountings_rdp_accountant():
    step, run = sgd(1.1, 0.05, 180), central(0.9, 0.3, 20)
    reference = dp_accounting.rdp.RdpAccountant(orders=ORDERS)
    for z, q, steps in ((1.1, 0.05, 180), (0.9, 0.3, 20)):
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        reference.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    expected = reference.get_epsilon(1e-5)
    assert expected > device_epsilon([step], delta=1e-5)  # the mix costs more
    assert device_epsilon([step, run], delta=1e-5) == pytest.approx(expected, rel=1e-6)
    assert device_epsilon([run, step], delta=1e-5) == device_epsilon([step, run], delta=1e-5)


def test_a_mix_with_skellam_is_the_hand_composition_of_rdp_curves():
    # Unsampled Gaussians have the closed form RDP(a) = steps * a / (2 z^2).
    step, run = sgd(4.0, 1.0, 10), central(3.0, 1.0, 5)
    skellam = server_view_event(PARAMS)
    a = np.asarray(ORDERS)
    curve = 10 * a / (2 * 4.0**2) + 5 * a / (2 * 3.0**2) + skellam.rdp(a)
    expected, _ = rdp_privacy_accountant.compute_epsilon(a, curve, 1e-5)
    assert expected > device_epsilon([step], delta=1e-5)
    assert device_epsilon([step, ddp(skellam), run], delta=1e-5) == pytest.approx(expected, rel=1e-9)


def test_skellam_rounds_alone_equal_the_server_ledgers_epsilon():
    ledger = SkellamAccountant()
    rounds = [server_view_event(PARAMS) for _ in range(4)]
    for event in rounds:
        ledger.compose(event)
    charges = [ddp(event) for event in rounds]
    assert device_epsilon(charges, delta=1e-5) == pytest.approx(ledger.epsilon(delta=1e-5), rel=1e-12)


@pytest.mark.parametrize("delta", [1e-5, 0.1])
def test_adding_a_release_never_lowers_the_epsilon_and_it_is_never_negative(delta):
    pool = [
        sgd(1.0, 0.05, 18),
        sgd(80.0, 0.05, 18),  # Opacus' conversion < 0 at 0.1
        sgd(0.7, 1.0, 3),
        central(50.0, 0.1, 4),
        central(1.0, 0.5, 10),
        ddp(SkellamEvent(params=PARAMS.with_noise_multiplier(40.0), sample_rate=1.0, steps=1)),
        ddp(server_view_event(PARAMS)),
    ]
    rng = np.random.default_rng(0)
    for _ in range(3):
        history: list = []
        last = 0.0
        for index in rng.integers(0, len(pool), size=6):
            history.append(pool[int(index)])
            epsilon = device_epsilon(history, delta=delta)
            assert epsilon >= 0.0 and epsilon >= last, (history, epsilon, last)
            last = epsilon
    assert device_epsilon([], delta=delta) == 0.0
    # Opacus' own conversion is negative here; fedlab's epsilons are clamped at 0.
    opacus = create_accountant(mechanism="rdp")
    opacus.history = [(80.0, 0.05, 18)]
    assert opacus.get_epsilon(delta=0.1) < 0.0
    assert device_epsilon([pool[1]], delta=0.1) == 0.0
    assert epsilon_from_history([pool[1].event], delta=0.1, accountant="rdp") == 0.0


def test_a_noiseless_release_is_infinite_and_stored_charges_round_trip():
    assert device_epsilon([ddp(server_view_event(PARAMS)), NOISELESS_CHARGE], delta=1e-5) == math.inf
    stored = server_view_event(PARAMS).to_dict()
    rows = [
        ChargeRow(run_id=1, server_round=1, mechanism="skellam-ddp", params=stored, epsilon=1.0),
        ChargeRow(run_id=1, server_round=2, mechanism="none", epsilon=math.inf),
    ]
    assert [charge_of(r) for r in rows] == [ddp(server_view_event(PARAMS)), NOISELESS_CHARGE]
    with pytest.raises(LedgerError, match="unknown mechanism"):
        charge_of(ChargeRow(run_id=1, server_round=3, mechanism="laplace", epsilon=1.0))
    with pytest.raises(LedgerError, match="malformed dpsgd"):
        charge_of(ChargeRow(run_id=1, server_round=3, mechanism="dpsgd", params={"steps": 1}, epsilon=1.0))


def test_the_device_accountant_checks_opacus_known_answer_and_composes_nothing():
    step = sgd(1.5, 0.04, 2250)  # Opacus' known answer: epsilon 7.32911117143 at delta 1e-5
    spent = DeviceAccountant()
    assert not spent.would_exceed(step, max_epsilon=7.3292, delta=1e-5)
    assert spent.would_exceed(step, max_epsilon=7.3290, delta=1e-5)
    assert spent.events() == ()  # asking charges nothing
    spent.compose(step)
    assert not spent.would_exceed(max_epsilon=7.3292, delta=1e-5)  # no new release: the history alone
    assert spent.would_exceed(max_epsilon=7.3290, delta=1e-5)
    assert spent.would_exceed(NOISELESS_CHARGE, max_epsilon=1e12, delta=1e-5)  # a noiseless release
    assert not spent.would_exceed(NOISELESS_CHARGE, max_epsilon=math.inf, delta=1e-5)


def test_the_device_accountant_composes_charges_not_bare_events():
    step = sgd(1.0, 0.1, 10)
    spent = DeviceAccountant()
    assert spent.supports(step) and spent.supports(NOISELESS_CHARGE)
    assert not spent.supports(step.event)
    with pytest.raises(TypeError):
        spent.would_exceed(step.event, max_epsilon=1.0, delta=1e-5)
    with pytest.raises(ValueError, match="carries a GaussianEvent"):
        Charge(mechanism=DPSGD, event=server_view_event(PARAMS))
    with pytest.raises(ValueError, match="unknown mechanism"):
        Charge(mechanism="laplace")
