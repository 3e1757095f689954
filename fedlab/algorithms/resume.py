"""Where a round loop starts: round 1 from the initial model, or after a run's last committed round.

Each loop hands the recorder its own state with every round (the ``state`` of
:meth:`~fedlab.algorithms.federation.RoundRecorder.release_round`): the generators it draws from
and the values that change from round to round. The recorder commits that state
with the round's spending (:mod:`fedlab.core.checkpoint`), and a resumed run passes the checkpoint
back here. A secret generator (deployment) keeps no state: a resumed run draws from fresh secret
keys, so nobody holding the run directory can predict its later draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlab.core.checkpoint import Checkpoint, same_shapes
from fedlab.core.errors import LedgerError
from fedlab.secagg.crypto import SeededSource


def stream_state(stream: object) -> Any:
    """A seeded generator's state (JSON), or None for a secret one (never written down).

    >>> rng = np.random.default_rng(0); _ = rng.random()
    >>> restored = np.random.default_rng(1); restore_stream(restored, stream_state(rng))
    >>> float(restored.random()) == float(rng.random())
    True
    """
    if isinstance(stream, np.random.Generator):
        return stream.bit_generator.state
    if isinstance(stream, SeededSource):
        return stream.position
    return None


def restore_stream(stream: object, state: Any) -> None:
    """Put a seeded generator back where :func:`stream_state` found it (None: a secret one, left as is).

    Raises:
        LedgerError: If the state does not fit the generator.
    """
    if state is None:
        return
    try:
        if isinstance(stream, np.random.Generator):
            stream.bit_generator.state = state
            return
        if isinstance(stream, SeededSource):
            stream.seek(state)
            return
    except (TypeError, ValueError, KeyError) as exc:
        raise LedgerError(f"checkpoint: generator state does not fit: {exc}") from None
    raise LedgerError(f"checkpoint: a {type(stream).__name__} keeps no state to restore")


@dataclass(frozen=True)
class LoopStart:
    """Where a loop begins: after round ``done`` (0: a fresh run), from ``weights``, with ``values``.

    Example:
        >>> start = LoopStart.of(None, [np.zeros(2, np.float32)])
        >>> start.done, start.first, start.values
        (0, 1, {})
    """

    done: int
    weights: list[np.ndarray]
    values: Mapping[str, Any]

    @property
    def first(self) -> int:
        """The first round to run."""
        return self.done + 1

    @classmethod
    def of(cls, resume: Checkpoint | None, initial_weights: Sequence[np.ndarray]) -> LoopStart:
        """Round 1 from ``initial_weights``, or the round after ``resume`` from its weights and loop values.

        Raises:
            LedgerError: If the checkpoint's weights do not have the model's shapes, or it holds
                no loop state.
        """
        initial = [np.asarray(w, dtype=np.float32) for w in initial_weights]
        if resume is None:
            return cls(done=0, weights=initial, values={})
        weights = [np.array(w) for w in resume.weights]
        if not same_shapes(weights, initial):
            raise LedgerError("checkpoint: its weights do not have the shapes of the configured model")
        values = resume.state.get("loop")
        if not isinstance(values, dict):
            raise LedgerError("checkpoint: no round-loop state")
        return cls(done=resume.round_num, weights=weights, values=values)

    def value(self, key: str, default: Any = None) -> Any:
        """A loop value, or ``default`` on a fresh run.

        Raises:
            LedgerError: If a resumed run's state lacks ``key``.
        """
        if self.done == 0:
            return default
        if key not in self.values:
            raise LedgerError(f"checkpoint: the round-loop state has no {key!r}")
        return self.values[key]

    def count(self, key: str) -> int:
        """A non-negative count from the loop values (0 on a fresh run)."""
        value = self.value(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.done:
            raise LedgerError(f"checkpoint: {key!r} is not a round count: {value!r}")
        return value

    def positive(self, key: str) -> float:
        """A finite value > 0 from the loop values (e.g. a clip norm).

        Raises:
            LedgerError: If a resumed run's value is missing, not a number, not finite or not > 0.
        """
        value = self.value(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < math.inf:
            raise LedgerError(f"checkpoint: {key!r} is not finite and > 0: {value!r}")
        return float(value)
