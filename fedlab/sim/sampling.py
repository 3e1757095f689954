"""Client sampling by index, for populations too large to list every round.

:func:`~fedlab.algorithms.federation.run_fedavg` samples over the list of client id
strings that ``available_clients()`` returns, which it sorts every round: at 10^6
clients that alone takes seconds. The inline simulator's transport samples over integer
client indices instead (:class:`~fedlab.algorithms.federation.IndexSampling`), so a
round costs what its sampled clients cost. :func:`sample_indices` draws exactly the clients that
:func:`~fedlab.algorithms.sampling.sample_fraction` and
:func:`~fedlab.algorithms.sampling.sample_poisson` draw from the same generator
state (``tests/sim/test_inline_sampling.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

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
