"""fedlab's SecAgg+ in a user's Flower app: ``SecAggMod`` on the ClientApp, ``SecAggWorkflow`` in ``main``.

The clients are a real Flower ``ClientApp`` written as a user writes one (its own "model": named
numpy arrays, its own ``@app.train``), on the nodes of a fake Grid (no network). Known answers:
each client's new model is the global one plus a fixed, client-specific step, so the secure mean
is computable without the protocol. The server's view is played by reading every reply it got.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.flower import SecAggMod, SecAggWorkflow
from fedlab.flower.secure_transport import SECAGG
from tests.flower.fake_grid import FakeClock, FakeGrid

NODES = [11, 12, 13, 14]
SECRET_METRIC = "private-loss"


def step_of(node: int) -> dict[str, np.ndarray]:
    """What node ``node`` adds to the global model every round (known to the test, not the server)."""
    return {
        "w": np.array([0.01 * node, -0.02, 0.003 * node], dtype=np.float32),
        "b": np.float32(0.1 - 0.01 * node),
    }


def user_app(calls: list[tuple[int, dict[str, Any]]], examples: dict[int, int]) -> ClientApp:
    """A Flower user's ClientApp with fedlab's SecAgg+ mod in front of it."""
    app = ClientApp(mods=[SecAggMod(bits=32, clip_range=1.0)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        assert isinstance(arrays, ArrayRecord)
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        calls.append((context.node_id, dict(config)))
        step = step_of(context.node_id)
        new = ArrayRecord({k: Array(np.asarray(a.numpy() + step[k])) for k, a in arrays.items()})
        metrics = MetricRecord({"num-examples": examples[context.node_id], SECRET_METRIC: 0.123})
        return Message(RecordDict({"arrays": new, "metrics": metrics}), reply_to=msg)

    return app


class Federation:
    """The user's ClientApp on fake nodes, each with its own persistent Context."""

    def __init__(self, examples: dict[int, int], *, silent: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, dict[str, Any]]] = []
        self.app = user_app(self.calls, examples)
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES
        }
        self.replies: list[Message] = []
        self.silent = silent

    def handler(self, node: int) -> Any:
        def answer(msg: Message) -> Message | None:
            if node in self.silent and SECAGG in msg.content.config_records:
                return None  # this device goes quiet in every secure round
            reply = self.app(msg, self.contexts[node])
            self.replies.append(reply)
            return reply

        return answer

    def grid(self, clock: FakeClock) -> FakeGrid:
        return FakeGrid({n: self.handler(n) for n in NODES}, clock=clock)


@pytest.fixture
def initial() -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.zeros(3, dtype=np.float32)), "b": Array(np.array(0.5, dtype=np.float32))}
    )


def expected_after(initial: ArrayRecord, rounds: int, weights: dict[int, float]) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    out = {}
    for key, array in initial.items():
        mean = sum(w * np.asarray(step_of(n)[key], dtype=np.float64) for n, w in weights.items()) / total
        out[key] = array.numpy().astype(np.float64) + rounds * mean
    return out


@pytest.mark.usefixtures("server_process")
def test_the_workflow_averages_the_user_apps_models_weighted_by_capped_examples(
    clock: FakeClock, initial: ArrayRecord
) -> None:
    examples = {11: 10, 12: 50, 13: 100, 14: 400}  # 400 is capped at max_weight 100
    fed = Federation(examples)
    workflow = SecAggWorkflow(num_rounds=2, max_weight=100, timeout=30, train_config={"lr": 0.05})
    result = workflow(fed.grid(clock), initial)

    assert (result.rounds_released, result.rounds_aborted) == (2, 0)
    assert [row["included"] for row in result.history] == [4, 4]
    weights = {n: min(examples[n], 100) / 100 for n in NODES}
    want = expected_after(initial, 2, weights)
    assert list(result.arrays.keys()) == ["w", "b"]
    for key in ["w", "b"]:
        got = result.arrays[key].numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want[key], atol=1e-5)
    # The app's own train function ran once per node and round, with the workflow's config.
    assert sorted((n, c["server-round"], c["lr"]) for n, c in fed.calls) == [
        (n, r, 0.05) for n in NODES for r in (1, 2)
    ]


@pytest.mark.usefixtures("server_process")
def test_the_server_never_receives_a_clients_model_or_its_metrics(
    clock: FakeClock, initial: ArrayRecord
) -> None:
    fed = Federation({n: 20 for n in NODES})
    SecAggWorkflow(num_rounds=1, timeout=30)(fed.grid(clock), initial)
    assert len(fed.replies) == 4 * len(NODES)  # four stages, every node
    for reply in fed.replies:
        assert not reply.has_error(), reply.error.reason
        assert not reply.content.array_records and not reply.content.metric_records
        assert set(reply.content.config_records) == {SECAGG}
    blob = b"".join(bytes(r.content.config_records[SECAGG]["reply"]) for r in fed.replies)  # type: ignore[arg-type]
    assert SECRET_METRIC.encode() not in blob
    for node in NODES:  # no node's clear delta, as float32 or float64 bytes, is in what it sent
        for step in step_of(node).values():
            for dtype in (np.float32, np.float64):
                assert np.asarray(step, dtype=dtype).tobytes() not in blob


@pytest.mark.usefixtures("server_process")
def test_a_device_that_goes_quiet_is_a_dropout_and_the_survivors_are_averaged(
    clock: FakeClock, initial: ArrayRecord
) -> None:
    fed = Federation({n: 20 for n in NODES}, silent=(13,))
    result = SecAggWorkflow(num_rounds=1, min_survivors=0.7, timeout=30)(fed.grid(clock), initial)
    assert result.rounds_released == 1 and result.history[0]["included"] == 3
    want = expected_after(initial, 1, {11: 1.0, 12: 1.0, 14: 1.0})
    for key in ["w", "b"]:
        np.testing.assert_allclose(result.arrays[key].numpy(), want[key], atol=1e-5)


@pytest.mark.usefixtures("server_process")
def test_too_few_survivors_abort_the_round_and_keep_the_model(clock: FakeClock, initial: ArrayRecord) -> None:
    fed = Federation({n: 20 for n in NODES}, silent=(12, 13))
    result = SecAggWorkflow(num_rounds=1, min_survivors=0.75, timeout=30)(fed.grid(clock), initial)
    assert (result.rounds_released, result.rounds_aborted) == (0, 1)
    assert "aborted" in result.history[0]
    for key in ["w", "b"]:
        np.testing.assert_array_equal(result.arrays[key].numpy(), initial[key].numpy())


def secagg_message(call: bytes, content: dict[str, Any], node: int) -> Message:
    records = RecordDict({SECAGG: ConfigRecord({"call": call}), **content})
    msg = Message(records, dst_node_id=node, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def recorded_calls(clock: FakeClock, initial: ArrayRecord) -> Iterator[tuple[int, Message]]:
    """Every stage message an honest workflow sends in one round, with its node."""
    fed = Federation({n: 20 for n in NODES})
    grid = fed.grid(clock)
    SecAggWorkflow(num_rounds=1, timeout=30)(grid, initial)
    for msg in grid.sent:
        yield msg.metadata.dst_node_id, msg


@pytest.mark.usefixtures("server_process")
def test_a_server_skipping_to_the_masked_input_stage_gets_a_refusal_and_no_training(
    clock: FakeClock, initial: ArrayRecord
) -> None:
    """The server replays a masked-input message to a fresh device: it must not train or answer."""
    sent = list(recorded_calls(clock, initial))
    stage2 = [(n, m) for n, m in sent if "arrays" in m.content.array_records]
    assert len(stage2) == len(NODES)
    node, msg = stage2[0]
    fresh = Federation({n: 20 for n in NODES})
    replay = secagg_message(
        bytes(msg.content.config_records[SECAGG]["call"]),  # type: ignore[arg-type]
        {"arrays": msg.content.array_records["arrays"]},
        node,
    )
    reply = fresh.app(replay, fresh.contexts[node])
    assert reply.has_error() and "secagg refused" in reply.error.reason
    assert fresh.calls == []  # the app's train function never ran


@pytest.mark.usefixtures("server_process")
def test_a_round_announcing_another_clip_range_is_refused_before_training(
    clock: FakeClock, initial: ArrayRecord
) -> None:
    fed = Federation({n: 20 for n in NODES})
    fed.app = ClientApp(mods=[SecAggMod(clip_range=0.5)])  # the device agreed to 0.5, the server uses 1.0
    fed.app.train()(lambda msg, ctx: pytest.fail("trained under a contradicting encoding"))
    result = SecAggWorkflow(num_rounds=1, timeout=30)(fed.grid(clock), initial)
    assert result.rounds_aborted == 1
    stage2 = [r for r in fed.replies if r.has_error()]
    assert stage2 and all("contradicts" in r.error.reason for r in stage2)


def test_train_messages_without_a_secagg_record_reach_the_app_unchanged(server_process: None) -> None:
    seen: list[Message] = []
    app = ClientApp(mods=[SecAggMod()])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        seen.append(msg)
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    content = RecordDict({"config": ConfigRecord({"lr": 0.1})})
    msg = Message(content, dst_node_id=11, message_type=MessageType.TRAIN)
    msg.metadata.__dict__["_message_id"] = "m2"
    reply = app(msg, Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={}))
    assert seen == [msg] and not reply.has_error()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 4}, "bits"),
        ({"clip_range": math.inf}, "clip_range"),
    ],
)
def test_bad_mod_settings_are_one_line_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SecAggMod(**kwargs)
