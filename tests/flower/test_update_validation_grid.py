"""The deployed path: hostile train replies over a (fake) Grid are rejected with their reason."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, MessageType

from fedlab.algorithms.federation import FedAvgSettings, run_fedavg
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.flower.records import ARRAYS, identity_reply_content, train_reply_content
from fedlab.flower.server import FlowerTransport
from tests.algorithms.secure_local_transport import MemoryRecorder

from .fake_grid import FakeClock, FakeGrid, Handler, install_clock

WEIGHTS = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]


pytestmark = pytest.mark.usefixtures("server_process")


def client(cid: str, value: float, num_examples: int = 10) -> Handler:
    """Answers with a delta full of ``value`` (NaN included) and ``num_examples``, sent as Flower records."""

    def answer(msg: Message) -> Message:
        if msg.metadata.message_type == MessageType.QUERY:
            return Message(identity_reply_content(cid), reply_to=msg)
        weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
        update = Update(tuple(np.full_like(w, value) for w in weights), num_examples, float(num_examples))
        report = TrainReport(cid, update, 0.25, float("inf"), 0.0, 1.0, 1)
        return Message(train_reply_content(report), reply_to=msg)

    return answer


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(client("x", float("nan")), "non_finite"), (client("x", 0.1, num_examples=10**9), "examples")],
    ids=["nan-delta", "absurd-count"],
)
def test_a_hostile_reply_over_the_grid_is_rejected_and_the_round_goes_on(
    bad: Handler, reason: str, monkeypatch
):
    clock: FakeClock = install_clock(monkeypatch)
    grid = FakeGrid({11: client("a", 0.1), 12: client("b", 0.3), 13: bad}, clock=clock)
    transport = FlowerTransport(grid, {11: "a", 12: "b", 13: "x"}, timeout=30.0)
    recorder = MemoryRecorder()
    settings = FedAvgSettings(rounds=1, fraction_train=1.0, seed=0, max_examples=1_000_000)
    final = run_fedavg(transport=transport, recorder=recorder, initial_weights=WEIGHTS, settings=settings)
    [(_, _, reports, extra, _)] = recorder.released
    assert sorted(r.client_id for r in reports) == ["a", "b"]
    assert extra[f"rejected_{reason}"] == 1
    assert final[1].tolist() == pytest.approx([0.2] * 3)
