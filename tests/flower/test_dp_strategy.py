"""fedlab's DP-FedAvg wrapper around Flower's own FedAvg and FedAdam, on a fake Grid with canned replies.

The nodes are small handlers: node k answers every train message with the received model plus its
own fixed delta. The adversary the wrapper answers to sees released models only, so the checks are
on releases: their mean and spread (the mechanism's), who was asked (Poisson, at rate q), what a
hostile update can do (at most C over the fixed denominator), and where the budget stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy

from fedlab.flower.dp_strategy import CLIP_NORM, NOISE_MULTIPLIER, ROUNDS, SAMPLE_RATE, FedlabDpFedAvg
from fedlab.privacy.ledger import PrivacyLedger

from .fake_grid import FakeGrid, install_clock

pytestmark = pytest.mark.usefixtures("server_process")

SHAPES = [(4, 3), (3,)]


def model() -> list[np.ndarray]:
    return [np.full(shape, 0.5, np.float32) for shape in SHAPES]


def node_with_delta(
    delta: Callable[[], list[np.ndarray]], examples: int = 10
) -> Callable[[Message], Message]:
    def answer(msg: Message) -> Message:
        (record,) = msg.content.array_records.values()
        local = [w + d for w, d in zip(record.to_numpy_ndarrays(), delta(), strict=True)]
        content = RecordDict(
            {"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": examples})}
        )
        return Message(content, reply_to=msg)

    return answer


def constant(value: float) -> Callable[[], list[np.ndarray]]:
    return lambda: [np.full(shape, value, np.float32) for shape in SHAPES]


def run_round(strategy: Strategy, grid: FakeGrid, server_round: int, weights: list[np.ndarray]) -> tuple:
    messages = list(strategy.configure_train(server_round, ArrayRecord(weights), ConfigRecord(), grid))
    replies = grid.send_and_receive(messages, timeout=10.0)
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return messages, arrays, metrics


def wrapper(inner: Strategy | None = None, **kwargs: object) -> FedlabDpFedAvg:
    settings: dict[str, object] = {
        "noise_multiplier": 1.0,
        "clipping_norm": 1.0,
        "sample_rate": 1.0,
        "population_size": 10,
        "delta": 1e-5,
        "accountant": "rdp",  # fast for the many-round tests; the budget test asks for PLD
        **kwargs,
    }
    return FedlabDpFedAvg(inner or FedAvg(min_available_nodes=1), **settings)  # type: ignore[arg-type]


def test_releases_average_to_the_clipped_sum_over_the_fixed_denominator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 5 of N = 10 nodes connected, q = 1: the sum of 5 deltas is divided by q*N = 10, not by 5.
    # Node deltas have norms 0.35 (kept) and 7 (clipped to 1); the noise has std z*C/10 = 0.1.
    clock = install_clock(monkeypatch)
    small, big = constant(0.1), constant(2.0)
    grid = FakeGrid({1: node_with_delta(small), 2: node_with_delta(small), 3: node_with_delta(big),
                     4: node_with_delta(big), 5: node_with_delta(big)}, clock=clock)  # fmt: skip
    dp = wrapper()
    start = model()
    norm_big = math.sqrt(sum(np.prod(s) for s in SHAPES)) * 2.0
    expected = [(2 * 0.1 + 3 * 2.0 / norm_big) / 10.0 * np.ones(s) for s in SHAPES]
    rounds = 400
    moves = []
    for r in range(1, rounds + 1):
        messages, arrays, metrics = run_round(dp, grid, r, start)
        assert len(messages) == 5 and metrics["clients"] == 5
        moves.append(
            np.concatenate([(a - s).ravel() for a, s in zip(arrays.to_numpy_ndarrays(), start, strict=True)])
        )
    moves_arr = np.array(moves)
    want = np.concatenate([e.ravel() for e in expected])
    std = 1.0 * 1.0 / 10.0
    assert np.all(np.abs(moves_arr.mean(axis=0) - want) < 5 * std / math.sqrt(rounds))
    assert moves_arr.std() == pytest.approx(std, rel=0.05)


def test_every_node_is_asked_independently_at_rate_q(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = install_clock(monkeypatch)
    grid = FakeGrid({n: node_with_delta(constant(0.0)) for n in range(1, 21)}, clock=clock)
    dp = wrapper(sample_rate=0.3, population_size=20)
    asked = np.zeros(21)
    sizes = set()
    for r in range(1, 301):
        messages, _, _ = run_round(dp, grid, r, model())
        targets = [m.metadata.dst_node_id for m in messages]
        assert len(set(targets)) == len(targets)
        asked[targets] += 1
        sizes.add(len(targets))
        for m in messages:
            config = m.content.config_records["config"]
            assert (config[CLIP_NORM], config[NOISE_MULTIPLIER], config[SAMPLE_RATE]) == (1.0, 1.0, 0.3)
    rate = asked[1:] / 300
    assert np.all(np.abs(rate - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 300))
    assert len(sizes) > 3  # the cohort size is random, not fixed


def test_fedadam_steps_on_the_dp_aggregate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Same secret-free seeds for both: the DP aggregate FedAvg releases, given to a plain FedAdam as
    # its only reply, is what FedAdam wrapped by fedlab releases.
    clock = install_clock(monkeypatch)
    grid = FakeGrid({n: node_with_delta(constant(0.05 * n)) for n in range(1, 5)}, clock=clock)

    def seeded(inner: Strategy) -> FedlabDpFedAvg:
        return wrapper(
            inner, sample_rate=0.7, noise_rng=np.random.default_rng(5), sample_rng=np.random.default_rng(6)
        )

    start = model()
    _, dp_mean, _ = run_round(seeded(FedAvg(min_available_nodes=1)), grid, 1, start)
    plain = FedAdam(min_available_nodes=1, eta=0.1)
    list(plain.configure_train(1, ArrayRecord(start), ConfigRecord(), grid))
    template = Message(RecordDict(), dst_node_id=1, message_type="train")
    reply = Message(
        RecordDict({"arrays": dp_mean, "metrics": MetricRecord({"num-examples": 1})}), reply_to=template
    )
    want, _ = plain.aggregate_train(1, [reply])
    _, got, metrics = run_round(seeded(FedAdam(min_available_nodes=1, eta=0.1)), grid, 1, start)
    for g, w in zip(got.to_numpy_ndarrays(), want.to_numpy_ndarrays(), strict=True):
        np.testing.assert_array_equal(g, w)
    assert not np.allclose(got.to_numpy_ndarrays()[0], dp_mean.to_numpy_ndarrays()[0])  # FedAdam did step
    assert metrics["epsilon"] > 0


def test_a_hostile_update_moves_the_model_by_at_most_c_over_the_denominator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = install_clock(monkeypatch)
    nan = lambda: [np.full(s, np.nan, np.float32) for s in SHAPES]  # noqa: E731
    wrong = lambda: [np.zeros((2, 2), np.float32)]  # noqa: E731
    grid = FakeGrid({1: node_with_delta(constant(1e3)), 2: node_with_delta(nan)}, clock=clock)
    grid.handlers[3] = lambda msg: Message(
        RecordDict({"arrays": ArrayRecord(wrong()), "metrics": MetricRecord({"num-examples": 1})}),
        reply_to=msg,
    )
    grid.registered.add(3)
    grid.reactivate(3)
    clip, denominator = 1e-3, 10.0
    dp = wrapper(clipping_norm=clip)
    start = model()
    _, arrays, metrics = run_round(dp, grid, 1, start)
    move = math.sqrt(
        sum(float(np.sum((a - s) ** 2)) for a, s in zip(arrays.to_numpy_ndarrays(), start, strict=True))
    )
    noise = 1.0 * clip / denominator * math.sqrt(sum(np.prod(s) for s in SHAPES))
    assert move <= clip / denominator + 6 * noise
    assert metrics["clients"] == 1 and metrics["rejected"] == 2  # NaN and the wrong shape
    # With client-side clipping the server trusts nothing over C: the big update is rejected too.
    strict = wrapper(clipping_norm=clip, client_clipping=True)
    _, _, metrics = run_round(strict, grid, 1, start)
    assert metrics["clients"] == 0 and metrics["rejected"] == 3


def test_flowers_client_clipping_mod_clips_to_the_norm_the_wrapper_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = install_clock(monkeypatch)
    hostile = node_with_delta(constant(1e3))

    def clipped(msg: Message) -> Message:
        context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        return fixedclipping_mod(msg, context, lambda m, _: hostile(m))

    grid = FakeGrid({1: clipped, 2: hostile}, clock=clock)
    dp = wrapper(clipping_norm=0.25, client_clipping=True)
    _, _, metrics = run_round(dp, grid, 1, model())
    assert metrics["clients"] == 1 and metrics["rejected"] == 1  # the node without the mod


def test_flowers_loop_stops_at_the_budget_and_the_ledger_holds_every_round(tmp_path, monkeypatch) -> None:
    clock = install_clock(monkeypatch)
    grid = FakeGrid({n: node_with_delta(constant(0.01)) for n in range(1, 5)}, clock=clock)
    budget, z, q = 1.0, 4.0, 0.25
    ledger = tmp_path / "ledger.sqlite"
    dp = wrapper(
        noise_multiplier=z,
        sample_rate=q,
        population_size=4,
        max_epsilon=budget,
        ledger=ledger,
        accountant="pld",
    )
    with pytest.raises(PrivacyBudgetExhausted):
        dp.start(grid=grid, initial_arrays=ArrayRecord(model()), num_rounds=1000)
    # Independently: the most Poisson-subsampled Gaussian releases within epsilon 2.
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    epsilons = []
    while True:
        reference.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)))
        eps = reference.get_epsilon(1e-5)
        if eps > budget:
            break
        epsilons.append(eps)
    with PrivacyLedger.open(ledger) as book:
        rounds = book.rounds()
        totals = book.federation_totals()
    assert [r.round for r in rounds] == list(range(1, len(epsilons) + 1))
    assert len(epsilons) > 1
    assert dp.epsilon == pytest.approx(epsilons[-1], rel=2e-3) and dp.epsilon <= budget
    assert totals and totals[0].epsilon == pytest.approx(epsilons[-1], rel=2e-3)


def test_a_ledger_that_exists_is_refused_before_any_round(tmp_path) -> None:
    taken = tmp_path / "ledger.sqlite"
    taken.write_bytes(b"")
    with pytest.raises(ValueError, match="exists"):
        wrapper(ledger=taken)


def test_the_released_model_keeps_the_keys_of_the_sent_record_and_start_announces_the_rounds(
    monkeypatch,
) -> None:
    """A torch state dict travels by its names: the round's model comes back under the same ones."""
    clock = install_clock(monkeypatch)
    seen: list[Message] = []

    def node(msg: Message) -> Message:
        seen.append(msg)
        return node_with_delta(constant(0.01))(msg)

    grid = FakeGrid({1: node, 2: node}, clock=clock)
    named = ArrayRecord({"layer.weight": Array(model()[0]), "layer.bias": Array(model()[1])})
    result = wrapper(FedAvg(min_available_nodes=1)).start(grid=grid, initial_arrays=named, num_rounds=2)
    assert list(result.arrays.keys()) == ["layer.weight", "layer.bias"]
    trained = [m for m in seen if m.metadata.message_type == MessageType.TRAIN]
    assert trained and {int(m.content["config"][ROUNDS]) for m in trained} == {2}
