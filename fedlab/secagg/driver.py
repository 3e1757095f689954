"""A transport-free, in-process driver of one SecAgg+ round (tests, simulation, benchmarks).

It passes messages between the pure stage functions exactly as a transport would, dropping the
messages of clients listed in ``dropouts`` for that stage and every later one.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy.typing as npt

from fedlab.secagg import protocol
from fedlab.secagg.crypto import RandomSource
from fedlab.secagg.errors import RoundAbortedError, Stage
from fedlab.secagg.messages import AbortedRound, RoundResult, SecAggParams


def _lost(dropouts: Mapping[Stage, Collection[int]], stage: Stage) -> frozenset[int]:
    """Return the clients that dropped at ``stage`` or earlier."""
    return frozenset(c for s, clients in dropouts.items() if s <= stage for c in clients)


def simulate_round(
    inputs: Mapping[int, npt.ArrayLike],
    *,
    params: SecAggParams,
    source: RandomSource,
    dropouts: Mapping[Stage, Collection[int]] | None = None,
) -> RoundResult:
    """Run one SecAgg+ round in-process and return the secure sum or the clean abort.

    Args:
        inputs: Client id -> vector of ``params.vector_length`` residues mod ``params.modulus``
            (encode floats with :mod:`fedlab.secagg.encoding` first).
        params: The round's public parameters.
        source: Randomness for every client's keys, seeds and nonces (``os.urandom``, or
            :func:`~fedlab.secagg.crypto.seeded_source` for reproducible runs).
        dropouts: Stage -> clients whose message of that stage (and every later one) is lost.

    Returns:
        :class:`~fedlab.secagg.messages.SecureSum` (sum mod m of the included clients' inputs)
        or :class:`~fedlab.secagg.messages.AbortedRound` carrying the stage and reason.

    >>> from fedlab.secagg.crypto import seeded_source
    >>> p = SecAggParams(round_id=1, vector_length=2, modulus=2**16, neighbours=4, threshold=3,
    ...                  graph_seed=bytes(32))
    >>> x = {i: [i, 1] for i in range(6)}
    >>> r = simulate_round(x, params=p, source=seeded_source(b"doc"), dropouts={Stage.UNMASK: {0}})
    >>> r.total.tolist(), sorted(r.included)
    ([15, 6], [0, 1, 2, 3, 4, 5])
    """
    lost = dropouts or {}
    try:
        keys = {
            u: protocol.client_advertise(params, u, source)
            for u in sorted(inputs)
            if u not in _lost(lost, Stage.ADVERTISE_KEYS)
        }
        roster, rosters = protocol.server_collect_adverts(params, [advert for _, advert in keys.values()])

        alive = sorted(set(rosters) - _lost(lost, Stage.SHARE_KEYS))
        shared = {u: protocol.client_share_keys(keys[u][0], rosters[u], source) for u in alive}
        server_shared, deliveries = protocol.server_route_shares(roster, [m for _, m in shared.values()])

        alive = sorted(set(deliveries) - _lost(lost, Stage.MASKED_INPUT))
        masked = {u: protocol.client_masked_input(shared[u][0], deliveries[u], inputs[u]) for u in alive}
        server_masked, requests = protocol.server_collect_masked(
            server_shared, [m for _, m in masked.values()]
        )

        alive = sorted(set(requests) - _lost(lost, Stage.UNMASK))
        responses = [protocol.client_unmask(masked[u][0], requests[u]) for u in alive]
        return protocol.server_unmask(server_masked, responses)
    except RoundAbortedError as abort:
        return AbortedRound(params.round_id, abort.stage, abort.reason)
