"""fedlab's ClientApp mods and private training, in a Flower app of the user's own (no network).

Adversaries played: a server that asks a device for more than its owner allowed (more rounds,
other settings, the same round twice, a round past the budget, a round without DP), and a server
that knows everything the client's torch seeds could be derived from (private training's noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

from fedlab.flower.client import load_history
from fedlab.flower.client_privacy import (
    BUDGET_REFUSED,
    DeviceBudgetMod,
    clipping_mod,
    private_training,
)
from fedlab.flower.dp_strategy import CLIP_NORM, UNCLIPPED, FedlabDpFedAvg
from fedlab.privacy.adaptive_clipping import AdaptiveClipState
from fedlab.privacy.client_budget import ClientBudget
from fedlab.privacy.events import GaussianEvent
from fedlab.training.accounting import epsilon_from_history
from fedlab.training.device_budget import DP_FEDAVG, DPSGD
from fedlab.training.private import PrivateTraining

from .fake_grid import FakeGrid, install_clock

pytestmark = pytest.mark.usefixtures("server_process")

Handler = Callable[[Message, Context], Message]


def context(run_id: int = 7) -> Context:
    return Context(run_id=run_id, node_id=1, node_config={}, state=RecordDict(), run_config={})


def train_message(weights: list[np.ndarray], **config: float | int) -> Message:
    content = RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord(dict(config))})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def moves_by(step: float) -> Handler:
    def train(msg: Message, _: Context) -> Message:
        (record,) = msg.content.array_records.values()
        local = [w + step for w in record.to_numpy_ndarrays()]
        content = RecordDict({"arrays": ArrayRecord(local), "metrics": MetricRecord({"num-examples": 10})})
        return Message(content, reply_to=msg)

    return train


def update_of(reply: Message, sent: list[np.ndarray]) -> np.ndarray:
    (record,) = reply.content.array_records.values()
    return np.concatenate([(a - b).ravel() for a, b in zip(record.to_numpy_ndarrays(), sent, strict=True)])


# ---- clipping_mod -------------------------------------------------------------------------------


def test_clipping_mod_bounds_the_update_by_the_servers_c_and_reports_the_bit_of_the_unclipped_norm() -> None:
    sent = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    big = clipping_mod(train_message(sent, **{CLIP_NORM: 1.0}), context(), moves_by(1.0))  # norm sqrt(7)
    assert np.linalg.norm(update_of(big, sent)) == pytest.approx(1.0, rel=1e-6)
    assert update_of(big, sent) == pytest.approx(np.full(7, 1 / math.sqrt(7)), rel=1e-6)  # direction kept
    assert big.content["metrics"][UNCLIPPED] == -0.5 and big.content["metrics"]["num-examples"] == 10
    small = clipping_mod(train_message(sent, **{CLIP_NORM: 3.0}), context(), moves_by(1.0))
    assert update_of(small, sent) == pytest.approx(np.ones(7)) and small.content["metrics"][UNCLIPPED] == 0.5
    assert big.content["arrays"].to_numpy_ndarrays()[0].dtype == np.float32


def test_clipping_mod_fails_a_round_without_c_and_passes_other_messages() -> None:
    reply = clipping_mod(train_message([np.zeros(2)]), context(), moves_by(1.0))
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    query = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
    passed = clipping_mod(
        query, context(), lambda m, _: Message(RecordDict({"m": MetricRecord({"x": 1})}), reply_to=m)
    )
    assert not passed.has_error() and passed.content["m"]["x"] == 1


def test_adaptive_clipping_counts_the_bit_clipping_mod_reports_not_the_clipped_norm(monkeypatch) -> None:
    """Every client's update is 10x over C: with the bits, C grows; from clipped norms it would shrink."""
    clock = install_clock(monkeypatch)

    def node(msg: Message) -> Message:
        return clipping_mod(msg, context(), moves_by(10.0))

    grid = FakeGrid({n: node for n in range(1, 21)}, clock=clock)
    adaptive = AdaptiveClipState(clip_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0)
    dp = FedlabDpFedAvg(
        FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1.0, population_size=20, delta=1e-5,
        adaptive=adaptive, client_clipping=True,
    )  # fmt: skip
    dp.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(4, np.float32)]), num_rounds=10)
    assert dp.clip_norm > 1.5


# ---- DeviceBudgetMod: central DP ----------------------------------------------------------------


def central(
    server_round: int, *, z: float = 1.0, q: float = 0.1, rounds: int = 20, **extra: float
) -> Message:
    values = {
        "server-round": server_round,
        "noise-multiplier": z,
        "sample-rate": q,
        "rounds": rounds,
        **extra,
    }
    return train_message([np.zeros(3, np.float32)], **values)


def test_a_central_dp_run_is_charged_once_at_its_first_round_at_the_devices_own_delta(tmp_path) -> None:
    mod = DeviceBudgetMod(tmp_path / "budget.sqlite", max_epsilon=50.0, delta=1e-6)
    ctx = context()
    assert not mod(central(1), ctx, moves_by(0.1)).has_error()
    assert not mod(central(2), ctx, moves_by(0.1)).has_error()
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        (charge,) = budget.charges()
        assert [r.server_round for r in budget.releases()] == [1, 2]
    assert charge.mechanism == DP_FEDAVG
    assert charge.params == {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 20}
    run = GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=20)  # the whole run, by RDP
    reference = epsilon_from_history([run], delta=1e-6, accountant="rdp")  # Opacus' finer orders
    assert reference <= charge.epsilon <= 1.05 * reference


def test_the_device_refuses_what_its_owner_did_not_allow_before_training(tmp_path) -> None:
    trained: list[int] = []

    def train(msg: Message, ctx: Context) -> Message:
        trained.append(int(msg.content["config"]["server-round"]))
        return moves_by(0.1)(msg, ctx)

    mod = DeviceBudgetMod(tmp_path / "budget.sqlite", max_epsilon=50.0)
    ctx = context()
    assert not mod(central(1), ctx, train).has_error()
    refusals = {
        "same round twice": central(1),
        "other settings": central(2, z=0.5),
        "beyond its rounds": central(21),
        "no rounds announced": train_message([np.zeros(3)], **{"server-round": 3, "noise-multiplier": 1.0}),
        "a larger delta": central(3, delta=1e-3),
    }
    for why, msg in refusals.items():
        reply = mod(msg, ctx, train)
        assert reply.has_error() and reply.error.code == BUDGET_REFUSED, why
        assert not reply.has_content(), why  # no update leaves
    assert trained == [1]
    small = DeviceBudgetMod(tmp_path / "other.sqlite", max_epsilon=0.5)
    reply = small(central(1), ctx, train)
    assert reply.has_error() and "budget spent" in reply.error.reason
    with ClientBudget.open(tmp_path / "other.sqlite") as budget:
        assert not budget.releases() and budget.refusals()[0].max_epsilon == 0.5


# ---- DeviceBudgetMod and private_training: DP-SGD in the user's @app.train ----------------------


def dpsgd_train(steps_data: int = 64, *, dp: bool = True) -> Handler:
    """A user's @app.train: their model and data, fedlab's private training."""

    def train(msg: Message, ctx: Context) -> Message:
        model = torch.nn.Linear(4, 2)
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(steps_data, 4, generator=generator), torch.arange(steps_data) % 2)
        loader = DataLoader(data, batch_size=16)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if dp:
            private = private_training(ctx, noise_multiplier=1.0, max_grad_norm=1.0)
            model, optimizer, loader = private.make_private(model, optimizer, loader)
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        arrays = [p.detach().numpy() for p in model.parameters()]
        return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)

    return train


def plain(server_round: int) -> Message:
    return train_message([np.zeros(3, np.float32)], **{"server-round": server_round})


def test_dpsgd_rounds_charge_the_steps_taken_and_the_round_past_the_budget_is_withheld(tmp_path) -> None:
    one = GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=4)
    eps1 = epsilon_from_history([one], delta=1e-5, accountant="rdp")
    eps2 = epsilon_from_history(
        [GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=8)], delta=1e-5, accountant="rdp"
    )
    mod = DeviceBudgetMod(tmp_path / "budget.sqlite", max_epsilon=(eps1 + eps2) / 2)
    ctx = context()
    first = mod(plain(1), ctx, dpsgd_train())
    assert not first.has_error() and first.content.array_records
    second = mod(plain(2), ctx, dpsgd_train())
    assert second.has_error() and second.error.code == BUDGET_REFUSED and not second.has_content()
    with ClientBudget.open(tmp_path / "budget.sqlite") as budget:
        (charge,) = budget.charges()
        assert budget.refusals()[0].server_round == 2
    assert charge.mechanism == DPSGD and charge.params["steps"] == 4 and charge.epsilon == pytest.approx(eps1)
    assert load_history(ctx.state) == (GaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=8),)


def test_a_round_without_dp_is_released_only_with_the_owners_opt_in(tmp_path) -> None:
    strict = DeviceBudgetMod(tmp_path / "strict.sqlite")
    reply = strict(plain(1), context(), dpsgd_train(dp=False))
    assert reply.has_error() and "non-private" in reply.error.reason
    allowed = DeviceBudgetMod(tmp_path / "open.sqlite", allow_non_private=True)
    assert not allowed(plain(1), context(), dpsgd_train(dp=False)).has_error()


# ---- PrivateTraining ----------------------------------------------------------------------------


def noise_only_update(seed: int) -> np.ndarray:
    """One step on a loss with zero gradient: the update is the step's noise times -lr."""
    torch.manual_seed(seed)  # everything a server could know about the client's torch state
    model = torch.nn.Linear(50, 40, bias=False)
    torch.nn.init.zeros_(model.weight)
    data = DataLoader(TensorDataset(torch.randn(100, 50), torch.zeros(100)), batch_size=20)
    private = PrivateTraining(noise_multiplier=2.0, max_grad_norm=0.5)
    wrapped, optimizer, loader = private.make_private(
        model, torch.optim.SGD(model.parameters(), lr=1.0), data
    )
    x, _ = next(iter(loader))
    optimizer.zero_grad()
    (wrapped(x) * 0.0).sum().backward()
    optimizer.step()
    return -model.weight.detach().numpy().ravel()


def test_private_training_adds_noise_of_std_zc_over_the_expected_batch_and_no_seed_reproduces_it() -> None:
    noise = noise_only_update(0)
    assert noise.std() == pytest.approx(2.0 * 0.5 / 20, rel=0.1)  # Opacus: z*C / expected batch size
    assert abs(noise.mean()) < 4 * 0.05 / math.sqrt(noise.size)
    assert not np.array_equal(noise, noise_only_update(0))  # the same torch seed, other noise


def test_private_training_counts_every_poisson_step_including_empty_batches() -> None:
    data = DataLoader(TensorDataset(torch.randn(60, 3), torch.zeros(60, dtype=torch.long)), batch_size=1)
    model = torch.nn.Linear(3, 2)
    private = PrivateTraining(noise_multiplier=1.0, max_grad_norm=1.0)
    wrapped, optimizer, loader = private.make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), data
    )
    sizes = []
    for x, y in loader:
        sizes.append(len(x))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()
    assert len(sizes) == 60 and 0 in sizes  # P(no empty batch in 60) = (1 - (59/60)^60)^60 ~ 1e-12
    assert private.history == (GaussianEvent(noise_multiplier=1.0, sample_rate=1 / 60, steps=60),)
    assert torch.isfinite(model.weight).all()


def test_private_training_refuses_a_model_opacus_cannot_train_privately() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    data = DataLoader(TensorDataset(torch.randn(8, 3), torch.zeros(8)), batch_size=4)
    with pytest.raises(ValueError, match="cannot be trained with DP-SGD"):
        PrivateTraining(noise_multiplier=1.0, max_grad_norm=1.0).make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.1), data
        )
