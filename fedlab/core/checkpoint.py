"""What a run keeps, with each committed round, to go on after a crash: a :class:`Checkpoint`.

A checkpoint is written in the same ledger transaction as the round's privacy spending
(:meth:`fedlab.privacy.ledger.PrivacyLedger.commit_round`), so the ledger never holds a round
whose model and loop state are lost, nor a state whose spending is missing. It holds the round's
released weights and a JSON object of named states (the round loop's generators and values, the
transport's clock, the round's metrics line); client accountant histories are not in it: they are
the ledger's own rows.

The bytes are an ``.npz`` archive read with ``allow_pickle=False``: loading one from an untrusted
run directory runs no code.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_STATE_KEY = "state.json"
_WEIGHT_PREFIX = "w"


@dataclass(frozen=True)
class Checkpoint:
    """A run's state after round ``round_num``: its released weights and named JSON states.

    Example:
        >>> c = Checkpoint(round_num=3, weights=(np.ones(2, np.float32),), state={"loop": {"k": 1}})
        >>> back = Checkpoint.from_bytes(c.to_bytes())
        >>> back.round_num, back.weights[0].tolist(), back.state["loop"]
        (3, [1.0, 1.0], {'k': 1})
    """

    round_num: int
    weights: tuple[np.ndarray, ...]
    state: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The checkpoint as an ``.npz`` archive (weights ``w0``, ``w1``, ... and ``state.json``)."""
        payload = json.dumps({"round": self.round_num, "state": self.state}, sort_keys=True, allow_nan=False)
        arrays: dict[str, Any] = {f"{_WEIGHT_PREFIX}{i}": np.asarray(w) for i, w in enumerate(self.weights)}
        arrays[_STATE_KEY] = np.frombuffer(payload.encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Checkpoint:
        """Read a checkpoint written by :meth:`to_bytes`.

        Raises:
            ValueError: If ``blob`` is not such a checkpoint.
        """
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
                names = set(archive.files)
                count = len(names) - 1
                expected = {f"{_WEIGHT_PREFIX}{i}" for i in range(count)} | {_STATE_KEY}
                if names != expected:
                    raise ValueError(f"unexpected entries {sorted(names ^ expected)}")
                weights = tuple(np.array(archive[f"{_WEIGHT_PREFIX}{i}"]) for i in range(count))
                payload = json.loads(archive[_STATE_KEY].tobytes().decode("utf-8"))
        except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"unreadable checkpoint: {exc}") from None
        round_num, state = _parts(payload)
        return cls(round_num=round_num, weights=weights, state=state)


def _parts(payload: Any) -> tuple[int, dict[str, Any]]:
    if not isinstance(payload, dict) or set(payload) != {"round", "state"}:
        raise ValueError("unreadable checkpoint: state.json is not {round, state}")
    round_num, state = payload["round"], payload["state"]
    if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 1:
        raise ValueError(f"unreadable checkpoint: round {round_num!r}")
    if not isinstance(state, dict):
        raise ValueError("unreadable checkpoint: state is not an object")
    return round_num, state


def same_shapes(weights: Sequence[np.ndarray], like: Sequence[np.ndarray]) -> bool:
    """Whether ``weights`` has the arrays, shapes and dtypes of ``like``.

    >>> same_shapes([np.zeros(2, np.float32)], [np.ones(2, np.float32)])
    True
    >>> same_shapes([np.zeros(3, np.float32)], [np.ones(2, np.float32)])
    False
    """
    return len(weights) == len(like) and all(
        w.shape == v.shape and w.dtype == v.dtype for w, v in zip(weights, like, strict=True)
    )
