"""Server optimizers on a round's aggregate delta: FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad.

The adaptive federated optimizers of Reddi et al. 2021 ("Adaptive Federated Optimization"): the
round's aggregate delta (the mean of the clients' deltas, noised under DP) is a pseudo-gradient
step ``d``; the server keeps moments of it and moves the model by

- ``fedavg``: ``x + lr * d`` (``lr = 1``: plain FedAvg);
- ``fedavgm``: ``m = momentum * m + d``, ``x + lr * m``;
- ``fedadam``, ``fedyogi``, ``fedadagrad``: ``m = beta1 * m + (1 - beta1) * d`` and
  ``x + lr * m / (sqrt(v) + tau)``, with ``v = beta2 * v + (1 - beta2) * d^2`` (Adam),
  ``v = v - (1 - beta2) * d^2 * sign(v - d^2)`` (Yogi) or ``v = v + d^2`` (Adagrad), ``v``
  starting at ``tau^2``.

Under any DP mode the optimizer only sees the released aggregate: post-processing, no privacy cost.
Its moments are part of the round loop's state (:meth:`ServerOptimizer.state`), so a resumed run
goes on with them.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedlab.algorithms.fedavg import apply_delta
from fedlab.algorithms.resume import LoopStart
from fedlab.core.server_config import ServerOptimizerSettings


def _encode(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float64), allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    array = np.load(io.BytesIO(base64.b64decode(text.encode("ascii"), validate=True)), allow_pickle=False)
    return np.asarray(array, dtype=np.float64)


class ServerOptimizer:
    """Applies one round's aggregate delta with :class:`ServerOptimizerSettings`, keeping its moments.

    Example:
        >>> opt = ServerOptimizer(ServerOptimizerSettings("fedavgm", lr=1.0, momentum=0.5))
        >>> w = opt.step([np.zeros(1, np.float32)], [np.array([1.0])])
        >>> opt.step(w, [np.array([1.0])])[0].tolist()  # m = 1, then 0.5 * 1 + 1
        [2.5]
    """

    def __init__(self, settings: ServerOptimizerSettings) -> None:
        self.settings = settings
        self._m: list[np.ndarray] | None = None
        self._v: list[np.ndarray] | None = None

    def step(self, weights: Sequence[np.ndarray], delta: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The new global weights from ``weights`` and the round's aggregate ``delta``."""
        s = self.settings
        if s.is_plain_fedavg:
            return apply_delta(weights, delta)
        d = [np.asarray(x, dtype=np.float64) for x in delta]
        if s.kind == "fedavg":
            return apply_delta(weights, [s.lr * x for x in d])
        if self._m is None:
            self._m = [np.zeros_like(x) for x in d]
        if s.kind == "fedavgm":
            self._m = [s.momentum * m + x for m, x in zip(self._m, d, strict=True)]
            return apply_delta(weights, [s.lr * m for m in self._m])
        self._m = [s.beta1 * m + (1.0 - s.beta1) * x for m, x in zip(self._m, d, strict=True)]
        if self._v is None:
            self._v = [np.full_like(x, s.tau**2) for x in d]
        squares = [x * x for x in d]
        if s.kind == "fedadam":
            self._v = [s.beta2 * v + (1.0 - s.beta2) * q for v, q in zip(self._v, squares, strict=True)]
        elif s.kind == "fedyogi":
            self._v = [
                v - (1.0 - s.beta2) * q * np.sign(v - q) for v, q in zip(self._v, squares, strict=True)
            ]
        else:
            self._v = [v + q for v, q in zip(self._v, squares, strict=True)]
        steps = [s.lr * m / (np.sqrt(v) + s.tau) for m, v in zip(self._m, self._v, strict=True)]
        return apply_delta(weights, steps)

    def state_arrays(self) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
        """Copies of the first and second moments (None before the first adaptive step)."""
        return (
            None if self._m is None else [m.copy() for m in self._m],
            None if self._v is None else [v.copy() for v in self._v],
        )

    def state(self) -> dict[str, Any]:
        """The moments as JSON (arrays as base64 ``.npy``), for the round loop's checkpoint."""
        return {
            "kind": self.settings.kind,
            "m": None if self._m is None else [_encode(m) for m in self._m],
            "v": None if self._v is None else [_encode(v) for v in self._v],
        }

    def restore(self, state: Mapping[str, Any] | None) -> None:
        """Go on from :meth:`state` (None: from scratch).

        Raises:
            ValueError: If the state is another optimizer's or malformed.

        """
        if state is None:
            return
        if state.get("kind") != self.settings.kind:
            raise ValueError(
                f"the checkpoint's server optimizer is {state.get('kind')!r}, not {self.settings.kind!r}"
            )
        try:
            self._m = None if state.get("m") is None else [_decode(t) for t in state["m"]]
            self._v = None if state.get("v") is None else [_decode(t) for t in state["v"]]
        except (TypeError, ValueError, OSError) as exc:
            raise ValueError(f"malformed server optimizer state: {exc}") from None


def optimizer_state(optimizer: ServerOptimizer) -> dict[str, Any]:
    """The round loop's ``optimizer`` state entry: empty for plain FedAvg (which has none)."""
    return {} if optimizer.settings.is_plain_fedavg else {"optimizer": optimizer.state()}


def resumed_optimizer(settings: ServerOptimizerSettings, start: LoopStart) -> ServerOptimizer:
    """The round loop's optimizer: fresh, or with the moments of the checkpoint it resumes from."""
    optimizer = ServerOptimizer(settings)
    if not settings.is_plain_fedavg:
        optimizer.restore(start.value("optimizer"))
    return optimizer
