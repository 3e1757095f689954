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

    A k-regular graph needs n * k even, so for odd n an odd k is raised by one.

    >>> effective_degree(10, 4), effective_degree(9, 3), effective_degree(5, 100)
    (4, 4, 4)
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    degree = min(neighbours, num_clients - 1)
    if degree % 2 == 1 and num_clients % 2 == 1:
        degree += 1
    return max(degree, 0)


def _order(ids: Collection[int], seed: bytes) -> list[int]:
    if len(seed) != 32:
        raise ValueError(f"the graph seed must be 32 bytes, got {len(seed)}")
    return sorted(ids, key=lambda i: hashlib.sha256(seed + i.to_bytes(8, "big")).digest())


def neighbour_graph(ids: Collection[int], *, neighbours: int, seed: bytes) -> Graph:
    """Return the SecAgg+ neighbour graph of ``ids``: k-regular (k = effective degree), random.

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
