"""A fake Flower Grid, a fake clock and real fedlab clients, for fast server-side tests.

No SuperLink, no network, no Ray. :class:`FakeGrid` implements the ``flwr.serverapp.Grid`` methods
the ServerApp calls the way the SuperLink behaves (see ``flwr.superlink.grid.inmemory_grid`` and
``flwr.server.superlink.linkstate``):

- ``push_messages`` sets each message's id and returns the ids it accepted; it refuses (leaves
  out) a message to a node the SuperLink does not know; a message to a known node that is offline
  is answered by the SuperLink itself with a ``NODE_UNAVAILABLE`` error (from the SuperLink's node
  id, not the destination's);
- ``pull_messages`` returns the replies that are ready for the asked ids, each once;
- ``send_and_receive`` is push then pull, keeping the replies not later than its timeout.

A node is a handler ``Message -> Message | None`` (None: the reply never comes), called when the
message is pushed. Time is :class:`FakeClock`, installed into :mod:`fedlab.flower.exchange` and
:mod:`fedlab.flower.server` in place of the ``time`` module: waiting costs no wall-clock time, and
scheduled events (a node going offline or coming back) run when the code under test sleeps.

Every import of the SecAgg+ vocabulary (which is moving between packages) is in this module.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Error, Message, MessageType, Metadata, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid

import fedlab.flower.exchange
import fedlab.flower.server

# ---- the SecAgg+ vocabulary (update these imports when the modules move) -------------------------
from fedlab.algorithms.federation import round_seed
from fedlab.algorithms.runs import secure_settings
from fedlab.algorithms.secure_fedavg import fixed_point_codec, secure_round
from fedlab.algorithms.secure_messages import REPLY_TYPES, MaskedReply
from fedlab.core.config import RunConfig, config_from_dict
from fedlab.flower.client import FedlabClient, PartitionDataSource
from fedlab.flower.secure_transport import MESSAGE_TYPE as SECAGG_MESSAGE_TYPE
from fedlab.flower.secure_transport import SECAGG
from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.errors import Stage
from fedlab.secagg.wire import frame, unframe
from fedlab.training.client_runtime import ClientRuntime
from fedlab.training.models import build_model, get_weights

__all__ = [
    "REPLY_TYPES",
    "SECAGG",
    "SECAGG_MESSAGE_TYPE",
    "SUPERLINK_NODE_ID",
    "FakeClock",
    "FakeGrid",
    "Fleet",
    "Handler",
    "MaskedReply",
    "RecordingTransport",
    "Stage",
    "client_error",
    "install_clock",
    "node_unavailable",
    "reframe",
    "round_seed",
    "secure_config",
    "secure_round",
    "secure_settings",
    "seeded_source",
    "server_identity",
    "upload_lost",
]

Handler = Callable[[Message], Message | None]


@contextmanager
def server_identity() -> Iterator[None]:
    """The process identity a ServerApp has: Flower's ``Message(...)`` reads it to set the sender."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


# ---- time ---------------------------------------------------------------------------------------


@dataclass
class FakeClock:
    """``time.monotonic``/``time.time``/``time.sleep`` over a virtual clock; ``at`` schedules events."""

    now: float = 0.0
    sleeps: list[float] = field(default_factory=list)
    _events: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        while self._events and self._events[0][0] <= self.now:
            _, _, action = self._events.pop(0)
            action()

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` once the clock has reached ``when``."""
        self._events.append((when, len(self._events), action))
        self._events.sort(key=lambda e: (e[0], e[1]))


def install_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the ``time`` module of the Flower adapter's waiting loops by a fresh FakeClock."""
    clock = FakeClock()
    monkeypatch.setattr(fedlab.flower.exchange, "time", clock)
    monkeypatch.setattr(fedlab.flower.server, "time", clock)
    return clock


# ---- replies the SuperLink or a client sends ----------------------------------------------------


def _lost_reply(msg: Message, code: int, reason: str) -> Message:
    """An error reply the SuperLink or the Grid makes up for a reply to ``msg`` it does not have."""
    metadata = Metadata(
        run_id=msg.metadata.run_id,
        message_id="",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id=msg.metadata.message_id,
        group_id=msg.metadata.group_id,
        created_at=msg.metadata.created_at,
        ttl=msg.metadata.ttl,
        message_type=msg.metadata.message_type,
    )
    return Message(error=Error(code=code, reason=reason), metadata=metadata)


def node_unavailable(msg: Message) -> Message:
    """The SuperLink's own reply when the destination node's heartbeat expired before it replied."""
    return _lost_reply(msg, ErrorCode.NODE_UNAVAILABLE, "Error: Node Unavailable")


def upload_lost(msg: Message) -> Message:
    """The Grid's own reply when the node died while uploading its reply (its objects never came)."""
    reason = "Reply message objects are unavailable. The sender may not have completed the upload."
    return _lost_reply(msg, ErrorCode.MESSAGE_UNAVAILABLE, reason)


def client_error(msg: Message, reason: str = "the ClientApp raised") -> Message:
    """A ClientApp's error reply (its handler raised)."""
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


# ---- the grid -----------------------------------------------------------------------------------


class FakeGrid(Grid):
    """A SuperLink in memory whose nodes are handlers (see the module docstring).

    Attributes:
        handlers: Node id -> what the node answers.
        registered: Nodes the SuperLink knows (messages to others are refused).
        online: Nodes connected now (``get_node_ids``); a known node not online gets its messages
            answered with ``NODE_UNAVAILABLE``.
        activations: Node id -> how many times it was activated (``get_nodes``' last activation).
        delays: Node id -> seconds after the push before its reply can be pulled.
        sent: Every message the SuperLink accepted, in order.
        refused: Every message it refused.
        timeouts: The timeout of each ``send_and_receive`` call.

    """

    def __init__(
        self,
        handlers: Mapping[int, Handler],
        *,
        clock: FakeClock | None = None,
        online: Iterable[int] | None = None,
    ) -> None:
        self.handlers: dict[int, Handler] = dict(handlers)
        self.registered: set[int] = set(handlers)
        self.online: set[int] = set(handlers) if online is None else set(online)
        self.activations: dict[int, int] = {node: 1 for node in self.online}
        self.delays: dict[int, float] = {}
        self.clock = clock or FakeClock()
        self.sent: list[Message] = []
        self.refused: list[Message] = []
        self.timeouts: list[float | None] = []
        self._ready: dict[str, tuple[float, Message]] = {}
        self._run: Any = None

    # -- what a test reads

    def to(self, node: int) -> list[Message]:
        """The messages the SuperLink accepted for ``node``, in order."""
        return [m for m in self.sent if m.metadata.dst_node_id == node]

    def add_node(self, node: int, handler: Handler) -> None:
        """A node registers and connects."""
        self.handlers[node] = handler
        self.registered.add(node)
        self.reactivate(node)

    def reactivate(self, node: int) -> None:
        """A known node connects again: a new session, with a new activation time."""
        self.online.add(node)
        self.activations[node] = self.activations.get(node, 0) + 1

    # -- the Grid

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.online)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [
            NodeInfo(node_id=node, status="online", last_activated_at=f"activation {self.activations[node]}")
            for node in sorted(self.online)
        ]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            meta = msg.metadata
            # What the SuperLink checks before it stores an instruction.
            assert meta.message_id == "" and meta.reply_to_message_id == "", "pushed twice"
            assert meta.src_node_id == SUPERLINK_NODE_ID and meta.ttl > 0
            node = meta.dst_node_id
            if node not in self.registered:
                self.refused.append(msg)
                continue
            message_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = message_id
            self.sent.append(msg)
            ids.append(message_id)
            reply = self.handlers[node](msg) if node in self.online else node_unavailable(msg)
            if reply is not None:
                assert reply.metadata.reply_to_message_id == message_id
                self._ready[message_id] = (self.clock.now + self.delays.get(node, 0.0), reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        out = []
        for message_id in message_ids:
            entry = self._ready.get(message_id)
            if entry is not None and entry[0] <= self.clock.now:
                del self._ready[message_id]
                out.append(entry[1])
        return out

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        self.timeouts.append(timeout)
        ids = list(self.push_messages(messages))
        limit = math.inf if timeout is None else self.clock.now + timeout
        out = []
        for message_id in ids:
            entry = self._ready.get(message_id)
            if entry is not None and entry[0] <= limit:
                del self._ready[message_id]
                out.append(entry[1])
        return out


def reframe(data: bytes, edit: Callable[[dict[str, Any]], object]) -> bytes:
    """A stage reply's bytes with its JSON header changed by ``edit`` (in place), framed again."""
    magic = data[: data.index(b"\n") + 1]
    header, tail = unframe(magic, data)
    edit(header)
    return frame(magic, header, tail)


# ---- real fedlab clients on fake nodes ----------------------------------------------------------


def secure_config(num_clients: int, **sections: Mapping[str, Any]) -> RunConfig:
    """Plain SecAgg+ on digits, clients weighted equally (so the secure mean is a plain mean)."""
    raw: dict[str, Any] = {
        "run": {"name": "fake-grid", "seed": 3, "rounds": 1},
        "data": {"dataset": "digits", "num_clients": num_clients},
        "model": {"kind": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "secagg": {
            "enabled": True,
            "bits": 32,
            "clip_range": 1.0,
            "min_survivors": 0.5,
            "weighting": "uniform",
        },
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return config_from_dict(raw)


class Fleet:
    """fedlab's ClientApp handlers (``FedlabClient``, seeded as under ``fedlab simulate``) on nodes.

    Node ``nodes[i]`` serves partition ``i``; each node keeps one ``Context`` whose state persists
    across messages, as a SuperNode's does, until :meth:`restart` (a crashed device loses it).
    """

    def __init__(self, config: RunConfig, nodes: Sequence[int]) -> None:
        self.config = config
        self.source = PartitionDataSource(config)
        self.client = FedlabClient(self.source, seeded=True)
        self.partition = {node: i for i, node in enumerate(nodes)}
        self.contexts = {node: self._context(node) for node in nodes}

    def _context(self, node: int) -> Context:
        node_config: dict[str, bool | float | int | str] = {
            "partition-id": self.partition[node],
            "num-partitions": len(self.partition),
        }
        return Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={})

    def restart(self, node: int) -> None:
        """The device restarts: its in-memory state is gone."""
        self.contexts[node] = self._context(node)

    def answer(self, node: int, msg: Message) -> Message:
        """Route ``msg`` as ``make_client_app`` does: query, train, train.secagg."""
        kind, context = msg.metadata.message_type, self.contexts[node]
        if kind == MessageType.QUERY:
            return self.client.query(msg, context)
        if kind == SECAGG_MESSAGE_TYPE:
            return self.client.secagg(msg, context)
        if kind == MessageType.TRAIN:
            return self.client.train(msg, context)
        raise AssertionError(f"unexpected message type {kind}")

    def handler(self, node: int) -> Handler:
        return lambda msg: self.answer(node, msg)

    def handlers(self) -> dict[int, Handler]:
        return {node: self.handler(node) for node in self.partition}

    def initial_weights(self) -> list[np.ndarray]:
        data = self.source.data(next(iter(self.contexts.values())))
        model = build_model(
            "logreg", feature_shape=data.feature_shape, num_classes=data.num_classes, hidden=64, seed=3
        )
        return get_weights(model)

    def plain_mean(
        self, weights: Sequence[np.ndarray], round_num: int, nodes: Sequence[int]
    ) -> list[np.ndarray]:
        """The mean delta of ``nodes``' clients without secure aggregation (same seeds, fresh runtime)."""
        runtime = ClientRuntime()
        deltas = []
        for node in nodes:
            report, _ = runtime.train(
                self.config,
                self.source.data(self.contexts[node]),
                weights,
                history=(),
                round_seed=round_seed(self.config.run.seed, round_num),
            )
            deltas.append([np.asarray(a, dtype=np.float64) for a in report.update.arrays])
        return [np.mean([d[i] for d in deltas], axis=0) for i in range(len(deltas[0]))]

    def quantization_step(self, sampled: int) -> float:
        """One step of the round's fixed-point encoding: the bound on |secure mean - plain mean|."""
        secagg = self.config.secagg
        codec = fixed_point_codec(bits=secagg.bits, clip=secagg.clip_range, max_summands=sampled)
        return 1.0 / codec.scale


@dataclass
class RecordingTransport:
    """Wraps a SecureTransport and keeps every stage's request and replies, in order."""

    inner: Any
    stages: list[tuple[Any, Any]] = field(default_factory=list)

    def available_clients(self) -> list[str]:
        return list(self.inner.available_clients())

    def stage(self, request: Any) -> Any:
        replies = self.inner.stage(request)
        self.stages.append((request, replies))
        return replies

    def replies_at(self, stage: Stage) -> Any:
        found = [replies for request, replies in self.stages if request.stage == stage]
        assert len(found) == 1, f"stage {stage.name} ran {len(found)} times"
        return found[0]
