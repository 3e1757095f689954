"""Stage messages between the secure FedAvg loop and the client's stage handler (no flwr import).

:mod:`fedlab.algorithms.secure_fedavg` speaks in server stage messages and client replies;
:mod:`fedlab.training.secure_client` in named wire parts and :class:`StageReply`. This module maps
one onto the other, for the Flower transport (which then serializes) and for the inline simulator
(which does not).
"""

from __future__ import annotations

import math

from fedlab.algorithms.secure_fedavg import (
    ClientStageMessage,
    MaskedInputMessage,
    MaskedReply,
    ServerStageMessage,
    SetupMessage,
    StageRequest,
)
from fedlab.secagg.messages import MaskedInput, NeighbourRoster
from fedlab.training.secure_wire import StageCall, StageReply, WireObject


def call_parts(message: ServerStageMessage) -> dict[str, WireObject]:
    """The named wire parts of a server -> client stage message."""
    if isinstance(message, SetupMessage):
        parts: dict[str, WireObject] = {"params": message.params, "index": message.index}
        if message.encoding is not None:
            parts["encoding"] = message.encoding
        return parts
    if isinstance(message, MaskedInputMessage):
        return {"delivery": message.delivery, "encoding": message.encoding}
    if isinstance(message, NeighbourRoster):
        return {"roster": message}
    return {"request": message}


def stage_call(request: StageRequest, message: ServerStageMessage) -> StageCall:
    """One client's stage message as the client's stage handler reads it."""
    return StageCall(request.stage, request.round_num, request.round_seed, call_parts(message))


def client_message(reply: StageReply, request: StageRequest) -> ClientStageMessage:
    """A client's stage reply as the loop reads it; ValueError if it answers another stage or round.

    The masked input's public metadata (``num-examples``, the client's own DP-SGD ``epsilon``,
    ``noise-multiplier``, ``sample-rate``, ``steps``) becomes a :class:`MaskedReply`.
    """
    if reply.stage != request.stage or reply.round_num != request.round_num:
        raise ValueError(f"reply to stage {reply.stage.name} of round {reply.round_num}")
    if isinstance(reply.message, MaskedInput):
        meta = reply.meta
        epsilon = float(meta.get("epsilon", -1.0))
        return MaskedReply(
            masked=reply.message,
            num_examples=int(meta.get("num-examples", 0)),
            epsilon=math.inf if epsilon < 0 else epsilon,
            noise_multiplier=float(meta.get("noise-multiplier", 0.0)),
            sample_rate=float(meta.get("sample-rate", 1.0)),
            steps=int(meta.get("steps", 0)),
        )
    return reply.message
