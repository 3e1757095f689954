"""The ServerApp's plain transport over a fake Grid: discovery, train messages, replies, rejoins.

Prepare a fake SuperLink whose nodes are small handlers, execute ``discover_clients``,
``FlowerTransport`` or ``wait_for_nodes``, assert which nodes got which messages and which
clients came back. Waiting runs on a fake clock: no sleeps, no network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedlab.algorithms.federation import RoundPlan
from fedlab.core.errors import FedlabError
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.flower.records import ARRAYS, CONFIG, identity_reply_content, train_reply_content
from fedlab.flower.server import FlowerTransport, discover_clients, wait_for_nodes

from .fake_grid import (
    FakeClock,
    FakeGrid,
    Fleet,
    Handler,
    client_error,
    node_unavailable,
    secure_config,
    upload_lost,
)

TIMEOUT = 30.0
WEIGHTS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]


pytestmark = pytest.mark.usefixtures("server_process")


def fake_client(cid: str, value: float = 0.0, num_examples: int = 10) -> Handler:
    """Answers the identity query with ``cid`` and a train message with a delta full of ``value``."""

    def answer(msg: Message) -> Message:
        if msg.metadata.message_type == MessageType.QUERY:
            return Message(identity_reply_content(cid), reply_to=msg)
        weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
        report = TrainReport(
            client_id=cid,
            update=Update(
                arrays=tuple(np.full_like(w, value) for w in weights),
                num_examples=num_examples,
                weight=float(num_examples),
            ),
            train_loss=0.25,
            epsilon=1.5,
            noise_multiplier=1.1,
            sample_rate=0.05,
            steps=4,
        )
        return Message(train_reply_content(report), reply_to=msg)

    return answer


def fleet_of(clock: FakeClock, n: int = 4) -> FakeGrid:
    """Nodes 11, 12, ... are clients "a", "b", ...; client k's delta is full of k."""
    return FakeGrid({10 + k: fake_client("abcdefgh"[k - 1], float(k)) for k in range(1, n + 1)}, clock=clock)


NODES = {11: "a", 12: "b", 13: "c", 14: "d"}


def plan(*cids: str, **instructions: float) -> RoundPlan:
    return RoundPlan(round_num=3, client_ids=tuple(cids), seed=1234, instructions=instructions)


def reports_by_client(replies: object) -> dict[str, TrainReport]:
    reports = replies.reports  # type: ignore[attr-defined]
    out = {r.client_id: r for r in reports}
    assert len(out) == len(reports), "one report per client"
    return out


def crash_then_return(grid: FakeGrid, node: int, back_at: float | None, times: int = 1) -> None:
    """``node`` loses its connection on its first ``times`` messages; it is back ``back_at`` s later."""
    answer = grid.handlers[node]
    crashes = {"left": times}

    def handler(msg: Message) -> Message | None:
        if crashes["left"] == 0:
            return answer(msg)
        crashes["left"] -= 1
        grid.online.discard(node)
        if back_at is not None:
            grid.clock.at(grid.clock.now + back_at, lambda: grid.reactivate(node))
        return node_unavailable(msg)

    grid.handlers[node] = handler


# ---- discovery ----------------------------------------------------------------------------------


def test_discovery_maps_every_answering_node_to_its_client_id(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    clients = discover_clients(grid, [11, 12, 13, 14], timeout=TIMEOUT)
    assert clients == NODES
    for node in NODES:
        (query,) = grid.to(node)
        assert query.metadata.message_type == MessageType.QUERY
        assert len(query.content) == 0  # the query carries nothing
    assert grid.timeouts == [TIMEOUT]


def test_discovery_asks_only_the_given_nodes(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    assert discover_clients(grid, [12, 14], timeout=TIMEOUT) == {12: "b", 14: "d"}
    assert grid.to(11) == [] and grid.to(13) == []


def test_discovery_leaves_out_nodes_that_fail_or_answer_badly(clock: FakeClock) -> None:
    def content(record: ConfigRecord | None) -> Handler:
        return lambda msg: Message(RecordDict({} if record is None else {"client": record}), reply_to=msg)

    grid = FakeGrid(
        {
            11: fake_client("a"),
            12: client_error,  # the ClientApp raised
            13: content(None),  # no identity record
            14: content(ConfigRecord({"client-id": ""})),  # empty id
            15: content(ConfigRecord({"client-id": 7})),  # not a string
            16: lambda msg: None,  # never answers
            17: fake_client("g"),
            18: node_unavailable,  # lost before it answered
        },
        clock=clock,
    )
    assert discover_clients(grid, list(range(11, 19)), timeout=TIMEOUT) == {11: "a", 17: "g"}


def test_discovery_refuses_two_nodes_claiming_one_client(clock: FakeClock) -> None:
    grid = FakeGrid({11: fake_client("a"), 12: fake_client("b"), 13: fake_client("a")}, clock=clock)
    with pytest.raises(FedlabError, match="same client id"):
        discover_clients(grid, [11, 12, 13], timeout=TIMEOUT)


def test_discovery_through_the_real_client_app_gives_partition_ids(clock: FakeClock) -> None:
    fleet = Fleet(secure_config(3), [101, 102, 103])
    grid = FakeGrid(fleet.handlers(), clock=clock)
    assert discover_clients(grid, list(grid.get_node_ids()), timeout=TIMEOUT) == {
        101: "0",
        102: "1",
        103: "2",
    }


def test_waiting_for_nodes_returns_once_enough_are_connected(clock: FakeClock) -> None:
    grid = fleet_of(clock, 3)
    grid.online = {11}
    clock.at(5.0, lambda: grid.reactivate(12))
    clock.at(9.0, lambda: grid.reactivate(13))
    assert sorted(wait_for_nodes(grid, count=2, timeout=60.0)) == [11, 12]
    assert 5.0 <= clock.now < 9.0


def test_waiting_for_nodes_gives_up_at_the_timeout(clock: FakeClock) -> None:
    grid = fleet_of(clock, 3)
    grid.online = {11}
    with pytest.raises(FedlabError, match="only 1 of 2"):
        wait_for_nodes(grid, count=2, timeout=10.0)
    assert 10.0 <= clock.now <= 11.0


def test_waiting_for_nodes_says_every_few_seconds_how_many_are_connected(clock: FakeClock, caplog) -> None:
    grid = fleet_of(clock, 3)
    grid.online = {11}
    clock.at(12.0, lambda: grid.reactivate(12))
    with caplog.at_level(logging.INFO, logger="flwr"):
        wait_for_nodes(grid, count=2, timeout=60.0)
    said = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert said == ["fedlab: waiting for 2 client nodes (1 connected)"] * 2  # at 5 s and 10 s


def test_a_simulation_short_of_nodes_fails_once_its_count_settles_not_at_the_timeout(
    clock: FakeClock,
) -> None:
    grid = fleet_of(clock, 3)
    grid.online = {11}
    clock.at(3.0, lambda: grid.reactivate(12))  # registering
    with pytest.raises(FedlabError, match=r"has 2 SuperNodes but the run needs 3.*num-supernodes=3"):
        wait_for_nodes(grid, count=3, timeout=600.0, settle=10.0)
    assert 13.0 <= clock.now <= 14.0


# ---- a round ------------------------------------------------------------------------------------


def test_available_clients_are_the_discovered_nodes_connected_now(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.add_node(99, fake_client("stranger"))  # connected, but not discovered
    transport = FlowerTransport(grid, NODES, timeout=TIMEOUT)
    assert sorted(transport.available_clients()) == ["a", "b", "c", "d"]
    grid.online -= {12, 14}
    assert sorted(transport.available_clients()) == ["a", "c"]


def test_a_round_sends_each_planned_client_the_model_and_the_round_config(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    transport = FlowerTransport(grid, NODES, timeout=TIMEOUT)
    replies = transport.train(plan("b", "d", **{"clipping_norm": 0.75}), WEIGHTS)

    assert grid.to(11) == [] and grid.to(13) == []  # not planned: not asked
    for node in (12, 14):
        (msg,) = grid.to(node)
        assert msg.metadata.message_type == MessageType.TRAIN
        sent = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
        for got, want in zip(sent, WEIGHTS, strict=True):
            np.testing.assert_array_equal(got, want)
        config = msg.content.config_records[CONFIG]
        assert (
            config["round-seed"] == 1234 and config["server-round"] == 3 and config["clipping_norm"] == 0.75
        )

    reports = reports_by_client(replies)
    assert sorted(reports) == ["b", "d"]
    for cid, value in (("b", 2.0), ("d", 4.0)):  # each report is its own node's delta
        report = reports[cid]
        assert [a.shape for a in report.update.arrays] == [w.shape for w in WEIGHTS]
        assert all(np.all(a == value) for a in report.update.arrays)
        assert (report.update.num_examples, report.epsilon, report.steps) == (10, 1.5, 4)
    assert replies.failures == ()
    assert clock.now == 0.0  # everyone answered: no waiting for the timeout


def test_a_real_client_app_reply_decodes_into_its_report(clock: FakeClock) -> None:
    config = secure_config(3, secagg={"enabled": False})
    fleet = Fleet(config, [101, 102, 103])
    grid = FakeGrid(fleet.handlers(), clock=clock)
    transport = FlowerTransport(grid, {101: "0", 102: "1", 103: "2"}, timeout=TIMEOUT)
    weights = fleet.initial_weights()
    replies = transport.train(plan("0", "2"), weights)
    reports = reports_by_client(replies)
    assert sorted(reports) == ["0", "2"] and replies.failures == ()
    for report in reports.values():
        assert [a.shape for a in report.update.arrays] == [w.shape for w in weights]
        assert report.update.num_examples > 0 and report.steps > 0
        assert any(np.any(a != 0) for a in report.update.arrays)


def test_error_and_malformed_replies_are_failures_not_reports(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.handlers[12] = client_error
    grid.handlers[13] = lambda msg: Message(RecordDict({"metrics": MetricRecord({"x": 1.0})}), reply_to=msg)
    transport = FlowerTransport(grid, NODES, timeout=TIMEOUT)
    replies = transport.train(plan("a", "b", "c", "d"), WEIGHTS)
    assert sorted(reports_by_client(replies)) == ["a", "d"]
    assert len(replies.failures) == 2
    assert any("raised" in f for f in replies.failures)
    assert any("malformed" in f for f in replies.failures)
    assert [len(grid.to(n)) for n in NODES] == [1, 1, 1, 1]  # an error is an answer: not asked again


def test_a_silent_client_is_dropped_at_the_timeout(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.handlers[13] = lambda msg: None
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c", "d"), WEIGHTS)
    assert sorted(reports_by_client(replies)) == ["a", "b", "d"]
    assert TIMEOUT <= clock.now <= TIMEOUT + 1.0
    assert len(grid.to(13)) == 1


def test_a_silent_client_counts_as_failed(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.handlers[13] = lambda msg: None
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c", "d"), WEIGHTS)
    assert len(replies.failures) == 1


@pytest.mark.parametrize(("delay", "kept"), [(3.0, True), (TIMEOUT - 1.0, True), (TIMEOUT + 5.0, False)])
def test_a_slow_reply_counts_only_within_the_timeout(clock: FakeClock, delay: float, kept: bool) -> None:
    grid = fleet_of(clock)
    grid.delays[12] = delay
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c"), WEIGHTS)
    assert ("b" in reports_by_client(replies)) is kept
    assert sorted(reports_by_client(replies)) == (["a", "b", "c"] if kept else ["a", "c"])
    assert len(grid.to(12)) == 1


def test_a_node_that_drops_and_rejoins_is_asked_again(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    crash_then_return(grid, 12, back_at=4.0)
    transport = FlowerTransport(grid, NODES, timeout=TIMEOUT)
    replies = transport.train(plan("a", "b", "c"), WEIGHTS)

    first, second = grid.to(12)
    assert first.metadata.message_id != second.metadata.message_id  # a new message, not a re-push
    assert second.metadata.message_type == MessageType.TRAIN
    for got, want in zip(second.content.array_records[ARRAYS].to_numpy_ndarrays(), WEIGHTS, strict=True):
        np.testing.assert_array_equal(got, want)
    assert second.content.config_records[CONFIG]["round-seed"] == 1234
    reports = reports_by_client(replies)
    assert sorted(reports) == ["a", "b", "c"] and replies.failures == ()
    assert all(np.all(a == 2.0) for a in reports["b"].update.arrays)
    assert clock.now < TIMEOUT  # it returned as soon as the rejoined node answered
    assert [len(grid.to(n)) for n in (11, 13, 14)] == [1, 1, 0]


def test_a_node_that_rejoins_before_the_server_saw_it_offline_is_asked_again(clock: FakeClock) -> None:
    # The device took the message and died; its session expired and it rejoined between two polls,
    # so the SuperLink never answered "node unavailable": the message would wait until the timeout.
    grid = fleet_of(clock)
    answer = grid.handlers[12]

    def die_silently(msg: Message) -> None:
        grid.handlers[12] = answer
        clock.at(clock.now + 5.0, lambda: grid.reactivate(12))

    grid.handlers[12] = die_silently
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c"), WEIGHTS)
    assert len(grid.to(12)) == 2
    assert sorted(reports_by_client(replies)) == ["a", "b", "c"] and replies.failures == ()
    assert clock.now < 10.0  # asked again as soon as the new session was seen, not at the timeout


def test_a_reply_sent_before_the_node_rejoined_is_kept(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.delays[12] = 2.0
    answer = grid.handlers[12]

    def answer_then_restart(msg: Message) -> Message | None:
        clock.at(clock.now + 3.0, lambda: grid.reactivate(12))
        return answer(msg)

    grid.handlers[12] = answer_then_restart
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b"), WEIGHTS)
    assert len(grid.to(12)) == 1
    assert sorted(reports_by_client(replies)) == ["a", "b"]


def test_a_node_that_died_uploading_its_reply_is_asked_again_once_it_rejoins(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    answer = grid.handlers[12]

    def die_uploading(msg: Message) -> Message:
        grid.handlers[12] = answer
        grid.online.discard(12)
        clock.at(clock.now + 6.0, lambda: grid.reactivate(12))
        return upload_lost(msg)

    grid.handlers[12] = die_uploading
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c"), WEIGHTS)
    assert len(grid.to(12)) == 2
    assert sorted(reports_by_client(replies)) == ["a", "b", "c"] and replies.failures == ()


def test_a_lost_upload_from_a_node_still_in_its_session_is_a_failure(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.handlers[12] = upload_lost
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b"), WEIGHTS)
    assert len(grid.to(12)) == 1  # the same session: not asked again (it would refuse a second release)
    (failure,) = replies.failures
    assert "unavailable" in failure and sorted(reports_by_client(replies)) == ["a"]


def test_a_reply_that_came_while_the_grid_was_busy_past_the_timeout_is_read(clock: FakeClock) -> None:
    # Pulling a lost upload makes Flower's Grid retry for minutes; the others' replies came meanwhile.
    grid = fleet_of(clock)
    grid.delays[11] = 1.0
    pull = grid.pull_messages
    blocked = {"once": True}

    def slow_pull(message_ids: Iterable[str]) -> Iterable[Message]:
        ready = list(pull(message_ids))
        if blocked.pop("once", False):
            clock.sleep(TIMEOUT + 60.0)
        return ready

    grid.pull_messages = slow_pull  # type: ignore[method-assign]
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b"), WEIGHTS)
    assert sorted(reports_by_client(replies)) == ["a", "b"] and replies.failures == ()


def test_a_node_lost_twice_is_asked_until_it_answers(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    crash_then_return(grid, 12, back_at=2.0, times=2)
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b"), WEIGHTS)
    assert len(grid.to(12)) == 3
    assert sorted(reports_by_client(replies)) == ["a", "b"] and replies.failures == ()


def test_a_node_that_does_not_come_back_is_a_failure(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    crash_then_return(grid, 12, back_at=None)
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b", "c"), WEIGHTS)
    assert sorted(reports_by_client(replies)) == ["a", "c"]
    (failure,) = replies.failures
    assert "Unavailable" in failure
    assert len(grid.to(12)) == 1  # never pushed to while it is offline
    assert TIMEOUT <= clock.now <= TIMEOUT + 1.0  # it waited for the node until the timeout


def test_a_node_that_comes_back_after_the_timeout_is_a_failure(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    crash_then_return(grid, 12, back_at=TIMEOUT + 10.0)
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "b"), WEIGHTS)
    assert sorted(reports_by_client(replies)) == ["a"] and len(replies.failures) == 1
    assert len(grid.to(12)) == 1


def test_a_device_that_rejoins_under_a_new_node_id_is_not_asked(clock: FakeClock) -> None:
    # Flower keeps a node id per SuperNode key: a device restarted without its key comes back as a
    # new node, which discovery (once, at the start) never mapped to a client.
    grid = fleet_of(clock)
    answer_b = grid.handlers[12]

    def crash(msg: Message) -> Message:
        grid.online.discard(12)
        grid.registered.discard(12)
        clock.at(clock.now + 2.0, lambda: grid.add_node(42, answer_b))
        return node_unavailable(msg)

    grid.handlers[12] = crash
    transport = FlowerTransport(grid, NODES, timeout=TIMEOUT)
    replies = transport.train(plan("a", "b", "c"), WEIGHTS)
    assert grid.to(42) == []
    assert sorted(reports_by_client(replies)) == ["a", "c"] and len(replies.failures) == 1
    assert 42 in grid.get_node_ids() and "b" not in transport.available_clients()


def test_a_message_the_superlink_refuses_is_not_waited_for(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.registered.discard(13)  # unregistered between discovery and the round
    grid.online.discard(13)
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("a", "c"), WEIGHTS)
    assert [m.metadata.dst_node_id for m in grid.refused] == [13]
    assert sorted(reports_by_client(replies)) == ["a"]
    assert clock.now == 0.0


def test_a_reply_is_credited_to_the_node_s_own_client(clock: FakeClock) -> None:
    grid = fleet_of(clock)
    grid.handlers[12] = fake_client("a", 2.0)  # node 12 is client "b" but claims to be "a"
    replies = FlowerTransport(grid, NODES, timeout=TIMEOUT).train(plan("b", "c"), WEIGHTS)
    assert "a" not in {r.client_id for r in replies.reports}
