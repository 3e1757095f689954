"""The stage wire format: replies round-trip, the masked vector is binary, malformed bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.secagg.errors import Stage
from fedlab.secagg.messages import EncryptedShares, KeyAdvert, MaskedInput, PublicKeys, UnmaskResponse
from fedlab.training.secure_wire import StageReply, parse_reply, reply_bytes

META = {"num-examples": 14.0, "epsilon": -1.0}


def masked_reply(bits: int, length: int, seed: int = 0) -> StageReply:
    vector = np.random.default_rng(seed).integers(0, 2**bits, length, dtype=np.uint64)
    return StageReply(Stage.MASKED_INPUT, 3, MaskedInput(3, 7, vector), META)


@pytest.mark.parametrize(("bits", "width"), [(8, 1), (16, 2), (20, 4), (32, 4), (40, 8)])
def test_masked_vector_round_trips_in_its_narrowest_width(bits: int, width: int) -> None:
    reply = masked_reply(bits, 10_000)
    data = reply_bytes(reply)
    assert width * 10_000 <= len(data) <= width * 10_000 + 300  # raw integers, no base64
    parsed = parse_reply(data)
    assert isinstance(parsed.message, MaskedInput)
    assert parsed.message.vector.dtype == np.uint64
    assert np.array_equal(parsed.message.vector, reply.message.vector)  # type: ignore[union-attr]
    assert (parsed.stage, parsed.round_num, parsed.meta) == (reply.stage, reply.round_num, META)


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
