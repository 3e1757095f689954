"""Fuzzing the SecAgg+ wire codec: random and mutated messages parse or are a one-line ValueError.

The decoders of :mod:`fedlab.secagg.wire` (``from_wire``, ``unframe``, ``masked_from_wire``) read what
another party sent. Whatever arrives (random bytes, a valid message with flipped bits, a truncated or
extended frame, a huge declared length, NaN, Infinity or deeply nested JSON, a field of the wrong
type), they either return a message of the asked type or raise a ValueError with a one-line message:
never another exception, and never slowly (hypothesis' ``deadline``; an alarm turns a hang into a
failure). The byte mutations and JSON strategies here also serve the stage-envelope fuzz tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedlab.secagg.encoding import FixedPointCodec
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
from fedlab.secagg.wire import (
    WireObject,
    frame,
    from_wire,
    masked_from_wire,
    masked_to_wire,
    to_wire,
    unframe,
)

T = TypeVar("T")

FUZZ = settings(
    max_examples=int(os.environ.get("FEDLAB_FUZZ_EXAMPLES", "120")),
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Bounded fuzzing for CI: 120 examples per test, each within 2 s, nothing saved to disk.

Set ``FEDLAB_FUZZ_EXAMPLES`` (e.g. 20000) to fuzz longer on a workstation.
"""

HANG_SECONDS = 10


# ---- the contract ------------------------------------------------------------------------------


@contextmanager
def no_hang(seconds: int = HANG_SECONDS) -> Iterator[None]:
    """Fail (rather than stall the test run) when the body runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise AssertionError(f"the decoder ran longer than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decoded_or_refused(decode: Callable[[], T], refusal: type[Exception] = ValueError) -> T | None:
    """``decode()``'s result, or None when it raised ``refusal`` with a clear one-line message.

    Any other exception propagates: hypothesis reports it with the input that caused it.
    """
    with no_hang():
        try:
            result = decode()
        except refusal as exc:
            message = str(exc)
            assert message.strip(), f"an empty {type(exc).__name__} message"
            assert "\n" not in message, f"a multi-line message: {message!r}"
            note_outcome("refused")
            return None
    note_outcome("parsed")
    return result


def note_outcome(outcome: str) -> None:
    """Count parsed and refused inputs in ``--hypothesis-show-statistics`` (a fuzzer that only
    ever sees refusals is not reaching the parsers)."""
    if currently_in_test_context():
        event(outcome)


# ---- JSON values and byte mutations (shared with tests/algorithms/test_secure_wire_fuzz.py) ------

EDGE_NUMBERS = [0, 1, -1, 2, 31, 32, 63, 64, 2**31, 2**32, 2**62, 2**62 + 1, 2**63, 2**64, -(2**63)]
EDGE_NUMBERS += [10**30, 10**400, 0.5, -0.0, 1e-300, 1e308, float("nan"), float("inf"), float("-inf")]

WIRE_WORDS = [
    "type",
    "round_id",
    "sender",
    "receiver",
    "keys",
    "neighbours",
    "ciphertexts",
    "self_mask_of",
    "mask_key_of",
    "self_mask_shares",
    "mask_key_shares",
    "vector",
    "dtype",
    "length",
    "params",
    "advert",
    "roster",
    "shares",
    "delivery",
    "unmask-request",
    "unmask-response",
    "masked",
    "fixed-point",
    "skellam",
    "<u4",
    "<f8",
    "|O",
    "AAAA",
    "====",
    "",
    "0",
    "-1",
    "01",
    "1_0",
    "\u0661",
    "\x00",
]
"""Keys and texts the decoders look for, so mutations hit the interesting branches."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.sampled_from(EDGE_NUMBERS),
    st.text(max_size=12),
    st.sampled_from(WIRE_WORDS),
)
json_keys = st.one_of(st.sampled_from(WIRE_WORDS), st.text(max_size=8), st.integers(-3, 40).map(str))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=12,
)
"""Anything ``json.loads`` can return (NaN and Infinity included), biased towards wire words."""

odd_values = st.sampled_from(EDGE_NUMBERS) | json_values
"""What a mutation puts in a field: half the time an edge number, else any JSON value."""

REPLACEMENT_TOKENS = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b"-1",
    b"0",
    b"2",
    b"1.5",
    b"18446744073709551616",
    b"1" + b"0" * 500,
    b"9" * 5000,
    b'"x"',
    b'""',
    b'"\\ud800"',
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"[[]]",
    b'{"type":"params"}',
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]
"""JSON fragments a mutation puts in place of a token: wrong types, odd numbers, deep nesting."""

_TOKEN = re.compile(rb'-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|"(?:[^"\\]|\\.)*"|true|false|null|\[\]|\{\}')


def mutate_json_text(
    draw: Callable[..., Any], text: bytes, replacements: Sequence[bytes] = REPLACEMENT_TOKENS
) -> bytes:
    """Replace one JSON token of ``text`` (a number, string, literal) with an odd fragment."""
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return text + draw(st.sampled_from(replacements))
    token = draw(st.sampled_from(tokens))
    replacement = draw(st.sampled_from(replacements) | st.binary(max_size=8))
    return text[: token.start()] + replacement + text[token.end() :]


def mutate_bytes(
    draw: Callable[..., Any], data: bytes, replacements: Sequence[bytes] = REPLACEMENT_TOKENS
) -> bytes:
    """Apply one to four random byte edits: bit flips, truncation, insertion, deletion, overwrite,
    or a token (of JSON or TOML) replaced by one of ``replacements``."""
    buf = bytearray(data)
    edits = ("flip", "truncate", "append", "insert", "delete", "overwrite", "json-token")
    for edit in draw(st.lists(st.sampled_from(edits), min_size=1, max_size=4)):
        size = len(buf)
        at = draw(st.integers(0, size))
        if edit == "flip" and size:
            buf[min(at, size - 1)] ^= 1 << draw(st.integers(0, 7))
        elif edit == "truncate":
            del buf[at:]
        elif edit == "append":
            buf += draw(st.binary(min_size=1, max_size=16))
        elif edit == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del buf[at : at + draw(st.integers(1, 16))]
        elif edit == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            buf[at : at + len(chunk)] = chunk
        elif edit == "json-token":
            buf = bytearray(mutate_json_text(draw, bytes(buf), replacements))
    return bytes(buf)


def mutate_value(draw: Callable[..., Any], value: Any, depth: int = 0) -> Any:
    """Return ``value`` (a JSON value) with one random edit somewhere inside it.

    The edit drops, adds or replaces a key of an object, replaces an element of a list, or
    replaces the whole value by another JSON value (often of another type).
    """
    descend = depth < 4 and isinstance(value, dict | list) and value and draw(st.booleans())
    if isinstance(value, dict) and descend:
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate_value(draw, value[key], depth + 1)}
    if isinstance(value, list) and descend:
        index = draw(st.integers(0, len(value) - 1))
        return [*value[:index], mutate_value(draw, value[index], depth + 1), *value[index + 1 :]]
    if isinstance(value, dict) and value:
        edit = draw(st.sampled_from(["drop", "add", "replace"]))
        key = draw(st.sampled_from(sorted(value)))
        if edit == "drop":
            return {k: v for k, v in value.items() if k != key}
        if edit == "add":
            return {**value, draw(json_keys): draw(odd_values)}
        return {**value, key: draw(odd_values)}
    return draw(odd_values)


# ---- valid protocol messages, built by the protocol's own types ----------------------------------

client_ids = st.integers(0, 2**20)
round_ids = st.integers(0, 2**64 - 1)
public_keys = st.builds(PublicKeys, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
ciphertexts = st.dictionaries(client_ids, st.binary(max_size=96), max_size=5)
id_sets = st.frozensets(client_ids, max_size=5)


@st.composite
def secagg_params(draw: Callable[..., Any]) -> SecAggParams:
    k = draw(st.integers(2, 40))
    t = draw(st.integers(max(2, k // 2 + 1), k))
    return SecAggParams(
        round_id=draw(round_ids),
        vector_length=draw(st.integers(0, 10**7)),
        modulus=draw(st.integers(2, 2**62)),
        neighbours=k,
        threshold=t,
        graph_seed=draw(st.binary(min_size=32, max_size=32)),
        min_clients=draw(st.integers(2, 1000)),
    )


@st.composite
def fixed_point_codecs(draw: Callable[..., Any]) -> FixedPointCodec:
    bits = draw(st.integers(8, 62))
    summands = draw(st.integers(1, min(10_000, 2 ** (bits - 1) - 1)))
    clip = draw(st.floats(1e-3, 1e3))
    return FixedPointCodec.for_sum(bits=bits, clip=clip, max_summands=summands)


wire_objects: st.SearchStrategy[WireObject] = st.one_of(
    secagg_params(),
    fixed_point_codecs(),
    st.builds(KeyAdvert, round_ids, client_ids, public_keys),
    st.builds(NeighbourRoster, round_ids, client_ids, st.dictionaries(client_ids, public_keys, max_size=4)),
    st.builds(EncryptedShares, round_ids, client_ids, ciphertexts),
    st.builds(ShareDelivery, round_ids, client_ids, ciphertexts),
    st.builds(UnmaskRequest, round_ids, client_ids, id_sets, id_sets),
    st.builds(UnmaskResponse, round_ids, client_ids, ciphertexts, ciphertexts),
)
WIRE_TYPES: list[type] = [
    SecAggParams,
    FixedPointCodec,
    KeyAdvert,
    NeighbourRoster,
    EncryptedShares,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
]

masked_inputs = st.builds(
    MaskedInput,
    round_ids,
    client_ids,
    st.integers(1, 64).flatmap(
        lambda bits: arrays(np.uint64, st.integers(0, 40), elements=st.integers(0, 2**bits - 1))
    ),
)

MAGIC = b"fuzz-magic/1\n"


def reframe(draw: Callable[..., Any], header_text: bytes, tail: bytes) -> bytes:
    """A frame around any header text, its length field right (or, sometimes, any 32-bit value)."""
    length = draw(st.just(len(header_text)) | st.integers(0, 2**32 - 1))
    return MAGIC + struct.pack("<I", length) + header_text + tail


# ---- JSON objects: from_wire ---------------------------------------------------------------------


@FUZZ
@given(wire_objects)
def test_every_message_survives_the_json_round_trip(obj: WireObject) -> None:
    text = json.dumps(to_wire(obj))
    assert from_wire(json.loads(text), type(obj)) == obj


@FUZZ
@given(wire_objects, st.sampled_from(WIRE_TYPES), st.data())
def test_a_mutated_message_parses_as_the_asked_type_or_is_a_value_error(
    obj: WireObject, kind: type, data: st.DataObject
) -> None:
    mutated = to_wire(obj)
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = mutate_value(data.draw, mutated)
    parsed = decoded_or_refused(lambda: from_wire(mutated, kind))
    if parsed is not None:
        assert isinstance(parsed, kind)
        assert from_wire(to_wire(parsed), kind) == parsed  # what parses is a well-formed message


@FUZZ
@given(json_values, st.sampled_from(WIRE_TYPES))
def test_any_json_value_parses_as_the_asked_type_or_is_a_value_error(value: Any, kind: type) -> None:
    parsed = decoded_or_refused(lambda: from_wire(value, kind))
    assert parsed is None or isinstance(parsed, kind)


@FUZZ
@given(wire_objects, st.sampled_from(WIRE_TYPES), st.data())
def test_mutated_json_text_parses_as_the_asked_type_or_is_a_value_error(
    obj: WireObject, kind: type, data: st.DataObject
) -> None:
    text = mutate_bytes(data.draw, json.dumps(to_wire(obj)).encode())
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return  # not JSON: refusing it is the envelope's job (tests/algorithms/...)
    parsed = decoded_or_refused(lambda: from_wire(value, kind))
    assert parsed is None or isinstance(parsed, kind)


# ---- frames and binary vectors: unframe, masked_from_wire ---------------------------------------


def parse_masked_frame(data: bytes) -> MaskedInput:
    header, tail = unframe(MAGIC, data)
    return masked_from_wire(header, tail)


def assert_well_formed(masked: MaskedInput | None) -> None:
    if masked is None:
        return
    assert isinstance(masked.round_id, int) and isinstance(masked.sender, int)
    assert masked.vector.dtype == np.uint64 and masked.vector.ndim == 1


@FUZZ
@given(masked_inputs)
def test_every_masked_input_survives_its_frame(masked: MaskedInput) -> None:
    parsed = parse_masked_frame(frame(MAGIC, *masked_to_wire(masked)))
    assert (parsed.round_id, parsed.sender) == (masked.round_id, masked.sender)
    assert np.array_equal(parsed.vector, masked.vector) and parsed.vector.dtype == np.uint64


@FUZZ
@given(masked_inputs, st.data())
def test_a_mutated_frame_parses_or_is_a_value_error(masked: MaskedInput, data: st.DataObject) -> None:
    encoded = frame(MAGIC, *masked_to_wire(masked))
    assert_well_formed(decoded_or_refused(lambda: parse_masked_frame(mutate_bytes(data.draw, encoded))))


@FUZZ
@given(masked_inputs, st.data())
def test_a_mutated_header_in_a_right_sized_frame_parses_or_is_a_value_error(
    masked: MaskedInput, data: st.DataObject
) -> None:
    header, tail = masked_to_wire(masked)
    if data.draw(st.booleans()):
        text = json.dumps(mutate_value(data.draw, header)).encode()
    else:
        text = mutate_json_text(data.draw, json.dumps(header).encode())
    tail = data.draw(st.just(tail) | st.binary(max_size=64))
    assert_well_formed(decoded_or_refused(lambda: parse_masked_frame(reframe(data.draw, text, tail))))


@FUZZ
@given(st.binary(max_size=200), st.booleans(), st.data())
def test_random_bytes_are_refused_or_parse(noise: bytes, with_magic: bool, data: st.DataObject) -> None:
    blob = reframe(data.draw, noise, b"") if with_magic else noise
    assert_well_formed(decoded_or_refused(lambda: parse_masked_frame(blob)))


@FUZZ
@given(st.integers(0, 1200), st.sampled_from(["round_id", "sender", "vector", "type"]), st.data())
def test_deeply_nested_headers_are_refused(depth: int, field: str, data: st.DataObject) -> None:
    header, tail = masked_to_wire(MaskedInput(1, 2, np.arange(3, dtype=np.uint64)))
    nested = json.dumps(header[field]).encode()
    opener, closer = data.draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    text = json.dumps({**header, field: "HOLE"}).encode()
    text = text.replace(b'"HOLE"', opener * depth + nested + closer * depth)
    parsed = decoded_or_refused(lambda: parse_masked_frame(reframe(data.draw, text, tail)))
    assert parsed is None or depth == 0
