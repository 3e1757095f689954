"""The stage wire format: calls and replies round-trip, the vector is binary, malformed bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.algorithms.secure_messages import (
    MaskedInputMessage,
    MaskedReply,
    SetupMessage,
    StageCall,
    StageReply,
)
from fedlab.algorithms.secure_wire import call_bytes, parse_call, parse_reply, reply_bytes
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import Stage
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


def masked_reply(bits: int, length: int, seed: int = 0) -> StageReply:
    vector = np.random.default_rng(seed).integers(0, 2**bits, length, dtype=np.uint64)
    masked = MaskedInput(3, 7, vector)
    return StageReply(Stage.MASKED_INPUT, 3, MaskedReply(masked, 14, 2.5, 1.1, 0.05, 40))


@pytest.mark.parametrize(("bits", "width"), [(8, 1), (16, 2), (20, 4), (32, 4), (40, 8)])
def test_masked_vector_round_trips_in_its_narrowest_width(bits: int, width: int) -> None:
    reply = masked_reply(bits, 10_000)
    data = reply_bytes(reply)
    assert width * 10_000 <= len(data) <= width * 10_000 + 300  # raw integers, no base64
    parsed, sent = parse_reply(data), reply.message
    assert isinstance(parsed.message, MaskedReply) and isinstance(sent, MaskedReply)
    assert parsed.message.masked.vector.dtype == np.uint64
    assert np.array_equal(parsed.message.masked.vector, sent.masked.vector)
    assert (parsed.stage, parsed.round_num) == (reply.stage, reply.round_num)
    public = ("num_examples", "epsilon", "noise_multiplier", "sample_rate", "steps")
    assert [getattr(parsed.message, f) for f in public] == [getattr(sent, f) for f in public]


def test_a_masked_reply_without_dp_sgd_keeps_an_infinite_epsilon() -> None:
    reply = StageReply(Stage.MASKED_INPUT, 1, MaskedReply(MaskedInput(1, 0, np.zeros(3, np.uint64)), 5))
    parsed = parse_reply(reply_bytes(reply)).message
    assert isinstance(parsed, MaskedReply) and parsed.epsilon == float("inf") and parsed.num_examples == 5


def test_every_other_reply_type_round_trips() -> None:
    keys = PublicKeys(bytes(range(32)), bytes(range(1, 33)))
    replies = [
        StageReply(Stage.ADVERTISE_KEYS, 2, KeyAdvert(2, 5, keys)),
        StageReply(Stage.SHARE_KEYS, 2, EncryptedShares(2, 5, {1: b"\x01" * 60, 9: b"\x02" * 60})),
        StageReply(Stage.UNMASK, 2, UnmaskResponse(2, 5, {1: b"\x03" * 70}, {9: b"\x04" * 70})),
    ]
    for reply in replies:
        assert parse_reply(reply_bytes(reply)) == reply


def corrupt(data: bytes, how: str) -> bytes:
    if how == "magic":
        return b"X" + data[1:]
    if how == "truncated-vector":
        return data[:-1]
    if how == "truncated-header":
        return data[:30]
    if how == "extra-tail":
        return data + b"\x00\x00\x00\x00"
    if how == "bad-dtype":
        return data.replace(b'"dtype":"<u4"', b'"dtype":"<f8"')
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["magic", "truncated-vector", "truncated-header", "extra-tail", "bad-dtype"])
def test_malformed_masked_replies_are_value_errors(how: str) -> None:
    with pytest.raises(ValueError, match=r"reply|vector"):
        parse_reply(corrupt(reply_bytes(masked_reply(20, 100)), how))


def test_a_binary_tail_on_a_reply_without_a_vector_is_refused() -> None:
    keys = PublicKeys(bytes(range(32)), bytes(range(1, 33)))
    data = reply_bytes(StageReply(Stage.ADVERTISE_KEYS, 2, KeyAdvert(2, 5, keys))) + b"\x00"
    with pytest.raises(ValueError, match="binary vector"):
        parse_reply(data)


def test_a_masked_reply_relabelled_as_another_stage_is_refused() -> None:
    data = reply_bytes(masked_reply(20, 4))
    forged = data.replace(b'"stage":2', b'"stage":0', 1)  # same length: the header still parses
    assert forged != data
    with pytest.raises(ValueError, match="binary vector"):
        parse_reply(forged)


PARAMS = SecAggParams(4, 10, 2**20, 4, 3, bytes(range(32)), 3)
SKELLAM = SkellamParams(clip=1.0, noise_multiplier=1.3, num_clients=8, min_survivors=4, bits=20, dim=10)


@pytest.mark.parametrize(
    "call",
    [
        StageCall(Stage.ADVERTISE_KEYS, 4, 99, SetupMessage(PARAMS, 2)),
        StageCall(Stage.ADVERTISE_KEYS, 4, 99, SetupMessage(PARAMS, 2, SKELLAM)),
        StageCall(
            Stage.ADVERTISE_KEYS,
            4,
            99,
            SetupMessage(PARAMS, 2, FixedPointCodec.for_sum(bits=20, clip=1.0, max_summands=8)),
        ),
        StageCall(
            Stage.SHARE_KEYS, 4, 99, NeighbourRoster(4, 2, {1: PublicKeys(bytes(32), bytes(range(32)))})
        ),
        StageCall(
            Stage.MASKED_INPUT, 4, 99, MaskedInputMessage(ShareDelivery(4, 2, {1: b"\x07" * 40}), SKELLAM)
        ),
        StageCall(Stage.UNMASK, 4, 99, UnmaskRequest(4, 2, frozenset({1}), frozenset({3, 5}))),
    ],
)
def test_every_call_round_trips(call: StageCall) -> None:
    assert parse_call(call_bytes(call)) == call


def test_a_call_whose_message_is_not_its_stages_is_refused() -> None:
    request = UnmaskRequest(4, 2, frozenset({1}), frozenset())
    with pytest.raises(ValueError, match="UnmaskRequest"):
        StageCall(Stage.ADVERTISE_KEYS, 4, 99, request)
    data = call_bytes(StageCall(Stage.UNMASK, 4, 99, request))
    with pytest.raises(ValueError, match="setup"):
        parse_call(data.replace(b'"stage":3', b'"stage":0', 1))


@pytest.mark.parametrize(
    "garbage", [b"", b"{}", b"[1]", b'{"stage":9,"round":1,"seed":1,"message":{}}', b"\xff"]
)
def test_garbage_calls_are_value_errors(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        parse_call(garbage)


def test_a_reply_whose_message_is_not_its_stages_is_refused() -> None:
    keys = PublicKeys(bytes(range(32)), bytes(range(1, 33)))
    with pytest.raises(ValueError, match="EncryptedShares"):
        StageReply(Stage.SHARE_KEYS, 2, KeyAdvert(2, 5, keys))
