"""Client sampling for a round, drawn from an explicit generator: by index, or over stable client ids.

:func:`sample_indices` draws from a population of indices (a simulator samples 10^6 clients
without listing them); :func:`sample_fraction` and :func:`sample_poisson` put the ids in a
canonical order and draw the same way, so the same generator state picks the same clients
whichever way a run samples.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from fedlab.core.clients import client_sort_key
from fedlab.privacy.secure_random import RandomStream


def sample_fraction(client_ids: Iterable[str], *, fraction: float, rng: RandomStream) -> list[str]:
    """Sample ``max(1, round(fraction * n))`` distinct clients uniformly without replacement.

    The ids are put in a canonical order first, so the same generator state picks the
    same clients however the transport happens to list them.

    Args:
        client_ids: The available clients' stable ids.
        fraction: Fraction of clients to take, in (0, 1].
        rng: The generator every draw comes from (a numpy generator draws with ``choice``; a secure
            stream ranks the clients by uniform keys).

    Returns:
        The sampled ids in canonical order.

    >>> sample_fraction(["2", "10", "1"], fraction=1.0, rng=np.random.default_rng(0))
    ['1', '2', '10']
    """
    pool = sorted(set(client_ids), key=client_sort_key)
    return [pool[i] for i in sample_indices(len(pool), mode="fraction", fraction=fraction, rng=rng)]


def sample_poisson(client_ids: Iterable[str], *, rate: float, rng: RandomStream) -> list[str]:
    """Take each client independently with probability ``rate`` (the sampling DP amplification assumes).

    The cohort size is random and may be zero; one uniform draw per client in canonical
    order, so the same generator state picks the same clients however they are listed.

    Args:
        client_ids: The available clients' stable ids.
        rate: The sampling probability q, in (0, 1].
        rng: The generator every draw comes from.

    Returns:
        The sampled ids in canonical order.

    >>> sample_poisson(["1", "2", "3"], rate=1.0, rng=np.random.default_rng(0))
    ['1', '2', '3']
    """
    pool = sorted(set(client_ids), key=client_sort_key)
    return [pool[i] for i in sample_indices(len(pool), mode="poisson", fraction=rate, rng=rng)]


SAMPLERS = ("fraction", "poisson")


def sample_indices(
    pool: int | NDArray[np.int64], *, mode: str, fraction: float, rng: RandomStream
) -> NDArray[np.int64]:
    """Sample clients from an ascending pool of indices (``int n``: all of ``0 .. n-1``).

    Args:
        pool: The available clients' indices in ascending order, or their number
            when every client is available (nothing is allocated then).
        mode: ``"fraction"``: exactly ``max(1, round(fraction * n))`` clients,
            uniformly (none from an empty pool); ``"poisson"``: each client
            independently with probability ``fraction``.
        fraction: The fraction or the sampling probability, in (0, 1].
        rng: The generator every draw comes from (a numpy generator draws a fraction with
            ``choice``; a secure stream ranks the clients by uniform keys).

    Returns:
        The sampled indices, ascending.

    >>> sample_indices(10, mode="fraction", fraction=0.3, rng=np.random.default_rng(0)).tolist()
    [5, 6, 9]
    """
    if mode not in SAMPLERS:
        raise ValueError(f"mode must be one of {', '.join(SAMPLERS)}; got {mode!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the {mode} sampling rate must be in (0, 1]; got {fraction}")
    n = pool if isinstance(pool, int) else len(pool)
    if mode == "poisson":
        chosen = np.flatnonzero(rng.random(n) < fraction)
    elif n == 0:
        chosen = np.zeros(0, dtype=np.int64)
    elif isinstance(rng, np.random.Generator):
        chosen = np.sort(rng.choice(n, size=max(1, round(fraction * n)), replace=False))
    else:
        chosen = np.sort(np.argsort(rng.random(n), kind="stable")[: max(1, round(fraction * n))])
    chosen = chosen.astype(np.int64)
    return chosen if isinstance(pool, int) else pool[chosen]
