"""SecAgg+ rounds over a fake Grid: real clients, real stage bytes, corrupted replies are dropouts.

Prepare six nodes running fedlab's ClientApp handlers (``FedlabClient.secagg``, seeded as under
``fedlab simulate``), execute one secure round through ``FlowerSecureTransport`` on a fake
SuperLink, assert what reached the server at each stage and that the unmasked mean equals the
plain mean of the included clients' deltas within one quantization step. A corrupted, late,
refused or off-stage reply must be a dropout (the round goes on without it), never an exception.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedlab.flower.secure_transport import FlowerSecureTransport
from fedlab.flower.server import discover_clients

from .fake_grid import (
    REPLY_TYPES,
    SECAGG,
    SECAGG_MESSAGE_TYPE,
    FakeClock,
    FakeGrid,
    Fleet,
    MaskedReply,
    RecordingTransport,
    Stage,
    client_error,
    node_unavailable,
    reframe,
    secure_config,
    secure_round,
    secure_settings,
    seeded_source,
)

NODES = [101, 102, 103, 104, 105, 106]
TIMEOUT = 30.0
VICTIM = "2"  # the client whose replies are tampered with
VICTIM_NODE = NODES[int(VICTIM)]


pytestmark = pytest.mark.usefixtures("server_process")


class Federation:
    """Six real clients on a fake SuperLink, discovered as the ServerApp does, and a secure round."""

    def __init__(self, clock: FakeClock) -> None:
        self.fleet = Fleet(secure_config(len(NODES)), NODES)
        self.grid = FakeGrid(self.fleet.handlers(), clock=clock)
        self.clients = discover_clients(self.grid, list(self.grid.get_node_ids()), timeout=TIMEOUT)
        self.transport = RecordingTransport(FlowerSecureTransport(self.grid, self.clients, timeout=TIMEOUT))
        self.weights = self.fleet.initial_weights()

    def run_round(self, round_num: int = 1) -> Any:
        config = self.fleet.config
        settings = secure_settings(config, num_clients=len(NODES), dim=sum(w.size for w in self.weights))
        return secure_round(
            self.transport,
            settings,
            round_num=round_num,
            sampled=sorted(self.transport.available_clients()),
            weights=self.weights,
            source=seeded_source(b"server"),
        )

    def stage_messages(self, node: int) -> list[Message]:
        return [m for m in self.grid.to(node) if m.metadata.message_type == SECAGG_MESSAGE_TYPE]

    def assert_plain_mean(self, outcome: Any, included: list[str]) -> None:
        """The round released the plain mean of exactly ``included``'s deltas, within one step."""
        assert outcome.mean_delta is not None, outcome.extra
        assert sorted(r.client_id for r in outcome.reports) == sorted(included)
        assert outcome.extra["included"] == len(included)
        expected = self.fleet.plain_mean(self.weights, 1, [NODES[int(c)] for c in included])
        bound = self.fleet.quantization_step(len(NODES))
        for got, want in zip(outcome.mean_delta, expected, strict=True):
            assert np.max(np.abs(got - want)) <= bound + 1e-12
            assert np.max(np.abs(want)) > 100 * bound  # the comparison is not vacuous


def test_a_full_secure_round_through_the_grid_releases_the_plain_mean(clock: FakeClock) -> None:
    fed = Federation(clock)
    assert fed.clients == {node: str(i) for i, node in enumerate(NODES)}
    outcome = fed.run_round()

    fed.assert_plain_mean(outcome, [str(i) for i in range(len(NODES))])
    assert outcome.extra["failures"] == 0
    assert [request.stage for request, _ in fed.transport.stages] == list(Stage)
    for node in NODES:
        messages = fed.stage_messages(node)
        assert len(messages) == len(Stage)  # one message per stage, none repeated
        # Only the masked-input stage carries the global model (the client trains then).
        carries = ["arrays" in m.content.array_records for m in messages]
        assert carries == [stage == Stage.MASKED_INPUT for stage in Stage]
        sent = messages[Stage.MASKED_INPUT].content.array_records["arrays"].to_numpy_ndarrays()
        for got, want in zip(sent, fed.weights, strict=True):
            np.testing.assert_array_equal(got, want)
        # After unmasking, no client keeps its round's secret state.
        assert "fedlab-secagg" not in fed.fleet.contexts[node].state.config_records
    assert clock.now == 0.0  # every stage returned as soon as all replied


def test_each_stage_returns_typed_replies_keyed_by_the_client_that_sent_them(clock: FakeClock) -> None:
    fed = Federation(clock)
    fed.run_round()
    (setup_request, _) = fed.transport.stages[0]
    index = {cid: message.index for cid, message in setup_request.messages.items()}
    assert sorted(index.values()) == list(range(len(NODES)))
    for request, replies in fed.transport.stages:
        assert set(replies.replies) == set(request.messages)
        assert replies.failures == ()
        for cid, reply in replies.replies.items():
            assert isinstance(reply, REPLY_TYPES[request.stage])
            inner = reply.masked if isinstance(reply, MaskedReply) else reply
            # The node of client cid answered the message addressed to cid's protocol index.
            assert inner.sender == index[cid] and inner.round_id == 1


def test_available_clients_are_the_discovered_nodes_connected_now(clock: FakeClock) -> None:
    fed = Federation(clock)
    fed.grid.online -= {NODES[1], NODES[4]}
    fed.grid.add_node(999, fed.fleet.handler(NODES[0]))  # connected but never discovered
    assert sorted(fed.transport.available_clients()) == ["0", "2", "3", "5"]


# ---- one client's reply goes wrong --------------------------------------------------------------

Tamper = Callable[[Message, Message, list[bytes]], Message | None]


def reply_with(value: Any) -> Tamper:
    return lambda msg, _good, _earlier: Message(
        RecordDict({SECAGG: ConfigRecord({"reply": value})}), reply_to=msg
    )


def edit_bytes(change: Callable[[bytes], bytes]) -> Tamper:
    def tamper(msg: Message, good: Message, _earlier: list[bytes]) -> Message:
        data = good.content.config_records[SECAGG]["reply"]
        assert isinstance(data, bytes)
        changed = change(data)
        assert changed != data
        return reply_with(changed)(msg, good, [])

    return tamper


def edit_header(edit: Callable[[dict[str, Any]], object]) -> Tamper:
    return edit_bytes(lambda data: reframe(data, edit))


def set_meta(key: str, value: float) -> Callable[[dict[str, Any]], object]:
    return lambda header: header["meta"].__setitem__(key, value)


TAMPERS: dict[str, Tamper] = {
    "garbage bytes": reply_with(b"\x00\x01 not a stage reply"),
    "truncated": edit_bytes(lambda data: data[:-3]),
    "not bytes": reply_with("a text, not bytes"),
    "no reply field": lambda msg, _g, _e: Message(
        RecordDict({SECAGG: ConfigRecord({"call": b"x"})}), reply_to=msg
    ),
    "no content": lambda msg, _g, _e: Message(RecordDict(), reply_to=msg),
    "error": lambda msg, _g, _e: client_error(msg, "secagg refused: test"),
    "another round": edit_header(lambda header: header.__setitem__("round", 2)),
    "the previous stage's reply": lambda msg, good, earlier: reply_with(earlier[-1])(msg, good, earlier),
    "no answer": lambda _msg, _g, _e: None,
    "NaN metadata": edit_header(set_meta("steps", math.nan)),
    "infinite metadata": edit_header(set_meta("num-examples", math.inf)),
    "deeply nested header": edit_bytes(
        lambda data: data[: data.index(b"\n") + 1] + struct.pack("<I", 200_000) + b"[" * 200_000
    ),
}

CASES = [
    pytest.param(how, stage, id=f"{how}@{stage.name}")
    for how, stage in [
        ("garbage bytes", Stage.ADVERTISE_KEYS),
        ("garbage bytes", Stage.MASKED_INPUT),
        ("truncated", Stage.ADVERTISE_KEYS),
        ("truncated", Stage.MASKED_INPUT),
        ("not bytes", Stage.SHARE_KEYS),
        ("no reply field", Stage.UNMASK),
        ("no content", Stage.ADVERTISE_KEYS),
        ("error", Stage.MASKED_INPUT),
        ("error", Stage.UNMASK),
        ("another round", Stage.ADVERTISE_KEYS),
        ("another round", Stage.MASKED_INPUT),
        ("the previous stage's reply", Stage.SHARE_KEYS),
        ("the previous stage's reply", Stage.UNMASK),
        ("no answer", Stage.SHARE_KEYS),
        ("NaN metadata", Stage.MASKED_INPUT),
        ("infinite metadata", Stage.MASKED_INPUT),
        ("deeply nested header", Stage.ADVERTISE_KEYS),
    ]
]


def tamper_at(fed: Federation, stage: Stage, tamper: Tamper) -> None:
    """The victim's node answers for real, but its reply at ``stage`` is replaced by ``tamper``'s."""
    answer = fed.grid.handlers[VICTIM_NODE]
    genuine: list[bytes] = []

    def handler(msg: Message) -> Message | None:
        good = answer(msg)
        assert good is not None and not good.has_error()
        if len(genuine) == stage:
            return tamper(msg, good, list(genuine))
        data = good.content.config_records[SECAGG]["reply"]
        assert isinstance(data, bytes)
        genuine.append(data)
        return good

    fed.grid.handlers[VICTIM_NODE] = handler


@pytest.mark.parametrize(("how", "stage"), CASES)
def test_a_bad_reply_is_a_dropout_and_the_round_goes_on(clock: FakeClock, how: str, stage: Stage) -> None:
    fed = Federation(clock)
    tamper_at(fed, stage, TAMPERS[how])
    outcome = fed.run_round()

    replies = fed.transport.replies_at(stage)
    request = next(r for r, _ in fed.transport.stages if r.stage == stage)
    assert VICTIM in request.messages  # it was asked ...
    assert set(replies.replies) == set(request.messages) - {VICTIM}  # ... and only it is missing
    if how == "no answer":
        assert TIMEOUT <= clock.now <= TIMEOUT + 1.0
    else:
        assert [f for f in replies.failures if f"client {VICTIM}" in f], replies.failures
    # Dropped before its masked input was in, it is left out; dropped at unmasking, its input is in.
    everyone = [str(i) for i in range(len(NODES))]
    included = everyone if stage == Stage.UNMASK else [c for c in everyone if c != VICTIM]
    fed.assert_plain_mean(outcome, included)
    if stage < Stage.UNMASK:  # a dropout is not asked again in that round
        assert len(fed.stage_messages(VICTIM_NODE)) == stage + 1


# ---- a node lost in the middle of a round -------------------------------------------------------


def lose_at(fed: Federation, stage: Stage, *, restart: bool, back_after: float = 2.0) -> None:
    """The victim's node loses its connection when its ``stage`` message arrives, and comes back."""
    answer = fed.grid.handlers[VICTIM_NODE]
    seen = {"n": 0, "lost": False}

    def handler(msg: Message) -> Message | None:
        if msg.metadata.message_type == SECAGG_MESSAGE_TYPE:
            seen["n"] += 1
            if seen["n"] == stage + 1 and not seen["lost"]:
                seen["lost"] = True
                if restart:
                    fed.fleet.restart(VICTIM_NODE)  # the device's process died: its state is gone
                fed.grid.online.discard(VICTIM_NODE)
                fed.grid.clock.at(fed.grid.clock.now + back_after, lambda: fed.grid.reactivate(VICTIM_NODE))
                return node_unavailable(msg)
        return answer(msg)

    fed.grid.handlers[VICTIM_NODE] = handler


def test_a_node_that_reconnects_during_key_advertising_is_asked_again_and_counted(clock: FakeClock) -> None:
    fed = Federation(clock)
    lose_at(fed, Stage.ADVERTISE_KEYS, restart=True)
    outcome = fed.run_round()
    assert len(fed.stage_messages(VICTIM_NODE)) == len(Stage) + 1  # stage 0 twice
    assert VICTIM in fed.transport.replies_at(Stage.ADVERTISE_KEYS).replies
    fed.assert_plain_mean(outcome, [str(i) for i in range(len(NODES))])
    assert 0.0 < clock.now < TIMEOUT


def test_a_node_that_reconnects_with_its_state_mid_round_is_counted(clock: FakeClock) -> None:
    fed = Federation(clock)
    lose_at(fed, Stage.SHARE_KEYS, restart=False)  # a network blip: the SuperNode kept its state
    outcome = fed.run_round()
    assert len(fed.stage_messages(VICTIM_NODE)) == len(Stage) + 1
    fed.assert_plain_mean(outcome, [str(i) for i in range(len(NODES))])


def test_a_device_restarted_mid_round_refuses_the_resent_stage_and_drops_out(clock: FakeClock) -> None:
    fed = Federation(clock)
    lose_at(fed, Stage.MASKED_INPUT, restart=True)
    outcome = fed.run_round()
    # Asked stage 2 again once it was back; without its stage-0/1 secrets it refused.
    messages = fed.stage_messages(VICTIM_NODE)
    assert len(messages) == 4  # stages 0, 1, 2, 2 again; no unmask request
    failures = fed.transport.replies_at(Stage.MASKED_INPUT).failures
    assert [f for f in failures if f"client {VICTIM}" in f and "refused" in f], failures
    assert "fedlab-secagg" not in fed.fleet.contexts[VICTIM_NODE].state.config_records
    fed.assert_plain_mean(outcome, [str(i) for i in range(len(NODES)) if str(i) != VICTIM])


def test_a_node_that_does_not_come_back_is_a_dropout(clock: FakeClock) -> None:
    fed = Federation(clock)
    lose_at(fed, Stage.SHARE_KEYS, restart=True, back_after=10 * TIMEOUT)
    outcome = fed.run_round()
    assert len(fed.stage_messages(VICTIM_NODE)) == 2
    assert VICTIM not in fed.transport.replies_at(Stage.SHARE_KEYS).replies
    fed.assert_plain_mean(outcome, [str(i) for i in range(len(NODES)) if str(i) != VICTIM])


def test_identity_query_is_the_only_other_message(clock: FakeClock) -> None:
    fed = Federation(clock)
    fed.run_round()
    for node in NODES:
        kinds = [m.metadata.message_type for m in fed.grid.to(node)]
        assert kinds == [MessageType.QUERY] + [SECAGG_MESSAGE_TYPE] * len(Stage)
