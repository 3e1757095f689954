"""The client side of a secure-aggregation round, transport-free, with its secret state serializable.

A client answers the four SecAgg+ stages of a round (see :mod:`fedlab.secagg`):

0. ``advertise``: fresh key pairs, public halves to the server;
1. ``share_keys``: Shamir shares of its self-mask seed and mask key, encrypted to its neighbours;
2. ``masked_input``: **train** from the global weights carried by this stage's message, encode the
   delta (fixed point, or the distributed-DP Skellam encoding) and send it masked;
3. ``unmask``: reveal, per neighbour, either the self-mask share or the key share.

Training happens at stage 2, so the trained delta never has to be stored between stages: it is
encoded and masked in the same call. Between stages a client only keeps its secret protocol state
(keys, seeds, share keys, received ciphertexts), as the bytes of :class:`SecureClientState`. The
caller stores them (Flower ``context.state``; a dict in tests), because under Flower's Ray engine
successive stages of one client may run in different processes. After the stage 3 answer the
caller must delete the state: a second unmask request then finds nothing and is refused (a server
asking twice with different requests could otherwise collect both shares of one neighbour).

Messages travel as bytes (:func:`call_bytes`, :func:`reply_bytes` and their parsers): JSON with
base64 bytes; a reply's masked vector follows its JSON header as raw little-endian integers.
Parsing never evaluates anything and checks every type, so a malformed message is a
:class:`ValueError`, never a crash in the protocol.

Randomness: every key, seed, nonce, rounding and noise draw comes from one
:data:`~fedlab.secagg.crypto.RandomSource` per stage. In deployment that is ``os.urandom``
(:func:`stage_source` with ``seed=None``). In simulation :func:`stage_source` derives a seeded
source from the run seed, the public round seed, the client id and the stage, so runs are
reproducible; anyone who knows the run seed (the simulator) then knows every mask: simulation only.
DP-SGD training at stage 2 likewise draws its batches and noise from a fresh client secret in
deployment (:func:`~fedlab.training.randomness.fresh_secret`), from seeds in simulation.

Threat model (beyond :mod:`fedlab.secagg`): stops a server that replays a stage, skips one, mixes
rounds, or asks for unmasking twice on the same state (the state names the round and the next
stage, and is deleted after unmasking); stops a server that sends an encoding contradicting the
client's own configuration (fixed point when the client's config asks for distributed DP, another
clip, another bit width, no noise). Does not stop: a server that picks a noise multiplier lower than
the run's calibration but still positive (clients do not re-run the calibration), and everything
:mod:`fedlab.secagg` lists as not protected.
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from fedlab.core.config import RunConfig
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update, example_weight
from fedlab.privacy.skellam import SkellamParams, encode_client
from fedlab.secagg import protocol
from fedlab.secagg.crypto import KeyPair, RandomSource, seeded_source
from fedlab.secagg.encoding import FixedPointCodec, encode_counted
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.messages import (
    ClientKeys,
    ClientMasked,
    ClientShared,
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
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.local import PrivacyStep
from fedlab.training.randomness import fresh_secret

Encoding = FixedPointCodec | SkellamParams
"""How a client turns its delta into residues: fixed point (plain SecAgg) or Skellam (distributed DP)."""

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
_STATE_VERSION = 1


# ---- wire codec --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    return value


def _id_map(mapping: Mapping[int, T], to: Callable[[T], Any]) -> dict[str, Any]:
    return {str(k): to(v) for k, v in sorted(mapping.items())}


def _id_map_from(value: Any, parse: Callable[[Any], T]) -> dict[int, T]:
    return {int(k): parse(v) for k, v in _dict(value).items()}


_VECTOR_DTYPES = ("|u1", "<u2", "<u4", "<u8")


def _narrowest_dtype(vector: Vector) -> np.dtype[Any]:
    """The smallest little-endian unsigned dtype holding every value.

    The masked vector is uniform mod m, so in practice this depends only on m and reveals nothing.
    """
    top = int(vector.max()) if vector.size else 0
    return next(np.dtype(d) for d in _VECTOR_DTYPES if top < 2 ** (8 * np.dtype(d).itemsize))


def _vector_from(spec: Any, tail: bytes) -> Vector:
    d = _dict(spec)
    dtype, length = d.get("dtype"), _int(d.get("length"))
    if dtype not in _VECTOR_DTYPES or length < 0:
        raise ValueError(f"bad vector description {d!r}")
    if len(tail) != length * np.dtype(dtype).itemsize:
        raise ValueError(f"the vector holds {len(tail)} bytes, {length} x {dtype} expected")
    return np.frombuffer(tail, dtype=dtype).astype(np.uint64)


def _keys(keys: PublicKeys) -> list[str]:
    return [_b64(keys.agreement), _b64(keys.encryption)]


def _keys_from(value: Any) -> PublicKeys:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("public keys must be a pair")
    return PublicKeys(_unb64(value[0]), _unb64(value[1]))


def _params(p: SecAggParams) -> dict[str, Any]:
    return {
        "round_id": p.round_id,
        "vector_length": p.vector_length,
        "modulus": p.modulus,
        "neighbours": p.neighbours,
        "threshold": p.threshold,
        "graph_seed": _b64(p.graph_seed),
        "min_clients": p.min_clients,
    }


def _params_from(value: Any) -> SecAggParams:
    d = _dict(value)
    return SecAggParams(
        round_id=_int(d["round_id"]),
        vector_length=_int(d["vector_length"]),
        modulus=_int(d["modulus"]),
        neighbours=_int(d["neighbours"]),
        threshold=_int(d["threshold"]),
        graph_seed=_unb64(d["graph_seed"]),
        min_clients=_int(d["min_clients"]),
    )


def _to_wire(obj: WireObject) -> dict[str, Any]:
    if isinstance(obj, bool):
        raise ValueError("booleans are not wire objects")
    if isinstance(obj, int):
        return {"type": "int", "value": obj}
    if isinstance(obj, SecAggParams):
        return {"type": "params", **_params(obj)}
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
        return {"type": "advert", "round_id": obj.round_id, "sender": obj.sender, "keys": _keys(obj.keys)}
    if isinstance(obj, NeighbourRoster):
        return {
            "type": "roster",
            "round_id": obj.round_id,
            "receiver": obj.receiver,
            "neighbours": _id_map(obj.neighbours, _keys),
        }
    if isinstance(obj, EncryptedShares | ShareDelivery):
        party = "sender" if isinstance(obj, EncryptedShares) else "receiver"
        return {
            "type": "shares" if isinstance(obj, EncryptedShares) else "delivery",
            "round_id": obj.round_id,
            party: obj.sender if isinstance(obj, EncryptedShares) else obj.receiver,
            "ciphertexts": _id_map(obj.ciphertexts, _b64),
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
        "self_mask_shares": _id_map(obj.self_mask_shares, _b64),
        "mask_key_shares": _id_map(obj.mask_key_shares, _b64),
    }


def _ids(value: Any) -> frozenset[int]:
    if not isinstance(value, list):
        raise ValueError("expected a list of client ids")
    return frozenset(_int(v) for v in value)


_PARSERS: dict[str, Callable[[dict[str, Any]], WireObject]] = {
    "int": lambda d: _int(d["value"]),
    "params": _params_from,
    "fixed-point": lambda d: FixedPointCodec(
        bits=_int(d["bits"]),
        clip=_float(d["clip"]),
        scale=_float(d["scale"]),
        max_summands=_int(d["max_summands"]),
    ),
    "skellam": lambda d: SkellamParams.from_dict({k: v for k, v in d.items() if k != "type"}),
    "advert": lambda d: KeyAdvert(_int(d["round_id"]), _int(d["sender"]), _keys_from(d["keys"])),
    "roster": lambda d: NeighbourRoster(
        _int(d["round_id"]), _int(d["receiver"]), _id_map_from(d["neighbours"], _keys_from)
    ),
    "shares": lambda d: EncryptedShares(
        _int(d["round_id"]), _int(d["sender"]), _id_map_from(d["ciphertexts"], _unb64)
    ),
    "delivery": lambda d: ShareDelivery(
        _int(d["round_id"]), _int(d["receiver"]), _id_map_from(d["ciphertexts"], _unb64)
    ),
    "unmask-request": lambda d: UnmaskRequest(
        _int(d["round_id"]), _int(d["receiver"]), _ids(d["self_mask_of"]), _ids(d["mask_key_of"])
    ),
    "unmask-response": lambda d: UnmaskResponse(
        _int(d["round_id"]),
        _int(d["sender"]),
        _id_map_from(d["self_mask_shares"], _unb64),
        _id_map_from(d["mask_key_shares"], _unb64),
    ),
}


def _any_from_wire(value: Any) -> WireObject:
    d = _dict(value)
    parser = _PARSERS.get(str(d.get("type")))
    if parser is None:
        raise ValueError(f"unknown wire object type {d.get('type')!r}")
    try:
        return parser(d)
    except (KeyError, TypeError, ValueError, ProtocolError) as exc:
        raise ValueError(f"malformed {d.get('type')} message: {exc}") from None


def _from_wire(value: Any, kind: type[T]) -> T:
    d = _dict(value)
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
        d = _dict(json.loads(data.decode()))
        parts = {str(name): _any_from_wire(obj) for name, obj in _dict(d["parts"]).items()}
        return StageCall(Stage(_int(d["stage"])), _int(d["round"]), _int(d["seed"]), parts)
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
    return _dict(json.loads(data[start : start + length].decode())), data[start + length :]


def parse_reply(data: bytes) -> StageReply:
    """Parse :func:`reply_bytes` output; ValueError if malformed or of the wrong type for its stage."""
    try:
        d, tail = _split_reply(data)
        stage = Stage(_int(d["stage"]))
        wire = _dict(d["message"])
        message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse
        if stage == Stage.MASKED_INPUT:
            if wire.get("type") != "masked":
                raise ValueError(f"expected a masked input, got {wire.get('type')!r}")
            message = MaskedInput(
                _int(wire["round_id"]), _int(wire["sender"]), _vector_from(wire["vector"], tail)
            )
        elif tail:
            raise ValueError("only a masked input carries a binary vector")
        else:
            message = _from_wire(wire, _REPLY_TYPES[stage])
        meta = {str(k): _float(v) for k, v in _dict(d.get("meta", {})).items()}
        return StageReply(stage, _int(d["round"]), message, meta)
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError, ProtocolError) as exc:
        raise ValueError(f"malformed stage reply: {exc}") from None


# ---- secret state ------------------------------------------------------------------------------


Secret = ClientKeys | ClientShared | ClientMasked


@dataclass(frozen=True)
class SecureClientState:
    """A client's secret protocol state between two stages of one round.

    Attributes:
        next_stage: The only stage this state may answer next.
        secret: The protocol state after the previous stage.

    """

    next_stage: Stage
    secret: Secret = field(repr=False)

    @property
    def round_id(self) -> int:
        """The round this state belongs to."""
        return self.secret.params.round_id

    def to_bytes(self) -> bytes:
        """Serialize (contains private keys and seeds: store it where only this client reads it)."""
        s = self.secret
        body: dict[str, Any] = {"params": _params(s.params), "client_id": s.client_id}
        if isinstance(s, ClientKeys | ClientShared):
            body["agreement"] = [_b64(s.agreement.private), _b64(s.agreement.public)]
        if isinstance(s, ClientKeys):
            body["encryption"] = [_b64(s.encryption.private), _b64(s.encryption.public)]
        if isinstance(s, ClientShared):
            body["neighbours"] = _id_map(s.neighbours, _keys)
            body["self_seed"] = _b64(s.self_seed)
        if isinstance(s, ClientShared | ClientMasked):
            body["share_keys"] = _id_map(s.share_keys, _b64)
        if isinstance(s, ClientMasked):
            body["received"] = _id_map(s.received, _b64)
        payload = {"version": _STATE_VERSION, "next_stage": int(self.next_stage), "secret": body}
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecureClientState:
        """Parse :meth:`to_bytes` output; ValueError if malformed."""
        try:
            d = _dict(json.loads(data.decode()))
            if d.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported secure-client state version {d.get('version')!r}")
            stage = Stage(_int(d["next_stage"]))
            b = _dict(d["secret"])
            params, me = _params_from(b["params"]), _int(b["client_id"])

            def pair(name: str) -> KeyPair:
                return KeyPair(_unb64(b[name][0]), _unb64(b[name][1]))

            secret: Secret
            if stage == Stage.SHARE_KEYS:
                secret = ClientKeys(params, me, pair("agreement"), pair("encryption"))
            elif stage == Stage.MASKED_INPUT:
                secret = ClientShared(
                    params,
                    me,
                    pair("agreement"),
                    _id_map_from(b["neighbours"], _keys_from),
                    _unb64(b["self_seed"]),
                    _id_map_from(b["share_keys"], _unb64),
                )
            elif stage == Stage.UNMASK:
                secret = ClientMasked(
                    params, me, _id_map_from(b["share_keys"], _unb64), _id_map_from(b["received"], _unb64)
                )
            else:
                raise ValueError("no state precedes stage 0")
            return cls(stage, secret)
        except (KeyError, TypeError, IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed secure-client state: {exc}") from None


# ---- randomness and simulated dropouts ---------------------------------------------------------


def stage_source(*, seed: int | None, round_seed: int, client_id: str, stage: Stage) -> RandomSource:
    """The randomness of one client's stage: ``os.urandom`` when ``seed`` is None (deployment).

    With a seed (simulation, tests) it is a ChaCha20 stream keyed by SHA-256 of the run seed, the
    public round seed, the client id and the stage: reproducible, and known to whoever knows the
    run seed, so never use it in deployment.
    """
    if seed is None:
        return os.urandom
    material = f"fedlab/secure-client/v1|{seed}|{round_seed}|{client_id}|{int(stage)}"
    return seeded_source(material.encode())


def generator_from(source: RandomSource) -> np.random.Generator:
    """A numpy generator for rounding and noise, seeded with 256 bits of ``source``."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(source(32), "little")))


def dropout_stage(*, rate: float, seed: int, round_seed: int, client_id: str) -> Stage | None:
    """The stage at which a client drops out in a simulated round, or None (``secagg.simulate_dropout``).

    With probability ``rate`` the client drops, at a stage drawn uniformly from the four; the draw
    depends only on the run seed, the round seed and the client id, so every process serving the
    client agrees on it.

    >>> dropout_stage(rate=0.0, seed=0, round_seed=1, client_id="3") is None
    True
    """
    if rate <= 0.0:
        return None
    words = [seed & 0xFFFFFFFF, round_seed & 0xFFFFFFFF, round_seed >> 32, *client_id.encode(), 0x5EC]
    rng = np.random.default_rng(np.random.SeedSequence(words))
    if rng.random() >= rate:
        return None
    return Stage(int(rng.integers(0, 4)))


# ---- encoding ----------------------------------------------------------------------------------


def check_encoding(config: RunConfig, encoding: Encoding, vector_length: int) -> None:
    """Refuse an encoding the client's own configuration does not allow.

    Stops: a server that asks a client configured for distributed DP to send a noiseless
    fixed-point encoding, or that changes the clip, bit width or length. Does not stop: a server
    choosing a smaller positive noise multiplier than the calibrated one.

    Raises:
        ProtocolError: If the encoding contradicts the configuration.

    """
    bits = config.secagg.bits
    if config.dp.mode == "distributed":
        if not isinstance(encoding, SkellamParams):
            raise ProtocolError("distributed DP is configured: refusing a noiseless fixed-point encoding")
        if encoding.noise_multiplier <= 0.0 or encoding.clip != config.dp.clip_norm or encoding.bits != bits:
            raise ProtocolError("the Skellam encoding contradicts this client's dp/secagg configuration")
        if encoding.padded_dim != vector_length:
            raise ProtocolError("the Skellam encoding does not match the vector length")
        return
    if not isinstance(encoding, FixedPointCodec):
        raise ProtocolError("plain secure aggregation is configured: expected a fixed-point encoding")
    if encoding.bits != bits or encoding.clip != config.secagg.clip_range:
        raise ProtocolError("the fixed-point encoding contradicts this client's secagg configuration")


@dataclass(frozen=True)
class EncodedUpdate:
    """A client's delta as residues, with client-side statistics that never leave the client."""

    residues: npt.NDArray[np.int64]
    clipped: int


def encode_update(
    update: Update, encoding: Encoding, *, rotation_seed: int, rng: np.random.Generator, weight: float = 1.0
) -> EncodedUpdate:
    """Flatten the delta and encode it for secure aggregation.

    ``weight`` (fixed point only, in [0, 1]) multiplies the delta first: the client's share of an
    example-weighted mean (:func:`fedlab.core.update.example_weight`).

    Fixed point: each coordinate clipped to [-clip, clip], scaled, stochastically rounded, then the
    number of clipped coordinates appended (:func:`fedlab.secagg.encoding.encode_counted`).
    Skellam: rotate (public ``rotation_seed``), clip to L2 norm c, scale, conditional rounding,
    add this client's Skellam noise share, reduce mod 2^bits (:func:`fedlab.privacy.skellam.encode_client`).
    """
    if not 0.0 <= weight <= 1.0 or (weight != 1.0 and isinstance(encoding, SkellamParams)):
        raise ValueError(f"weight must be in [0, 1] (and 1 under distributed DP), got {weight}")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in update.arrays])
    if weight != 1.0:
        flat *= weight
    if isinstance(encoding, SkellamParams):
        result = encode_client(flat, encoding, seed=rotation_seed, rng=rng)
        return EncodedUpdate(result.values, int(result.was_clipped))
    encoded = encode_counted(flat, encoding, rng=rng)
    return EncodedUpdate(encoded.values.view(np.int64), encoded.clipped)


# ---- stages ------------------------------------------------------------------------------------


def _expect(state: SecureClientState | None, stage: Stage, round_id: int) -> Secret:
    if state is None:
        raise ProtocolError(f"no secure-aggregation state for stage {stage.name} (replayed or skipped stage)")
    if state.next_stage != stage or state.round_id != round_id:
        raise ProtocolError(
            f"expected stage {state.next_stage.name} of round {state.round_id}, "
            f"got stage {stage.name} of round {round_id}"
        )
    return state.secret


def advertise(
    params: SecAggParams, client_index: int, source: RandomSource
) -> tuple[SecureClientState, KeyAdvert]:
    """Stage 0: fresh keys for this round (any earlier state of the client is discarded)."""
    keys, advert = protocol.client_advertise(params, client_index, source)
    return SecureClientState(Stage.SHARE_KEYS, keys), advert


def share_keys(
    state: SecureClientState | None, roster: NeighbourRoster, source: RandomSource
) -> tuple[SecureClientState, EncryptedShares]:
    """Stage 1: share and encrypt the secrets to the neighbours in ``roster``."""
    secret = _expect(state, Stage.SHARE_KEYS, roster.round_id)
    assert isinstance(secret, ClientKeys)
    shared, message = protocol.client_share_keys(secret, roster, source)
    return SecureClientState(Stage.MASKED_INPUT, shared), message


def masked_input(
    state: SecureClientState | None, delivery: ShareDelivery, residues: npt.ArrayLike
) -> tuple[SecureClientState, MaskedInput]:
    """Stage 2: mask the encoded delta."""
    secret = _expect(state, Stage.MASKED_INPUT, delivery.round_id)
    assert isinstance(secret, ClientShared)
    masked, message = protocol.client_masked_input(secret, delivery, residues)
    return SecureClientState(Stage.UNMASK, masked), message


def unmask(state: SecureClientState | None, request: UnmaskRequest) -> UnmaskResponse:
    """Stage 3: reveal the requested shares. The caller must delete the state afterwards."""
    secret = _expect(state, Stage.UNMASK, request.round_id)
    assert isinstance(secret, ClientMasked)
    return protocol.client_unmask(secret, request)


@dataclass(frozen=True)
class StageAnswer:
    """What a client does with one stage message.

    Attributes:
        reply: The reply bytes, or None when the client (simulated) drops out: send nothing.
        state: The state bytes to store for the next stage, or None: delete any stored state.
        history: The client's new DP-SGD accountant history (stage 2 only), else None.

    """

    reply: bytes | None
    state: bytes | None
    history: tuple[PrivacyStep, ...] | None = None


@dataclass(frozen=True)
class StageResponse:
    """:class:`StageAnswer` as objects, for a transport that keeps everything in one process.

    Attributes:
        reply: The reply, or None when the client (simulated) drops out.
        state: The state for the next stage, or None: delete any stored state.
        history: The client's new DP-SGD accountant history (stage 2 only), else None.

    """

    reply: StageReply | None
    state: SecureClientState | None
    history: tuple[PrivacyStep, ...] | None = None


Training = Callable[[], tuple[TrainReport, Sequence[PrivacyStep]]]
"""Trains the client from the global weights of the masked-input stage: its report and new history."""


class SecureClient:
    """Answers stage messages for any number of clients.

    Args:
        runtime: Trains clients for :meth:`answer` (reused across rounds); :meth:`respond` callers
            train themselves and may omit it.
        seeded: Draw keys, masks, noise and DP-SGD's batches and noise from seeded sources
            (simulation; see :func:`stage_source`) instead of ``os.urandom`` and a fresh client
            secret per round (deployment, the default).

    """

    def __init__(self, runtime: ClientRuntime | None = None, *, seeded: bool = False) -> None:
        self._runtime = runtime
        self._seeded = seeded

    def answer(
        self,
        config: RunConfig,
        data: ClientData,
        call: bytes,
        *,
        state: bytes | None,
        weights: Sequence[np.ndarray] = (),
        history: Sequence[PrivacyStep] = (),
    ) -> StageAnswer:
        """Answer one stage message received as bytes; the reply and the next state are bytes too.

        Raises:
            ValueError: If the message or the stored state is malformed.
            SecAggError: If the message breaks the protocol (the client refuses to go on).

        """
        msg = parse_call(call)
        current = SecureClientState.from_bytes(state) if state is not None and msg.stage > 0 else None
        runtime = self._runtime
        if runtime is None:
            raise ValueError("SecureClient.answer needs a ClientRuntime to train with")
        training: Training | None = None
        if weights:

            def training() -> tuple[TrainReport, Sequence[PrivacyStep]]:
                secret = None if self._seeded else fresh_secret()  # deployment: DP-SGD from a secret
                return runtime.train(
                    config, data, weights, history=history, round_seed=msg.round_seed, secret=secret
                )

        response = self.respond(config, data.client_id, msg, current, training=training)
        return StageAnswer(
            None if response.reply is None else reply_bytes(response.reply),
            None if response.state is None else response.state.to_bytes(),
            response.history,
        )

    def respond(
        self,
        config: RunConfig,
        client_id: str,
        msg: StageCall,
        current: SecureClientState | None,
        *,
        training: Training | None = None,
    ) -> StageResponse:
        """Answer one parsed stage message with the client's parsed state.

        Args:
            config: The client's run configuration.
            client_id: The client's stable id (dropout draws and seeded randomness).
            msg: The stage message.
            current: The state the previous stage left (None at stage 0).
            training: Trains the client at the masked-input stage; None when the message carried
                no global weights (refused at that stage).

        Raises:
            ValueError: If the message is malformed.
            SecAggError: If the message breaks the protocol (the client refuses to go on).

        """
        drop = dropout_stage(
            rate=config.secagg.simulate_dropout, seed=config.run.seed, round_seed=msg.round_seed,
            client_id=client_id,
        )  # fmt: skip
        if drop is not None and msg.stage >= drop:
            return StageResponse(reply=None, state=None)
        source = stage_source(
            seed=config.run.seed if self._seeded else None,
            round_seed=msg.round_seed,
            client_id=client_id,
            stage=msg.stage,
        )
        if msg.stage == Stage.ADVERTISE_KEYS:
            new, advert = advertise(msg.part("params", SecAggParams), msg.part("index", int), source)
            return _response(msg, advert, new)
        if msg.stage == Stage.SHARE_KEYS:
            new, shares = share_keys(current, msg.part("roster", NeighbourRoster), source)
            return _response(msg, shares, new)
        if msg.stage == Stage.MASKED_INPUT:
            return _train_and_mask(config, msg, current, training, source)
        return _response(msg, unmask(current, msg.part("request", UnmaskRequest)), None)


def _response(
    msg: StageCall,
    message: KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse,
    state: SecureClientState | None,
    *,
    meta: Mapping[str, float] | None = None,
    history: tuple[PrivacyStep, ...] | None = None,
) -> StageResponse:
    return StageResponse(StageReply(msg.stage, msg.round_num, message, dict(meta or {})), state, history)


def _train_and_mask(
    config: RunConfig,
    msg: StageCall,
    current: SecureClientState | None,
    training: Training | None,
    source: RandomSource,
) -> StageResponse:
    delivery = msg.part("delivery", ShareDelivery)
    secret = _expect(current, Stage.MASKED_INPUT, delivery.round_id)
    encoding = msg.parts.get("encoding")
    if not isinstance(encoding, FixedPointCodec | SkellamParams):
        raise ValueError("the masked-input stage message lacks an encoding")
    check_encoding(config, encoding, secret.params.vector_length)
    if training is None:
        raise ProtocolError("the masked-input stage carries no global weights")
    report, new_history = training()
    weight = 1.0
    if isinstance(encoding, FixedPointCodec):
        weight = example_weight(report.update.num_examples, config.secure_weight_cap())
    encoded = encode_update(
        report.update, encoding, rotation_seed=msg.round_seed, rng=generator_from(source), weight=weight
    )
    new_state, masked = masked_input(current, delivery, encoded.residues)
    meta = {
        "num-examples": float(report.update.num_examples),
        "epsilon": report.epsilon if math.isfinite(report.epsilon) else -1.0,
        "noise-multiplier": report.noise_multiplier,
        "sample-rate": report.sample_rate,
        "steps": float(report.steps),
    }
    return _response(msg, masked, new_state, meta=meta, history=tuple(new_history))
