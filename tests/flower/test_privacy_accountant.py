"""fedlab's accountants behind Flower's PrivacyAccountant protocol.

Known answers come from elsewhere: Flower's own RDP accountant (same dp_accounting backend, same
orders) and dp_accounting's PLD accountant called directly. The budget test runs Flower's own
``DifferentialPrivacyServerSideFixedClipping`` around Flower's ``FedAvg`` on a fake Grid.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, PrivacyConfig
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant as FlowerRdp

from fedlab.flower.privacy_accountant import FlowerAccountant, NeighboringRelation, SamplingMethod
from fedlab.privacy.accountants import RDP_ORDERS

from .fake_grid import FakeClock, FakeGrid, install_clock

pytestmark = pytest.mark.usefixtures("server_process")

POPULATION = 200


def config(sampling: SamplingMethod = SamplingMethod.POISSON, **extra: float) -> PrivacyConfig:
    relation = (
        NeighboringRelation.REPLACE_ONE
        if sampling is SamplingMethod.WITHOUT_REPLACEMENT
        else NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    return PrivacyConfig(
        target_delta=1e-5,
        population_size=POPULATION,
        neighboring_relation=relation,
        sampling_method=sampling,
        **extra,  # type: ignore[arg-type]
    )


def event(z: float, sample: int) -> GaussianPrivacyEvent:
    return GaussianPrivacyEvent(noise_multiplier=z, sample_size=sample, population_size=POPULATION)


HISTORY = [(event(1.1, 20), 30), (event(0.8, 50), 5), (event(2.0, 200), 3)]


@pytest.mark.parametrize("sampling", [SamplingMethod.POISSON, SamplingMethod.NO_AMPLIFICATION])
def test_rdp_equals_flowers_own_rdp_accountant(sampling: SamplingMethod) -> None:
    ours, flowers = FlowerAccountant(config(sampling), "rdp"), FlowerRdp(config(sampling), orders=RDP_ORDERS)
    for e, count in HISTORY:
        ours.compose(e, count)
        flowers.compose(e, count)
    for delta in (1e-7, 1e-5, 1e-3):
        assert ours.get_epsilon(delta) == pytest.approx(flowers.get_epsilon(delta), rel=1e-9)
    assert ours.num_releases == flowers.num_releases == 38


def test_pld_equals_dp_accountings_pld_and_is_below_rdp() -> None:
    ours = FlowerAccountant(config(), "pld")
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for e, count in HISTORY:
        ours.compose(e, count)
        rate = e.sample_size / e.population_size
        reference.compose(
            dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(e.noise_multiplier)), count
        )
    rdp = FlowerRdp(config())
    for e, count in HISTORY:
        rdp.compose(e, count)
    eps = ours.get_epsilon(1e-5)
    assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=2e-3)
    assert eps < rdp.get_epsilon(1e-5)
    spent = ours.get_privacy_spent()
    assert (spent.epsilon, spent.delta, spent.accounting_method) == (eps, 1e-5, "fedlab-pld")
    assert ours.get_delta(eps) == pytest.approx(1e-5, rel=0.05)


def test_would_exceed_answers_without_composing() -> None:
    acc = FlowerAccountant(config(max_epsilon=2.0))
    step = event(1.0, 20)
    rounds = 0
    while not acc.would_exceed(step):
        acc.compose(step)
        rounds += 1
    after = FlowerAccountant(config())
    after.compose(step, rounds + 1)
    assert after.get_epsilon(1e-5) > 2.0 >= acc.get_epsilon(1e-5)
    assert acc.num_releases == rounds
    assert acc.would_exceed(step, max_epsilon=100.0) is False
    with pytest.raises(ValueError, match="max_epsilon"):
        FlowerAccountant(config()).would_exceed(step)


def test_state_round_trips_through_json_and_refuses_another_configuration() -> None:
    acc = FlowerAccountant(config())
    for e, count in HISTORY:
        acc.compose(e, count)
    state = json.loads(json.dumps(acc.state_dict()))
    restored = FlowerAccountant(config())
    restored.load_state_dict(state)
    assert restored.get_epsilon(1e-5) == acc.get_epsilon(1e-5) and restored.num_releases == 38
    with pytest.raises(ValueError, match="configuration"):
        FlowerAccountant(config(max_epsilon=3.0)).load_state_dict(state)
    with pytest.raises(ValueError, match="fedlab-pld"):
        FlowerAccountant(config(), "rdp").load_state_dict(state)


def test_unsupported_sampling_and_mismatched_events_are_refused() -> None:
    with pytest.raises(ValueError, match="Poisson"):
        FlowerAccountant(config(SamplingMethod.WITHOUT_REPLACEMENT))
    acc = FlowerAccountant(config())
    with pytest.raises(ValueError, match="population_size"):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=5, population_size=10))
    with pytest.raises(ValueError, match="count"):
        acc.compose(event(1.0, 5), 0)
    assert acc.num_releases == 0


def test_flowers_dp_strategy_stops_where_fedlabs_accountant_says(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower's server-side DP wrapper around its own FedAvg, 4 nodes, every node every round (no
    # amplification, as Flower's fixed-clipping accounting requires), budget epsilon 3.
    clock: FakeClock = install_clock(monkeypatch)
    weights = [np.zeros((3, 2), np.float32)]

    def node(msg: Message) -> Message:
        arrays = ArrayRecord([w + 0.1 for w in weights])
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10})})
        return Message(content, reply_to=msg)

    grid = FakeGrid({n: node for n in range(1, 5)}, clock=clock)
    budget = 3.0
    accountant = FlowerAccountant(
        PrivacyConfig(
            target_delta=1e-5,
            population_size=4,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=budget,
        )
    )
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(fraction_train=1.0, fraction_evaluate=0.0),
        noise_multiplier=4.0,
        clipping_norm=1.0,
        num_sampled_clients=4,
        accountant=accountant,
    )
    with pytest.raises(PrivacyBudgetExhausted):
        strategy.start(grid=grid, initial_arrays=ArrayRecord(weights), num_rounds=100)
    released = accountant.num_releases
    # Independently: the most unsampled Gaussian releases at z = 4 that stay within epsilon 3.
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    most = 0
    while True:
        reference.compose(dp_event.GaussianDpEvent(4.0))
        if reference.get_epsilon(1e-5) > budget:
            break
        most += 1
    assert released == most and 1 < released < 100
    assert accountant.get_epsilon(1e-5) <= budget
    assert math.isfinite(strategy.privacy_spent().epsilon)  # type: ignore[union-attr]
