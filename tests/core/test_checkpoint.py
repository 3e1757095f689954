"""The checkpoint format: a round trip, and a refusal (never code) for anything else."""

import io
import pickle

import numpy as np
import pytest

from fedlab.core.checkpoint import Checkpoint


def test_weights_and_state_come_back_exactly() -> None:
    weights = (np.arange(6, dtype=np.float32).reshape(2, 3) / 7, np.array([np.nextafter(1, 2)], np.float32))
    state = {"loop": {"sampling": {"state": {"state": 2**100 + 1, "inc": 3}}, "clip": 0.1 + 0.2}}
    back = Checkpoint.from_bytes(Checkpoint(round_num=7, weights=weights, state=state).to_bytes())
    assert back.round_num == 7 and back.state == state
    assert all(
        a.tobytes() == b.tobytes() and a.dtype == b.dtype for a, b in zip(weights, back.weights, strict=True)
    )


@pytest.mark.parametrize(
    "blob",
    [b"", b"not a zip", pickle.dumps({"round": 1})],
    ids=["empty", "garbage", "pickle"],
)
def test_anything_else_is_refused_as_unreadable(blob: bytes) -> None:
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        Checkpoint.from_bytes(blob)


def test_an_archive_with_a_pickled_object_is_refused_without_unpickling() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, w0=np.array([object()], dtype=object), **{"state.json": np.frombuffer(b"{}", np.uint8)})
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        Checkpoint.from_bytes(buffer.getvalue())


def test_a_state_that_is_not_round_and_state_is_refused() -> None:
    good = Checkpoint(round_num=1, weights=(), state={}).to_bytes()
    assert Checkpoint.from_bytes(good).weights == ()
    buffer = io.BytesIO()
    np.savez(buffer, **{"state.json": np.frombuffer(b'{"round": 0, "state": {}}', np.uint8)})
    with pytest.raises(ValueError, match="round 0"):
        Checkpoint.from_bytes(buffer.getvalue())
