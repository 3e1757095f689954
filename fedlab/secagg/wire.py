"""The SecAgg+ wire codec: protocol messages as JSON objects and bytes, parsed without evaluating anything.

Every protocol message of :mod:`fedlab.secagg.messages` (and the :class:`FixedPointCodec` a server
announces) has a JSON form with base64 bytes (:func:`to_wire`, :func:`from_wire`). A masked input's
vector travels in binary instead (:func:`masked_to_wire`, :func:`masked_from_wire`): raw
little-endian integers of the narrowest unsigned width that holds it, after a framed JSON header
(:func:`frame`, :func:`unframe`). Parsing checks every type, so a malformed message is a
:class:`ValueError`, never a crash in the protocol. The helpers (``b64``, ``wire_int``,
``keys_to_wire``, ...) also serialize a client's secret state between stages.

The stage envelopes (stage, round, the message and what rides beside it: the encoding, public
metadata) are :mod:`fedlab.algorithms.secure_wire`, where secure aggregation meets privacy.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import ProtocolError
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
    | UnmaskResponse
    | FixedPointCodec
)
"""A protocol message (or the fixed-point encoding) with a JSON form."""

T = TypeVar("T")


# ---- primitives --------------------------------------------------------------------------------


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
    """``value`` as a float if it is a number (not a bool) a float can hold, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(
            f"a number too large for a float: an integer of {int(value).bit_length()} bits"
        ) from None


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


def to_wire(obj: WireObject) -> dict[str, Any]:
    """A protocol message as a JSON object with a ``type`` key."""
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
    "params": params_from_wire,
    "fixed-point": lambda d: FixedPointCodec(
        bits=wire_int(d["bits"]),
        clip=wire_float(d["clip"]),
        scale=wire_float(d["scale"]),
        max_summands=wire_int(d["max_summands"]),
    ),
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


def from_wire(value: Any, kind: type[T]) -> T:
    """Parse :func:`to_wire` output, checked to be a ``kind``; ValueError if malformed or another type."""
    d = wire_dict(value)
    parser = _PARSERS.get(str(d.get("type")))
    if parser is None:
        raise ValueError(f"unknown wire object type {d.get('type')!r}")
    try:
        obj = parser(d)
    except (KeyError, TypeError, ValueError, OverflowError, ProtocolError) as exc:
        raise ValueError(f"malformed {d.get('type')} message: {exc}") from None
    if not isinstance(obj, kind):
        raise ValueError(f"expected a {kind.__name__}, got a {type(obj).__name__}")
    return obj


def masked_to_wire(masked: MaskedInput) -> tuple[dict[str, Any], bytes]:
    """A masked input as a JSON object and its vector's raw bytes (see the module docstring)."""
    vector = np.asarray(masked.vector)
    dtype = _narrowest_dtype(vector)
    spec = {"dtype": dtype.str, "length": int(vector.size)}
    header = {"type": "masked", "round_id": masked.round_id, "sender": masked.sender, "vector": spec}
    return header, vector.astype(dtype, copy=False).tobytes()


def masked_from_wire(value: Any, tail: bytes) -> MaskedInput:
    """Parse :func:`masked_to_wire` output; ValueError if malformed."""
    d = wire_dict(value)
    if d.get("type") != "masked":
        raise ValueError(f"expected a masked input, got {d.get('type')!r}")
    try:
        return MaskedInput(wire_int(d["round_id"]), wire_int(d["sender"]), _vector_from(d["vector"], tail))
    except (KeyError, ProtocolError) as exc:
        raise ValueError(f"malformed masked input: {exc}") from None


_HEADER_LENGTH = struct.Struct("<I")


def frame(magic: bytes, header: Mapping[str, Any], tail: bytes = b"") -> bytes:
    """``magic``, the 4-byte little-endian length of the JSON ``header``, the header, then ``tail``.

    Example:
        >>> unframe(b"M", frame(b"M", {"a": 1}, b"xyz"))
        ({'a': 1}, b'xyz')

    """
    data = json.dumps(dict(header), separators=(",", ":")).encode()
    return magic + _HEADER_LENGTH.pack(len(data)) + data + tail


def unframe(magic: bytes, data: bytes) -> tuple[dict[str, Any], bytes]:
    """Split :func:`frame` output into its header and tail; ValueError if malformed."""
    if not data.startswith(magic):
        raise ValueError("bad magic: not this kind of message")
    start = len(magic) + _HEADER_LENGTH.size
    if len(data) < start:
        raise ValueError("the message is truncated")
    (length,) = _HEADER_LENGTH.unpack_from(data, len(magic))
    if len(data) < start + length:
        raise ValueError("the message header is truncated")
    try:
        header = json.loads(data[start : start + length].decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"malformed message header: {type(exc).__name__}") from None
    return wire_dict(header), data[start + length :]
