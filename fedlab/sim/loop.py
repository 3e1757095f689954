"""The federated-averaging round loop for populations too large to list every round.

:func:`~fedlab.algorithms.federation.run_fedavg` samples over the list of client id
strings that ``available_clients()`` returns, which it sorts every round: at 10^6
clients that alone takes seconds. :func:`run_simulated_fedavg` runs that loop with
the sampling done over integer client indices, so a round costs what its sampled
clients cost. :func:`sample_indices` draws exactly the clients that
:func:`~fedlab.algorithms.sampling.sample_fraction` and
:func:`~fedlab.algorithms.sampling.sample_poisson` draw from the same generator
state (``tests/sim/test_inline_sampling.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from fedlab.algorithms.federation import FedAvgSettings, RoundPlan, RoundRecorder, run_fedavg
from fedlab.core.reports import RoundReplies

SAMPLERS = ("fraction", "poisson")


def sample_indices(
    pool: int | NDArray[np.int64], *, mode: str, fraction: float, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Sample clients from an ascending pool of indices (``int n``: all of ``0 .. n-1``).

    Args:
        pool: The available clients' indices in ascending order, or their number
            when every client is available (nothing is allocated then).
        mode: ``"fraction"``: exactly ``max(1, round(fraction * n))`` clients,
            uniformly; ``"poisson"``: each client independently with probability
            ``fraction``.
        fraction: The fraction or the sampling probability, in (0, 1].
        rng: The generator every draw comes from.

    Returns:
        The sampled indices, ascending.

    >>> sample_indices(10, mode="fraction", fraction=0.3, rng=np.random.default_rng(0)).tolist()
    [5, 6, 9]
    """
    if mode not in SAMPLERS:
        raise ValueError(f"mode must be one of {', '.join(SAMPLERS)}; got {mode!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    n = pool if isinstance(pool, int) else len(pool)
    if mode == "fraction":
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        chosen = np.sort(rng.choice(n, size=max(1, round(fraction * n)), replace=False))
    else:
        chosen = np.flatnonzero(rng.random(n) < fraction)
    chosen = chosen.astype(np.int64)
    return chosen if isinstance(pool, int) else pool[chosen]


class SimulatedTransport(Protocol):
    """A transport that samples its own population by index and trains a plan."""

    def available_clients(self) -> list[str]:
        """Every available client id (listed only by loops that do not sample by index)."""
        ...

    def sample(
        self, round_num: int, rng: np.random.Generator, *, mode: str, fraction: float
    ) -> tuple[str, ...]:
        """The ids of the clients sampled for ``round_num`` (see :func:`sample_indices`)."""
        ...

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Have the planned clients train from ``weights``; return what came back."""
        ...


def run_simulated_fedavg(
    *,
    transport: SimulatedTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    settings: FedAvgSettings,
) -> list[np.ndarray]:
    """Run :func:`~fedlab.algorithms.federation.run_fedavg`, sampling through the transport by index.

    ``settings.sampling`` and ``settings.fraction_train`` choose the sampler, as in
    ``run_fedavg``; the clients drawn from the same seed are the same.

    Returns:
        The final global weights.
    """

    def by_index(round_num: int, rng: np.random.Generator) -> tuple[str, ...]:
        return transport.sample(round_num, rng, mode=settings.sampling, fraction=settings.fraction_train)

    return run_fedavg(
        transport=transport,
        recorder=recorder,
        initial_weights=initial_weights,
        settings=settings,
        sampler=by_index,
    )
