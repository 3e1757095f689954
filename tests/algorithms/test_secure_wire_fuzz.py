"""Fuzzing the stage envelopes: random and mutated stage calls and replies parse or are a ValueError.

``parse_call`` (a client reading the server's stage message) and ``parse_reply`` (the server reading a
client's answer) take bytes from the other side. Whatever arrives, they return a :class:`StageCall`
or :class:`StageReply` of the typed stage vocabulary (the stage's message type, a masked reply's
metadata within its documented ranges) or raise a one-line ValueError: never another exception,
never slowly. The JSON strategies and byte mutations are those of the SecAgg+ codec's fuzz tests.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fedlab.algorithms.secure_messages import (
    CALL_TYPES,
    REPLY_TYPES,
    MaskedInputMessage,
    MaskedReply,
    SetupMessage,
    StageCall,
    StageReply,
)
from fedlab.algorithms.secure_wire import call_bytes, parse_call, parse_reply, reply_bytes
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.errors import Stage
from fedlab.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    NeighbourRoster,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from tests.secagg.test_secagg_wire_fuzz import (
    FUZZ,
    ciphertexts,
    client_ids,
    decoded_or_refused,
    fixed_point_codecs,
    id_sets,
    json_values,
    masked_inputs,
    mutate_bytes,
    mutate_json_text,
    mutate_value,
    public_keys,
    round_ids,
    secagg_params,
)

# ---- valid calls and replies -----------------------------------------------------------------------


@st.composite
def skellam_params(draw: Callable[..., Any]) -> SkellamParams:
    clients = draw(st.integers(1, 1000))
    return SkellamParams(
        clip=draw(st.floats(1e-3, 1e3)),
        noise_multiplier=draw(st.floats(0.0, 10.0)),
        num_clients=clients,
        min_survivors=draw(st.integers(1, clients)),
        bits=draw(st.integers(12, 62)),
        dim=draw(st.integers(1, 10**6)),
    )


encodings = fixed_point_codecs() | skellam_params()
stage_messages: dict[Stage, st.SearchStrategy[Any]] = {
    Stage.ADVERTISE_KEYS: st.builds(
        SetupMessage, secagg_params(), st.integers(0, 10**4), st.none() | encodings
    ),
    Stage.SHARE_KEYS: st.builds(
        NeighbourRoster, round_ids, client_ids, st.dictionaries(client_ids, public_keys, max_size=4)
    ),
    Stage.MASKED_INPUT: st.builds(
        MaskedInputMessage, st.builds(ShareDelivery, round_ids, client_ids, ciphertexts), encodings
    ),
    Stage.UNMASK: st.builds(UnmaskRequest, round_ids, client_ids, id_sets, id_sets),
}
stage_calls = st.sampled_from(Stage).flatmap(
    lambda stage: st.builds(StageCall, st.just(stage), round_ids, round_ids, stage_messages[stage])
)

masked_replies = st.builds(
    MaskedReply,
    masked=masked_inputs,
    num_examples=st.integers(0, 2**53),  # the header carries it as a float
    epsilon=st.just(math.inf) | st.floats(0.0, 1e6),
    noise_multiplier=st.floats(0.0, 100.0),
    sample_rate=st.floats(1e-6, 1.0),
    steps=st.integers(0, 2**53),
)
reply_messages: dict[Stage, st.SearchStrategy[Any]] = {
    Stage.ADVERTISE_KEYS: st.builds(KeyAdvert, round_ids, client_ids, public_keys),
    Stage.SHARE_KEYS: st.builds(EncryptedShares, round_ids, client_ids, ciphertexts),
    Stage.MASKED_INPUT: masked_replies,
    Stage.UNMASK: st.builds(UnmaskResponse, round_ids, client_ids, ciphertexts, ciphertexts),
}
stage_replies = st.sampled_from(Stage).flatmap(
    lambda stage: st.builds(StageReply, st.just(stage), round_ids, reply_messages[stage])
)


# ---- the properties of what parses -----------------------------------------------------------------


def assert_well_formed_call(call: StageCall | None) -> None:
    if call is None:
        return
    assert isinstance(call.message, CALL_TYPES[call.stage])
    assert parse_call(call_bytes(call)) == call  # it is a message this codec can send itself


def assert_well_formed_reply(reply: StageReply | None) -> None:
    if reply is None:
        return
    message = reply.message
    assert isinstance(message, REPLY_TYPES[reply.stage])
    if isinstance(message, MaskedReply):
        assert isinstance(message.num_examples, int) and message.num_examples >= 0
        assert isinstance(message.steps, int) and message.steps >= 0
        assert message.epsilon >= 0.0 and 0.0 < message.sample_rate <= 1.0
        assert math.isfinite(message.noise_multiplier) and message.noise_multiplier >= 0.0
        assert message.masked.vector.dtype == np.uint64 and message.masked.vector.ndim == 1


def same_reply(a: StageReply, b: StageReply) -> bool:
    if not (isinstance(a.message, MaskedReply) and isinstance(b.message, MaskedReply)):
        return a == b
    x, y = a.message, b.message
    public = ("num_examples", "epsilon", "noise_multiplier", "sample_rate", "steps")
    return (
        (a.stage, a.round_num) == (b.stage, b.round_num)
        and [getattr(x, f) for f in public] == [getattr(y, f) for f in public]
        and (x.masked.round_id, x.masked.sender) == (y.masked.round_id, y.masked.sender)
        and np.array_equal(x.masked.vector, y.masked.vector)
    )


def reply_magic() -> bytes:
    """The reply frame's magic: what precedes the 4-byte header length (it ends in a newline)."""
    data = reply_bytes(StageReply(Stage.SHARE_KEYS, 0, EncryptedShares(0, 0, {})))
    return data[: data.index(b"\n") + 1]


MAGIC = reply_magic()


def reframed(draw: Callable[..., Any], header: bytes, tail: bytes) -> bytes:
    length = draw(st.just(len(header)) | st.integers(0, 2**32 - 1))
    return MAGIC + struct.pack("<I", length) + header + tail


def split_reply(data: bytes) -> tuple[bytes, bytes]:
    """A reply's header text and binary tail (the frame read by hand, to rebuild it mutated)."""
    start = len(MAGIC) + 4
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    return data[start : start + length], data[start + length :]


# ---- calls: server -> client ------------------------------------------------------------------------


@FUZZ
@given(stage_calls)
def test_every_stage_call_round_trips(call: StageCall) -> None:
    assert parse_call(call_bytes(call)) == call


@FUZZ
@given(stage_calls, st.data())
def test_a_mutated_stage_call_parses_or_is_a_value_error(call: StageCall, data: st.DataObject) -> None:
    mutated = mutate_bytes(data.draw, call_bytes(call))
    assert_well_formed_call(decoded_or_refused(lambda: parse_call(mutated)))


@FUZZ
@given(stage_calls, st.data())
def test_a_stage_call_with_a_mutated_field_parses_or_is_a_value_error(
    call: StageCall, data: st.DataObject
) -> None:
    value = json.loads(call_bytes(call))
    for _ in range(data.draw(st.integers(1, 3))):
        value = mutate_value(data.draw, value)
    mutated = json.dumps(value).encode()
    assert_well_formed_call(decoded_or_refused(lambda: parse_call(mutated)))


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bytes_are_not_a_stage_call(blob: bytes) -> None:
    assert_well_formed_call(decoded_or_refused(lambda: parse_call(blob)))


# ---- replies: client -> server ----------------------------------------------------------------------


@FUZZ
@given(stage_replies)
def test_every_stage_reply_round_trips(reply: StageReply) -> None:
    assert same_reply(parse_reply(reply_bytes(reply)), reply)


@FUZZ
@given(stage_replies, st.data())
def test_a_mutated_stage_reply_parses_or_is_a_value_error(reply: StageReply, data: st.DataObject) -> None:
    mutated = mutate_bytes(data.draw, reply_bytes(reply))
    assert_well_formed_reply(decoded_or_refused(lambda: parse_reply(mutated)))


@FUZZ
@given(stage_replies, st.data())
def test_a_stage_reply_with_a_mutated_header_parses_or_is_a_value_error(
    reply: StageReply, data: st.DataObject
) -> None:
    header, tail = split_reply(reply_bytes(reply))
    if data.draw(st.booleans()):
        value = json.loads(header)
        for _ in range(data.draw(st.integers(1, 3))):
            value = mutate_value(data.draw, value)
        header = json.dumps(value).encode()
    else:
        header = mutate_json_text(data.draw, header)
    tail = data.draw(st.just(tail) | st.just(b"") | st.binary(max_size=64))
    mutated = reframed(data.draw, header, tail)
    assert_well_formed_reply(decoded_or_refused(lambda: parse_reply(mutated)))


@FUZZ
@given(
    st.sampled_from(["num-examples", "epsilon", "noise-multiplier", "sample-rate", "steps", "other"]),
    json_values,
    st.data(),
)
def test_masked_reply_metadata_is_checked_whatever_its_value(
    key: str, value: Any, data: st.DataObject
) -> None:
    reply = data.draw(st.builds(StageReply, st.just(Stage.MASKED_INPUT), round_ids, masked_replies))
    header, tail = split_reply(reply_bytes(reply))
    fields = json.loads(header)
    fields["meta"][key] = value
    mutated = reframed(data.draw, json.dumps(fields).encode(), tail)
    assert_well_formed_reply(decoded_or_refused(lambda: parse_reply(mutated)))


@FUZZ
@given(st.binary(max_size=300), st.booleans(), st.data())
def test_random_bytes_are_not_a_stage_reply(noise: bytes, with_magic: bool, data: st.DataObject) -> None:
    blob = reframed(data.draw, noise, b"") if with_magic else noise
    assert_well_formed_reply(decoded_or_refused(lambda: parse_reply(blob)))
