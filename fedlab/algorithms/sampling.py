"""Client sampling for a round, drawn from an explicit generator over stable client ids."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    pool = sorted(set(client_ids), key=client_sort_key)
    if not pool:
        return []
    count = max(1, round(fraction * len(pool)))
    if isinstance(rng, np.random.Generator):
        chosen = np.sort(rng.choice(len(pool), size=count, replace=False))
    else:
        chosen = np.sort(np.argsort(rng.random(len(pool)), kind="stable")[:count])
    return [pool[i] for i in chosen]


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
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1]; got {rate}")
    pool = sorted(set(client_ids), key=client_sort_key)
    taken = rng.random(len(pool)) < rate
    return [cid for cid, take in zip(pool, taken, strict=True) if take]
