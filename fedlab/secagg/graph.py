"""The SecAgg+ neighbour graph: a Harary graph over a seeded random permutation of the clients."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from types import MappingProxyType

Graph = Mapping[int, frozenset[int]]
"""Client id -> the ids of its neighbours (symmetric, no self-loops)."""


def effective_degree(num_clients: int, neighbours: int) -> int:
    """Return the degree the graph really has: ``neighbours`` capped at n - 1, made even if n is odd.

    A k-regular graph needs n * k even, so for odd n an odd k is lowered by one: the degree never
    exceeds ``neighbours``, the k a server announces, and clients refuse a longer roster (see
    :func:`fedlab.secagg.protocol.client_share_keys`). :func:`degree_and_threshold` announces an
    even k (or n - 1), which the graph then has exactly, however many clients advertise.

    >>> effective_degree(10, 4), effective_degree(9, 3), effective_degree(10, 3), effective_degree(5, 100)
    (4, 2, 3, 4)
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    degree = min(neighbours, num_clients - 1)
    if degree % 2 == 1 and num_clients % 2 == 1:
        degree -= 1
    return max(degree, 0)


def _order(ids: Collection[int], seed: bytes) -> list[int]:
    if len(seed) != 32:
        raise ValueError(f"the graph seed must be 32 bytes, got {len(seed)}")
    return sorted(ids, key=lambda i: hashlib.sha256(seed + i.to_bytes(8, "big")).digest())


def neighbour_graph(ids: Collection[int], *, neighbours: int, seed: bytes) -> Graph:
    """Return the SecAgg+ neighbour graph of ``ids``: k-regular (k = effective degree), random.

    No client gets more than ``neighbours`` neighbours (see :func:`effective_degree`).

    The clients are placed on a circle in an order given by SHA-256 of the public 32-byte ``seed``
    and their id; each is joined to the k/2 nearest on each side (plus the opposite one when k is
    odd). With ``neighbours >= len(ids) - 1`` this is the complete graph of classic SecAgg.

    Stops: nothing by itself; a random graph keeps, with high probability, enough honest neighbours
    around every client (Bell et al. 2020). Does not stop: a malicious server that picks the seed
    after seeing who is corrupt, or tells clients different graphs (no consistency check).

    >>> g = neighbour_graph(range(6), neighbours=2, seed=bytes(32))
    >>> sorted(len(v) for v in g.values()), all(u in g[v] for u in g for v in g[u])
    ([2, 2, 2, 2, 2, 2], True)
    """
    if len(set(ids)) != len(ids):
        raise ValueError("client ids must be distinct")
    order = _order(ids, seed)
    n = len(order)
    degree = effective_degree(n, neighbours) if n > 1 else 0
    offsets = list(range(1, degree // 2 + 1)) + ([n // 2] if degree % 2 else [])
    adjacency: dict[int, set[int]] = {i: set() for i in order}
    for position, client in enumerate(order):
        for offset in offsets:
            other = order[(position + offset) % n]
            adjacency[client].add(other)
            adjacency[other].add(client)
    return MappingProxyType({i: frozenset(v) for i, v in adjacency.items()})


def suggest_neighbours(num_clients: int, *, factor: float = 3.0) -> int:
    """Return a SecAgg+ degree k = O(log n): about ``factor * log2(n)``, even, capped at n - 1.

    A heuristic in the spirit of Bell et al. 2020; size k and the threshold from their bounds for a
    given dropout rate and corruption rate when the guarantees matter.

    >>> suggest_neighbours(100), suggest_neighbours(1000), suggest_neighbours(5)
    (20, 30, 4)
    """
    if num_clients < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {num_clients}")
    k = 2 * math.ceil(factor * math.log2(num_clients) / 2)
    return min(k, num_clients - 1)


def suggest_threshold(neighbours: int) -> int:
    """Return the Shamir threshold t = floor(k / 2) + 1 (a strict majority of the neighbours).

    A majority means a server that lies about who dropped cannot collect t shares of a client's
    self-mask seed from one group of neighbours and t shares of its mask key from another.

    >>> suggest_threshold(20), suggest_threshold(3)
    (11, 2)
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    return neighbours // 2 + 1


def degree_and_threshold(
    num_clients: int, *, neighbours: int | None = None, threshold: int | None = None
) -> tuple[int, int]:
    """Return the (k, t) to announce for a cohort of ``num_clients``; None means automatic.

    The rules, in order:

    * k is ``neighbours``, or :func:`suggest_neighbours`; an automatic k is kept at most 2t - 1
      when ``threshold`` is given, so that t stays a strict majority; then k is capped at n - 1.
    * An odd k below n - 1 becomes even (otherwise, should an odd number of clients advertise, the
      graph would have only k - 1): raised by one, or lowered by one when a given ``threshold``
      would not be a strict majority of k + 1. Then the graph has exactly min(k, n' - 1)
      neighbours per client whichever n' <= n clients advertise.
    * t is ``threshold`` (capped at k), or :func:`suggest_threshold` of k.

    The result has t <= k and 2t > k, which clients require of a roster (see
    :func:`fedlab.secagg.protocol.client_share_keys`); t < 2 (unusable) only for n = 2.

    >>> degree_and_threshold(100), degree_and_threshold(20, neighbours=5)
    ((20, 11), (6, 4))
    >>> degree_and_threshold(20, neighbours=5, threshold=3), degree_and_threshold(100, threshold=3)
    ((4, 3), (4, 3))
    >>> degree_and_threshold(6, neighbours=9), degree_and_threshold(5, threshold=9)
    ((5, 3), (4, 4))

    Raises:
        ValueError: If ``num_clients < 2``, ``neighbours < 1``, ``threshold < 2``, or the given
            ``neighbours`` and ``threshold`` have 2t <= k (a server could then collect t shares of
            both of a client's secrets from two disjoint halves of its neighbours).

    """
    if num_clients < 2:
        raise ValueError(f"secure aggregation needs at least 2 clients, got {num_clients}")
    if neighbours is not None and neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    if threshold is not None and threshold < 2:
        raise ValueError(f"threshold must be at least 2, got {threshold}")
    k = suggest_neighbours(num_clients) if neighbours is None else neighbours
    if neighbours is None and threshold is not None:
        k = min(k, 2 * threshold - 1)
    k = min(k, num_clients - 1)
    if k % 2 == 1 and k < num_clients - 1:
        k = k + 1 if threshold is None or 2 * threshold > k + 1 else k - 1
    t = suggest_threshold(k) if threshold is None else min(threshold, k)
    if 2 * t <= k:
        raise ValueError(f"threshold {t} is at most half of {k} neighbours; need 2 * threshold > neighbours")
    return k, t
