"""Driving real EdgeClient handlers with Flower Message/Context objects, in process (no network)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fedlab.algorithms.secure_messages import (
    ClientStageMessage,
    SetupMessage,
    StageCall,
    StageReplies,
    StageRequest,
)
from fedlab.algorithms.secure_wire import call_bytes
from fedlab.core.config import RunConfig
from fedlab.flower.edge import EdgeClient, EdgeDataSource
from fedlab.flower.records import ARRAYS, CONFIG
from fedlab.flower.secure_transport import MESSAGE_TYPE, SECAGG, decode_reply
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import Stage
from fedlab.secagg.messages import SecAggParams
from fedlab.training.models import build_model, get_weights

RUN_ID = 7


def task_identity() -> Iterator[None]:
    """Flower's Message needs the process's task identity, as a SuperNode sets it (a fixture body)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def device(
    config: RunConfig, data: Path, state: Path, *, node_id: int = 1, **node: Any
) -> tuple[EdgeClient, Context]:
    """An edge client serving ``config`` on ``data``, its budget in ``state``; ``node``: more node config."""
    node_config = {
        "data-path": str(data),
        "state-dir": str(state),
        "device-id": f"pi-{node_id}",
        "max-epsilon": 0.0,
        **{key.replace("_", "-"): value for key, value in node.items()},
    }
    context = Context(
        run_id=RUN_ID, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={}
    )
    return EdgeClient(EdgeDataSource(lambda _: config)), context


def digits_weights(config: RunConfig) -> list[np.ndarray]:
    """Initial weights of ``config``'s model for the digits CSVs (64 features, 10 classes)."""
    model = build_model(config.model.kind, feature_shape=(64,), num_classes=10, hidden=config.model.hidden)
    return get_weights(model)


def train_message(config: RunConfig, server_round: int, **values: float) -> Message:
    """A train message of ``server_round`` with the global weights and extra config ``values``."""
    round_config = ConfigRecord({"round-seed": 11 * server_round, "server-round": server_round, **values})
    content = RecordDict({ARRAYS: ArrayRecord(digits_weights(config)), CONFIG: round_config})
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def advertise_message(
    round_num: int, encoding: FixedPointCodec | SkellamParams | None = None, *, length: int = 10
) -> Message:
    """A stage-0 (key advertising) message of ``round_num``."""
    params = SecAggParams(round_num, length, 2**32, 2, 2, bytes(32), 3)
    call = call_bytes(StageCall(Stage.ADVERTISE_KEYS, round_num, 5, SetupMessage(params, 0, encoding)))
    return Message(
        content=RecordDict({SECAGG: ConfigRecord({"call": call})}), dst_node_id=1, message_type=MESSAGE_TYPE
    )


@dataclass
class EdgeSecureTransport:
    """A SecureTransport whose clients are real EdgeClients answering ``train.secagg`` Messages.

    ``refusals`` keeps every error reply: (round, stage, client id, code, reason).
    """

    devices: Mapping[str, tuple[EdgeClient, Context]]
    refusals: list[tuple[int, Stage, str, int, str]] = field(default_factory=list)

    def available_clients(self) -> list[str]:
        return list(self.devices)

    def stage(self, request: StageRequest) -> StageReplies:
        replies: dict[str, ClientStageMessage] = {}
        failures: list[str] = []
        for cid in request.messages:
            client, context = self.devices[cid]
            content = RecordDict({SECAGG: ConfigRecord({"call": call_bytes(request.call(cid))})})
            if request.weights:
                content[ARRAYS] = ArrayRecord([np.asarray(w) for w in request.weights])
            msg = Message(content=content, dst_node_id=context.node_id, message_type=MESSAGE_TYPE)
            reply = client.secagg(msg, context)
            if reply.has_error():
                self.refusals.append(
                    (request.round_num, request.stage, cid, reply.error.code, reply.error.reason)
                )
                failures.append(f"client {cid}: {reply.error.reason}")
                continue
            data = reply.content.config_records[SECAGG]["reply"]
            assert isinstance(data, bytes)
            replies[cid] = decode_reply(data, request)
        return StageReplies(replies, tuple(failures))
