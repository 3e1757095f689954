"""The end of a run, told to the nodes: real ClientApp handlers on a fake Grid (no network).

The adversary here is only the network: a node that is gone or never answers must not hold the
server up past the announce timeout, and an unreadable state directory is one error line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedlab.core.config import RunConfig
from fedlab.flower.client import PartitionDataSource
from fedlab.flower.node_app import DEVICE_FAILED, NodeDispatcher
from fedlab.flower.run_end import (
    RUN_ENDED_FILE,
    announce_run_end,
    clear_run_ended,
    read_run_ended,
    run_end_content,
)

from .fake_grid import FakeClock, FakeGrid, secure_config

pytestmark = pytest.mark.usefixtures("server_process")


def dispatcher(config: RunConfig) -> NodeDispatcher:
    return NodeDispatcher(PartitionDataSource(lambda _: config), lambda _: config)


def device_context(state: Path, node_id: int) -> Context:
    node_config: dict[str, bool | float | int | str] = {
        "data-path": str(state / "data.csv"),
        "state-dir": str(state),
        "device-id": f"pi-{node_id}",
    }
    return Context(run_id=9, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})


def simulation_context(node_id: int) -> Context:
    node_config: dict[str, bool | float | int | str] = {"partition-id": 0, "num-partitions": 2}
    return Context(run_id=9, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})


def test_every_connected_node_acknowledges_and_a_device_records_why(tmp_path: Path, clock: FakeClock) -> None:
    app = dispatcher(secure_config(2))
    states = {1: tmp_path / "pi-1", 2: tmp_path / "pi-2"}
    for state in states.values():
        state.mkdir()
    contexts = {1: device_context(states[1], 1), 2: device_context(states[2], 2), 3: simulation_context(3)}
    handlers = {node: (lambda msg, c=ctx: app.query(msg, c)) for node, ctx in contexts.items()}
    grid = FakeGrid(handlers, clock=clock)
    grid.online.discard(2)  # device 2 is not connected: it is not told

    assert announce_run_end(grid, "budget exhausted", timeout=5.0) == 2
    assert read_run_ended(states[1]) == "budget exhausted"
    assert read_run_ended(states[2]) is None
    assert [m.metadata.message_type for m in grid.sent] == [MessageType.QUERY, MessageType.QUERY]
    assert {m.metadata.dst_node_id for m in grid.sent} == {1, 3}


def test_a_node_that_never_answers_does_not_hold_the_server_past_the_timeout(clock: FakeClock) -> None:
    grid = FakeGrid({1: lambda msg: None, 2: lambda msg: Message(RecordDict(), reply_to=msg)}, clock=clock)
    assert announce_run_end(grid, "completed all rounds", timeout=5.0) == 1
    assert grid.timeouts == [5.0]


def test_nobody_connected_sends_nothing(clock: FakeClock) -> None:
    grid = FakeGrid({1: lambda msg: None}, clock=clock, online=[])
    assert announce_run_end(grid, "completed all rounds") == 0
    assert grid.sent == []


def test_a_device_that_cannot_record_the_end_answers_one_error_line(tmp_path: Path) -> None:
    app = dispatcher(secure_config(2))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    content = run_end_content("completed all rounds")
    msg = Message(content=content, dst_node_id=1, message_type=MessageType.QUERY)
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = app.query(msg, device_context(blocked, 1))
    assert reply.has_error() and reply.error.code == DEVICE_FAILED
    assert "cannot record the end of the run" in reply.error.reason and "\n" not in reply.error.reason


def test_the_identity_query_is_not_an_end(tmp_path: Path) -> None:
    app = dispatcher(secure_config(2))
    msg = Message(content=RecordDict(), dst_node_id=3, message_type=MessageType.QUERY)
    msg.metadata.__dict__["_message_id"] = "m2"
    reply = app.query(msg, simulation_context(3))
    assert not reply.has_error() and reply.content.config_records  # the client's identity


def test_an_unreadable_end_file_still_counts_and_clearing_forgets_it(tmp_path: Path) -> None:
    (tmp_path / RUN_ENDED_FILE).write_text("{not json")
    assert read_run_ended(tmp_path) == "ended"
    clear_run_ended(tmp_path)
    assert read_run_ended(tmp_path) is None
    clear_run_ended(tmp_path)  # nothing to clear is fine
