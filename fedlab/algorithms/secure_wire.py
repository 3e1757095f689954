"""Stage calls and replies of secure FedAvg as bytes, for transports that serialize (Flower).

A :class:`~fedlab.algorithms.secure_messages.StageCall` is one JSON object: the stage, round, round
seed and the message, whose SecAgg+ parts use :mod:`fedlab.secagg.wire` and whose encoding is a
fixed-point codec or the Skellam parameters. A
:class:`~fedlab.algorithms.secure_messages.StageReply` is framed
(:func:`~fedlab.secagg.wire.frame`): a JSON header with the stage, round, message and public
metadata, then the masked vector's raw integers (stage 2 only). Parsing checks every type and that
the message is the stage's, so a malformed or off-stage message is a :class:`ValueError`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fedlab.algorithms.secure_encoding import Encoding
from fedlab.algorithms.secure_messages import (
    CALL_TYPES,
    REPLY_TYPES,
    ClientStageMessage,
    MaskedInputMessage,
    MaskedReply,
    ServerStageMessage,
    SetupMessage,
    StageCall,
    StageReply,
)
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.messages import NeighbourRoster, SecAggParams, ShareDelivery, UnmaskRequest
from fedlab.secagg.wire import (
    frame,
    from_wire,
    masked_from_wire,
    masked_to_wire,
    to_wire,
    unframe,
    wire_dict,
    wire_float,
    wire_int,
)

_REPLY_MAGIC = b"fedlab-secagg-reply/2\n"


def _encoding_to_wire(encoding: Encoding) -> dict[str, Any]:
    if isinstance(encoding, SkellamParams):
        return {"type": "skellam", **encoding.to_dict()}
    return to_wire(encoding)


def _encoding_from_wire(value: Any) -> Encoding:
    d = wire_dict(value)
    if d.get("type") == "skellam":
        try:
            return SkellamParams.from_dict({k: v for k, v in d.items() if k != "type"})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed skellam encoding: {exc}") from None
    return from_wire(d, FixedPointCodec)


def _message_to_wire(message: ServerStageMessage) -> dict[str, Any]:
    if isinstance(message, SetupMessage):
        wire: dict[str, Any] = {"type": "setup", "params": to_wire(message.params), "index": message.index}
        if message.encoding is not None:
            wire["encoding"] = _encoding_to_wire(message.encoding)
        return wire
    if isinstance(message, MaskedInputMessage):
        return {
            "type": "masked-input",
            "delivery": to_wire(message.delivery),
            "encoding": _encoding_to_wire(message.encoding),
        }
    return to_wire(message)


def _message_from_wire(stage: Stage, value: Any) -> ServerStageMessage:
    d = wire_dict(value)
    if stage == Stage.ADVERTISE_KEYS:
        if d.get("type") != "setup":
            raise ValueError(f"expected a setup message, got {d.get('type')!r}")
        encoding = _encoding_from_wire(d["encoding"]) if "encoding" in d else None
        return SetupMessage(from_wire(d["params"], SecAggParams), wire_int(d["index"]), encoding)
    if stage == Stage.MASKED_INPUT:
        if d.get("type") != "masked-input":
            raise ValueError(f"expected a masked-input message, got {d.get('type')!r}")
        return MaskedInputMessage(from_wire(d["delivery"], ShareDelivery), _encoding_from_wire(d["encoding"]))
    kind: type[NeighbourRoster | UnmaskRequest] = CALL_TYPES[stage]
    return from_wire(d, kind)


def call_bytes(call: StageCall) -> bytes:
    """Serialize a server -> client stage call.

    Example:
        >>> from fedlab.secagg.messages import UnmaskRequest
        >>> call = StageCall(Stage.UNMASK, 3, 7, UnmaskRequest(3, 0, frozenset({1}), frozenset()))
        >>> parse_call(call_bytes(call)) == call
        True

    """
    payload = {
        "stage": int(call.stage),
        "round": call.round_num,
        "seed": call.round_seed,
        "message": _message_to_wire(call.message),
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def parse_call(data: bytes) -> StageCall:
    """Parse :func:`call_bytes` output; ValueError if malformed or not the stage's message."""
    try:
        d = wire_dict(json.loads(data.decode()))
        stage = Stage(wire_int(d["stage"]))
        return StageCall(
            stage, wire_int(d["round"]), wire_int(d["seed"]), _message_from_wire(stage, d["message"])
        )
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError, ProtocolError) as exc:
        raise ValueError(f"malformed stage message: {type(exc).__name__} {exc}"[:300]) from None


def reply_bytes(reply: StageReply) -> bytes:
    """Serialize a client -> server stage reply.

    A masked reply's public metadata (``num-examples``, the client's own DP-SGD ``epsilon``,
    -1 for none, ``noise-multiplier``, ``sample-rate``, ``steps``) rides in the header; its vector
    follows in binary, 4 bytes per coordinate for a modulus up to 2^32, no base64.
    """
    tail = b""
    meta: dict[str, float] = {}
    message: dict[str, Any]
    if isinstance(reply.message, MaskedReply):
        m = reply.message
        message, tail = masked_to_wire(m.masked)
        meta = {
            "num-examples": float(m.num_examples),
            "epsilon": m.epsilon if math.isfinite(m.epsilon) else -1.0,
            "noise-multiplier": m.noise_multiplier,
            "sample-rate": m.sample_rate,
            "steps": float(m.steps),
        }
    else:
        message = to_wire(reply.message)
    header = {"stage": int(reply.stage), "round": reply.round_num, "message": message, "meta": meta}
    return frame(_REPLY_MAGIC, header, tail)


def _client_message(stage: Stage, wire: Any, meta: dict[str, float], tail: bytes) -> ClientStageMessage:
    if stage == Stage.MASKED_INPUT:
        epsilon = meta.get("epsilon", -1.0)
        return MaskedReply(
            masked=masked_from_wire(wire, tail),
            num_examples=int(meta.get("num-examples", 0)),
            epsilon=math.inf if epsilon < 0 else epsilon,
            noise_multiplier=meta.get("noise-multiplier", 0.0),
            sample_rate=meta.get("sample-rate", 1.0),
            steps=int(meta.get("steps", 0)),
        )
    if tail:
        raise ValueError("only a masked input carries a binary vector")
    message: ClientStageMessage = from_wire(wire, REPLY_TYPES[stage])
    return message


def parse_reply(data: bytes) -> StageReply:
    """Parse :func:`reply_bytes` output; ValueError if malformed or of the wrong type for its stage."""
    try:
        d, tail = unframe(_REPLY_MAGIC, data)
        stage = Stage(wire_int(d["stage"]))
        meta = {str(k): wire_float(v) for k, v in wire_dict(d.get("meta", {})).items()}
        return StageReply(stage, wire_int(d["round"]), _client_message(stage, d["message"], meta, tail))
    except (KeyError, TypeError, ValueError, OverflowError, RecursionError, ProtocolError) as exc:
        raise ValueError(f"malformed stage reply: {type(exc).__name__} {exc}"[:300]) from None
