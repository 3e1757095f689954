"""The SecAgg+ wire codec: stage calls and replies as bytes, parsed without evaluating anything.

A call or reply is JSON with base64 bytes; a reply's masked vector follows its JSON header as raw
little-endian integers of the narrowest unsigned width that holds it. Parsing checks every type,
so a malformed message is a :class:`ValueError`, never a crash in the protocol. The helpers
(``b64``, ``wire_int``, ``keys_to_wire``, ...) also serialize a client's secret state
(:class:`~fedlab.training.secure_client.SecureClientState`).
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    NeighbourRoster,
    PublicKeys,
    SecAggParams,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedlab.secagg.ring import Vector

WireObject = (
    SecAggParams
    | NeighbourRoster
    | ShareDelivery
    | UnmaskRequest
    | KeyAdvert
    | EncryptedShares
    | MaskedInput
    | UnmaskResponse
    | FixedPointCodec
    | SkellamParams
    | int
)

T = TypeVar("T")


# ---- wire codec --------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    """Bytes as base64 text."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    """Base64 text back to bytes (ValueError if it is not base64 text)."""
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text.encode("ascii"), validate=True)


def wire_int(value: Any) -> int:
    """``value`` if it is an integer (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def wire_float(value: Any) -> float:
    """``value`` as a float if it is a number (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def wire_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else ValueError."""
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    return value


def id_map(mapping: Mapping[int, T], to: Callable[[T], Any]) -> dict[str, Any]:
    """A client-id map as a JSON object (keys as text, in id order)."""
    return {str(k): to(v) for k, v in sorted(mapping.items())}


def id_map_from(value: Any, parse: Callable[[Any], T]) -> dict[int, T]:
    """A JSON object back to a client-id map, each value parsed by ``parse``."""
    return {int(k): parse(v) for k, v in wire_dict(value).items()}


_VECTOR_DTYPES = ("|u1", "<u2", "<u4", "<u8")


def _narrowest_dtype(vector: Vector) -> np.dtype[Any]:
    """The smallest little-endian unsigned dtype holding every value.

    The masked vector is uniform mod m, so in practice this depends only on m and reveals nothing.
    """
    top = int(vector.max()) if vector.size else 0
    return next(np.dtype(d) for d in _VECTOR_DTYPES if top < 2 ** (8 * np.dtype(d).itemsize))


def _vector_from(spec: Any, tail: bytes) -> Vector:
    d = wire_dict(spec)
    dtype, length = d.get("dtype"), wire_int(d.get("length"))
    if dtype not in _VECTOR_DTYPES or length < 0:
        raise ValueError(f"bad vector description {d!r}")
    if len(tail) != length * np.dtype(dtype).itemsize:
        raise ValueError(f"the vector holds {len(tail)} bytes, {length} x {dtype} expected")
    return np.frombuffer(tail, dtype=dtype).astype(np.uint64)


def keys_to_wire(keys: PublicKeys) -> list[str]:
    """A client's two public keys as base64 texts."""
    return [b64(keys.agreement), b64(keys.encryption)]


def keys_from_wire(value: Any) -> PublicKeys:
    """Two base64 texts back to public keys."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("public keys must be a pair")
    return PublicKeys(unb64(value[0]), unb64(value[1]))


def params_to_wire(p: SecAggParams) -> dict[str, Any]:
    """Round parameters as a JSON object."""
    return {
        "round_id": p.round_id,
        "vector_length": p.vector_length,
        "modulus": p.modulus,
        "neighbours": p.neighbours,
        "threshold": p.threshold,
        "graph_seed": b64(p.graph_seed),
        "min_clients": p.min_clients,
    }


def params_from_wire(value: Any) -> SecAggParams:
    """A JSON object back to round parameters (checked by ``SecAggParams``)."""
    d = wire_dict(value)
    return SecAggParams(
        round_id=wire_int(d["round_id"]),
        vector_length=wire_int(d["vector_length"]),
        modulus=wire_int(d["modulus"]),
        neighbours=wire_int(d["neighbours"]),
        threshold=wire_int(d["threshold"]),
        graph_seed=unb64(d["graph_seed"]),
        min_clients=wire_int(d["min_clients"]),
    )


def _to_wire(obj: WireObject) -> dict[str, Any]:
    if isinstance(obj, bool):
        raise ValueError("booleans are not wire objects")
    if isinstance(obj, int):
        return {"type": "int", "value": obj}
    if isinstance(obj, SecAggParams):
        return {"type": "params", **params_to_wire(obj)}
    if isinstance(obj, FixedPointCodec):
        return {
            "type": "fixed-point",
            "bits": obj.bits,
            "clip": obj.clip,
            "scale": obj.scale,
            "max_summands": obj.max_summands,
        }
    if isinstance(obj, SkellamParams):
        return {"type": "skellam", **obj.to_dict()}
    if isinstance(obj, KeyAdvert):
        keys = keys_to_wire(obj.keys)
        return {"type": "advert", "round_id": obj.round_id, "sender": obj.sender, "keys": keys}
    if isinstance(obj, NeighbourRoster):
        return {
            "type": "roster",
            "round_id": obj.round_id,
            "receiver": obj.receiver,
            "neighbours": id_map(obj.neighbours, keys_to_wire),
        }
    if isinstance(obj, EncryptedShares | ShareDelivery):
        party = "sender" if isinstance(obj, EncryptedShares) else "receiver"
        return {
            "type": "shares" if isinstance(obj, EncryptedShares) else "delivery",
            "round_id": obj.round_id,
            party: obj.sender if isinstance(obj, EncryptedShares) else obj.receiver,
            "ciphertexts": id_map(obj.ciphertexts, b64),
        }
    if isinstance(obj, MaskedInput):
        raise ValueError("a masked input travels only in a reply (reply_bytes), its vector in binary")
    if isinstance(obj, UnmaskRequest):
        return {
            "type": "unmask-request",
            "round_id": obj.round_id,
            "receiver": obj.receiver,
            "self_mask_of": sorted(obj.self_mask_of),
            "mask_key_of": sorted(obj.mask_key_of),
        }
    return {
        "type": "unmask-response",
        "round_id": obj.round_id,
        "sender": obj.sender,
        "self_mask_shares": id_map(obj.self_mask_shares, b64),
        "mask_key_shares": id_map(obj.mask_key_shares, b64),
    }


def _ids(value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise ValueError("expected a list of client ids")
    return frozenset(wire_int(v) for v in value)


_PARSERS: dict[str, Callable[[dict[str, Any]], WireObject]] = {
    "int": lambda d: wire_int(d["value"]),
    "params": params_from_wire,
    "fixed-point": lambda d: FixedPointCodec(
        bits=wire_int(d["bits"]),
        clip=wire_float(d["clip"]),
        scale=wire_float(d["scale"]),
        max_summands=wire_int(d["max_summands"]),
    ),
    "skellam": lambda d: SkellamParams.from_dict({k: v for k, v in d.items() if k != "type"}),
    "advert": lambda d: KeyAdvert(wire_int(d["round_id"]), wire_int(d["sender"]), keys_from_wire(d["keys"])),
    "roster": lambda d: NeighbourRoster(
        wire_int(d["round_id"]), wire_int(d["receiver"]), id_map_from(d["neighbours"], keys_from_wire)
    ),
    "shares": lambda d: EncryptedShares(
        wire_int(d["round_id"]), wire_int(d["sender"]), id_map_from(d["ciphertexts"], unb64)
    ),
    "delivery": lambda d: ShareDelivery(
        wire_int(d["round_id"]), wire_int(d["receiver"]), id_map_from(d["ciphertexts"], unb64)
    ),
    "unmask-request": lambda d: UnmaskRequest(
        wire_int(d["round_id"]), wire_int(d["receiver"]), _ids(d["self_mask_of"]), _ids(d["mask_key_of"])
    ),
    "unmask-response": lambda d: UnmaskResponse(
        wire_int(d["round_id"]),
        wire_int(d["sender"]),
        id_map_from(d["self_mask_shares"], unb64),
        id_map_from(d["mask_key_shares"], unb64),
    ),
}


def _any_from_wire(value: Any) -> WireObject:
    d = wire_dict(value)
    parser = _PARSERS.get(str(d.get("type")))
    if parser is None:
        raise ValueError(f"unknown wire object type {d.get('type')!r}")
    try:
        return parser(d)
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise ValueError(f"malformed {d.get('type')} message: {exc}") from None


def _from_wire(value: Any, kind: type[T]) -> T:
    d = wire_dict(value)
    parser = _PARSERS.get(str(d.get("type")))
    if parser is None:
        raise ValueError(f"unknown wire object type {d.get('type')!r}")
    try:
        obj = parser(d)
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise ValueError(f"malformed {d.get('type')} message: {exc}") from None
    if not isinstance(obj, kind):
        raise ValueError(f"expected a {kind.__name__}, got a {type(obj).__name__}")
    return obj


@dataclass(frozen=True)
class StageCall:
    """A server -> client stage message, parsed.

    Attributes:
        stage: The protocol stage.
        round_num: The federation round (also the SecAgg round id).
        round_seed: The round's public seed (rotation seed of distributed DP; training seed).
        parts: Named wire objects: stage 0 ``params``, ``index`` and ``encoding`` (to decide early
            whether the round fits a device's budget); stage 1 ``roster``; stage 2
            ``delivery`` and ``encoding`` (the global weights travel beside, as arrays);
            stage 3 ``request``.

    """

    stage: Stage
    round_num: int
    round_seed: int
    parts: Mapping[str, WireObject]

    def part(self, name: str, kind: type[T]) -> T:
        """The part ``name``, checked to be a ``kind``; ValueError if missing or of another type."""
        value = self.parts.get(name)
        if not isinstance(value, kind):
            raise ValueError(f"stage {self.stage.name} message lacks a {kind.__name__} {name!r}")
        return value


def call_bytes(stage: Stage, *, round_num: int, round_seed: int, parts: Mapping[str, WireObject]) -> bytes:
    """Serialize a server -> client stage message."""
    payload = {
        "stage": int(stage),
        "round": round_num,
        "seed": round_seed,
        "parts": {name: _to_wire(obj) for name, obj in parts.items()},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def parse_call(data: bytes) -> StageCall:
    """Parse :func:`call_bytes` output; ValueError if malformed."""
    try:
        d = wire_dict(json.loads(data.decode()))
        parts = {str(name): _any_from_wire(obj) for name, obj in wire_dict(d["parts"]).items()}
        return StageCall(Stage(wire_int(d["stage"])), wire_int(d["round"]), wire_int(d["seed"]), parts)
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed stage message: {exc}") from None


@dataclass(frozen=True)
class StageReply:
    """A client -> server stage reply, parsed.

    Attributes:
        stage: The stage answered.
        round_num: The round.
        message: The protocol message (KeyAdvert, EncryptedShares, MaskedInput, UnmaskResponse).
        meta: Public metadata (stage 2: ``num-examples`` and the client's own DP-SGD accounting
            ``epsilon``, ``noise-multiplier``, ``sample-rate``, ``steps``; no training loss, no norm,
            nothing computed from the update).

    """

    stage: Stage
    round_num: int
    message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse
    meta: Mapping[str, float] = field(default_factory=dict)


_REPLY_TYPES: dict[Stage, type[KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse]] = {
    Stage.ADVERTISE_KEYS: KeyAdvert,
    Stage.SHARE_KEYS: EncryptedShares,
    Stage.MASKED_INPUT: MaskedInput,
    Stage.UNMASK: UnmaskResponse,
}


_REPLY_MAGIC = b"fedlab-secagg-reply/2\n"
_HEADER_LENGTH = struct.Struct("<I")


def reply_bytes(reply: StageReply) -> bytes:
    """Serialize a client -> server stage reply.

    Layout: a magic line, the 4-byte little-endian length of a JSON header, the header, then the
    masked input's vector (stage 2 only) as raw little-endian integers of the narrowest unsigned
    width that holds it: 4 bytes per coordinate for a modulus up to 2^32, no base64.
    """
    tail = b""
    message: dict[str, Any]
    if isinstance(reply.message, MaskedInput):
        vector = np.asarray(reply.message.vector)
        dtype = _narrowest_dtype(vector)
        tail = vector.astype(dtype, copy=False).tobytes()
        spec = {"dtype": dtype.str, "length": int(vector.size)}
        message = {"type": "masked", "round_id": reply.message.round_id, "sender": reply.message.sender}
        message["vector"] = spec
    else:
        message = _to_wire(reply.message)
    payload = {
        "stage": int(reply.stage),
        "round": reply.round_num,
        "message": message,
        "meta": dict(reply.meta),
    }
    header = json.dumps(payload, separators=(",", ":")).encode()
    return _REPLY_MAGIC + _HEADER_LENGTH.pack(len(header)) + header + tail


def _split_reply(data: bytes) -> tuple[dict[str, Any], bytes]:
    if not data.startswith(_REPLY_MAGIC):
        raise ValueError("not a fedlab secure-aggregation reply (bad magic)")
    start = len(_REPLY_MAGIC) + _HEADER_LENGTH.size
    if len(data) < start:
        raise ValueError("the reply is truncated")
    (length,) = _HEADER_LENGTH.unpack_from(data, len(_REPLY_MAGIC))
    if len(data) < start + length:
        raise ValueError("the reply header is truncated")
    return wire_dict(json.loads(data[start : start + length].decode())), data[start + length :]


def parse_reply(data: bytes) -> StageReply:
    """Parse :func:`reply_bytes` output; ValueError if malformed or of the wrong type for its stage."""
    try:
        d, tail = _split_reply(data)
        stage = Stage(wire_int(d["stage"]))
        wire = wire_dict(d["message"])
        message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse
        if stage == Stage.MASKED_INPUT:
            if wire.get("type") != "masked":
                raise ValueError(f"expected a masked input, got {wire.get('type')!r}")
            message = MaskedInput(
                wire_int(wire["round_id"]), wire_int(wire["sender"]), _vector_from(wire["vector"], tail)
            )
        elif tail:
            raise ValueError("only a masked input carries a binary vector")
        else:
            message = _from_wire(wire, _REPLY_TYPES[stage])
        meta = {str(k): wire_float(v) for k, v in wire_dict(d.get("meta", {})).items()}
        return StageReply(stage, wire_int(d["round"]), message, meta)
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError, ProtocolError) as exc:
        raise ValueError(f"malformed stage reply: {exc}") from None
