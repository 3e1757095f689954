"""Carrying SecAgg+ stages over a Flower Grid with Message-API messages.

Each stage is one :func:`~fedlab.flower.exchange.exchange` of ``train.secagg`` messages (a custom
action of the ``train`` category, registered by :func:`fedlab.flower.client.make_client_app`). A
message's content holds the stage call as bytes (``secagg`` config record, see
:mod:`fedlab.algorithms.secure_wire`) and, at the masked-input stage, the global weights
(``arrays``); a reply holds the stage reply as bytes. An error reply, a missing reply (timeout) or a
malformed one is a dropout: the protocol handles it. The client keeps its secret per-round state in
its own ``context.state``; nothing secret travels to the server except encrypted shares. A device
that crashes and rejoins within a stage is asked again; after stage 0 it has lost its secret state
and refuses, which is a dropout too.

This module only moves messages: the server side of the protocol is
:mod:`fedlab.algorithms.secure_fedavg`, the client side :mod:`fedlab.algorithms.secure_client` (carried by
:mod:`fedlab.flower.secure_client`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlab.algorithms.secure_messages import ClientStageMessage, StageReplies, StageRequest
from fedlab.algorithms.secure_wire import call_bytes, parse_reply
from fedlab.flower.exchange import exchange
from fedlab.flower.records import arrays_record, usable_reply

LOG = logging.getLogger("fedlab.secure_transport")

SECAGG = "secagg"
"""Config record holding a stage call (``call``) or reply (``reply``) as bytes."""
ARRAYS = "arrays"
"""The array record of the global weights (masked-input stage only)."""
WEIGHT_CAP = "weight-cap"
"""The ``secagg`` record's example-weight cap (0: uniform), for :class:`~fedlab.flower.SecAggMod`."""
TRAIN_CONFIG = "config"
"""The config record of the app's own train function (masked-input stage, when given)."""
MESSAGE_TYPE = f"{MessageType.TRAIN}.secagg"
"""The message type of every stage message: ``train`` category, ``secagg`` action."""


def decode_reply(data: bytes, request: StageRequest) -> ClientStageMessage:
    """Parse a client's stage reply into the loop's type; ValueError if malformed or off-stage."""
    return request.accept(parse_reply(data))


class FlowerSecureTransport:
    """A :class:`~fedlab.algorithms.secure_fedavg.SecureTransport` over a Flower Grid.

    Args:
        grid: The Grid of the running ServerApp.
        clients: Node id to client id, from the identity query.
        timeout: Seconds to wait for each stage's replies; late clients have dropped out.
        message_type: The stage messages' type: fedlab's own ``train.secagg`` (its ClientApp
            registers that action), or ``train`` for any ClientApp with
            :class:`~fedlab.flower.secagg_mod.SecAggMod` (which answers the ``train`` messages
            that hold a ``secagg`` record).
        names: The model's array names (the weights travel as an ``ArrayRecord`` keyed by them);
            None: keyed "0", "1", ...
        train_config: Sent with the masked-input stage as the ``config`` record (the app's own
            train function reads it), with ``server-round`` added.
        weight_cap: The example-weight cap of plain SecAgg+ (None: uniform weights), announced in
            every stage's ``secagg`` record as :data:`WEIGHT_CAP` (0 for None) for clients that
            take the weighting from the server.

    """

    def __init__(
        self,
        grid: Grid,
        clients: Mapping[int, str],
        *,
        timeout: float,
        message_type: str = MESSAGE_TYPE,
        names: Sequence[str] | None = None,
        train_config: ConfigRecord | None = None,
        weight_cap: int | None = None,
    ) -> None:
        self._grid = grid
        self._clients = dict(clients)
        self._nodes = {cid: node for node, cid in clients.items()}
        self._timeout = timeout
        self._message_type = message_type
        self._names = None if names is None else list(names)
        self._train_config = train_config
        self._weight_cap = weight_cap or 0

    def available_clients(self) -> list[str]:
        """Client ids of the nodes connected now."""
        connected = set(self._grid.get_node_ids())
        return [cid for node, cid in self._clients.items() if node in connected]

    def stage(self, request: StageRequest) -> StageReplies:
        """Send each client its stage message; decode the replies that came back in time."""
        calls = {self._nodes[cid]: call_bytes(request.call(cid)) for cid in request.messages}
        arrays = arrays_record(request.weights, self._names) if request.weights else None
        config = None
        if arrays is not None and self._train_config is not None:
            config = ConfigRecord({**self._train_config, "server-round": request.round_num})

        def build(nodes: Sequence[int]) -> list[Message]:
            messages = []
            for node in nodes:
                content = RecordDict(
                    {SECAGG: ConfigRecord({"call": calls[node], WEIGHT_CAP: self._weight_cap})}
                )
                if arrays is not None:
                    content[ARRAYS] = arrays
                if config is not None:
                    content[TRAIN_CONFIG] = config
                messages.append(Message(content=content, dst_node_id=node, message_type=self._message_type))
            return messages

        replies = exchange(self._grid, build, list(calls), timeout=self._timeout)
        return self._collect({cid: replies.get(self._nodes[cid]) for cid in request.messages}, request)

    def _collect(self, replies: Mapping[str, Message | None], request: StageRequest) -> StageReplies:
        got: dict[str, ClientStageMessage] = {}
        failures: list[str] = []
        for cid, reply in replies.items():
            msg = usable_reply(cid, reply, failures)
            if msg is None:
                continue
            try:
                data = msg.content.config_records[SECAGG]["reply"]
                if not isinstance(data, bytes):
                    raise ValueError("the reply is not bytes")
                got[cid] = decode_reply(data, request)
            except (KeyError, ValueError, TypeError) as exc:
                failures.append(f"client {cid}: malformed {request.stage.name} reply ({exc})")
        for reason in failures:
            LOG.info("round %d stage %s: %s", request.round_num, request.stage.name, reason)
        return StageReplies(got, tuple(failures))


def weights_of(content: RecordDict) -> Sequence[np.ndarray]:
    """The global weights carried by a stage message (empty unless it is the masked-input stage)."""
    if ARRAYS not in content.array_records:
        return ()
    return content.array_records[ARRAYS].to_numpy_ndarrays()
