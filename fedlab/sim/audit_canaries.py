"""Where an audit puts its canaries: secret examples in clients' data, or canary clients.

Each canary is included independently with probability 1/2 (the one-run audit's design), from
the auditor's own generator.

* :class:`CanaryData` (sample-level DP-SGD): canary ``i`` belongs to client ``owner[i]``; if
  included it is one more example of that client. The client's public example count
  (``ArrayDataset.public_size``: its reported n, its DP-SGD sample rate and steps) stays its
  count without canaries, so a canary changes the client's data and nothing public.
* :class:`CanaryClients` (user-level DP): canary client ``i`` exists if included (add/remove);
  when the server samples it, its update is ``clip * direction[i]``, a fixed random unit direction
  scaled to the round's clip norm (the most any one client may move the sum). With ``zero_out``
  every canary client exists and takes part, and an excluded one sends a zero update (zero-out
  adjacency: what distributed DP claims against the server, which sees who takes part).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlab.algorithms.federation import RoundPlan
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.data.types import ArrayDataset, FederatedData, check_client_index
from fedlab.privacy.events import ANNOUNCED_CLIP_NORM
from fedlab.training.canaries import Canaries


@dataclass(frozen=True)
class CanaryData:
    """A :class:`~fedlab.data.types.FederatedData` whose clients also hold their included canaries.

    Attributes:
        base: The federation's own data.
        canaries: Every canary.
        owner: The client of each canary.
        included: Whether each canary is in its client's data.
    """

    base: FederatedData
    canaries: Canaries
    owner: npt.NDArray[np.int64]
    included: npt.NDArray[np.bool_]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return self.base.num_clients

    @property
    def test(self) -> ArrayDataset:
        """The central test set (no canaries)."""
        return self.base.test

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.base.num_classes

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return self.base.feature_shape

    def client(self, i: int) -> ArrayDataset:
        """Client ``i``'s data followed by its included canaries; its public size excludes them."""
        check_client_index(i, self.num_clients)
        data = self.base.client(i)
        mine = np.flatnonzero((self.owner == i) & self.included)
        return ArrayDataset(
            np.concatenate([data.x, self.canaries.x[mine]]),
            np.concatenate([data.y, self.canaries.y[mine]]),
            data.num_classes,
            public_size=data.reported_size,
        )

    def client_size(self, i: int) -> int:
        """Client ``i``'s public example count (without canaries)."""
        return self.base.client_size(i)


class CanaryClients:
    """Canary clients for a user-level audit (the :class:`~fedlab.sim.hooks.ExtraClients` of a run).

    Args:
        first_id: The id of canary 0 (ids follow on, above every real client's).
        directions: One unit direction per canary, flattened like the model, shape ``(m, d)``.
        included: Which canaries exist.
        shapes: The model's array shapes (to unflatten an update).
        clip_norm: The clip norm when a round does not send one.
        adaptive: Whether clients report adaptive clipping's indicator.
        zero_out: Every canary takes part; an excluded one sends zeros.
    """

    def __init__(
        self,
        *,
        first_id: int,
        directions: npt.NDArray[np.float64],
        included: npt.NDArray[np.bool_],
        shapes: Sequence[tuple[int, ...]],
        clip_norm: float,
        adaptive: bool,
        zero_out: bool = False,
    ) -> None:
        self._first = first_id
        self._directions = directions
        self._included = included
        self._shapes = list(shapes)
        self._clip = clip_norm
        self._adaptive = adaptive
        self._zero_out = zero_out

    @property
    def slots(self) -> int:
        """Every canary, present or not (counted in the population)."""
        return int(self._included.size)

    def present(self) -> list[str]:
        """The ids of the canaries that exist (all of them under zero-out)."""
        exist = np.ones_like(self._included) if self._zero_out else self._included
        return [str(self._first + int(i)) for i in np.flatnonzero(exist)]

    def train(
        self, plan: RoundPlan, weights: Sequence[np.ndarray], client_ids: Sequence[str]
    ) -> list[TrainReport]:
        """Each planned canary's report: its direction times the round's clip norm."""
        clip = float(plan.instructions.get(ANNOUNCED_CLIP_NORM, self._clip))
        return [self._report(cid, clip) for cid in client_ids]

    def _report(self, client_id: str, clip: float) -> TrainReport:
        index = int(client_id) - self._first
        flat = clip * self._directions[index] * float(self._included[index])
        arrays, start = [], 0
        for shape in self._shapes:
            size = math.prod(shape)
            arrays.append(flat[start : start + size].reshape(shape).astype(np.float32))
            start += size
        return TrainReport(
            client_id=client_id,
            update=Update(arrays=tuple(arrays), num_examples=0, weight=1.0),
            train_loss=math.nan,
            epsilon=math.inf,
            noise_multiplier=0.0,
            sample_rate=1.0,
            steps=0,
            clip_indicator=0.5 if self._adaptive else None,
        )


def random_directions(count: int, dim: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """``count`` independent uniformly random unit vectors in ``dim`` dimensions.

    >>> d = random_directions(3, 5, np.random.default_rng(0))
    >>> d.shape, np.allclose(np.linalg.norm(d, axis=1), 1.0)
    ((3, 5), True)
    """
    raw = rng.standard_normal((count, dim))
    result: npt.NDArray[np.float64] = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return result
