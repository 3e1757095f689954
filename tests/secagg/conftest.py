"""Helpers for the secure-aggregation tests: parameters and a full transcript of one round."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from fedlab.secagg import protocol
from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.messages import (
    ClientMasked,
    MaskedInput,
    SecAggParams,
    SecureSum,
    ServerMasked,
    UnmaskRequest,
    UnmaskResponse,
)


def make_params(
    *,
    k: int,
    t: int,
    d: int = 64,
    m: int = 2**32,
    round_id: int = 7,
    seed: bytes = b"graph",
    min_clients: int = 2,
) -> SecAggParams:
    graph_seed = seeded_source(seed)(32)
    return SecAggParams(round_id, d, m, k, t, graph_seed, min_clients)


def random_inputs(n: int, params: SecAggParams, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, params.modulus, params.vector_length, dtype=np.uint64) for i in range(n)}


@dataclass
class Transcript:
    """Everything every party saw in a round run stage by stage (for attack tests)."""

    params: SecAggParams
    keys: dict[int, Any] = field(default_factory=dict)
    rosters: dict[int, Any] = field(default_factory=dict)
    shared: dict[int, Any] = field(default_factory=dict)
    deliveries: dict[int, Any] = field(default_factory=dict)
    masked_states: dict[int, ClientMasked] = field(default_factory=dict)
    masked_inputs: dict[int, MaskedInput] = field(default_factory=dict)
    server_masked: ServerMasked | None = None
    requests: dict[int, UnmaskRequest] = field(default_factory=dict)
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)
    result: SecureSum | None = None


def run_transcript(
    inputs: Mapping[int, np.ndarray],
    params: SecAggParams,
    *,
    late: Collection[int] = (),
    source_seed: bytes = b"clients",
    unmask: bool = True,
) -> Transcript:
    """Run all stages; clients in ``late`` compute a masked input the server never receives in time."""
    source = seeded_source(source_seed)
    tr = Transcript(params)
    for u in sorted(inputs):
        tr.keys[u] = protocol.client_advertise(params, u, source)
    roster, tr.rosters = protocol.server_collect_adverts(params, [a for _, a in tr.keys.values()])
    for u in sorted(tr.rosters):
        tr.shared[u] = protocol.client_share_keys(tr.keys[u][0], tr.rosters[u], source)
    server_shared, tr.deliveries = protocol.server_route_shares(roster, [m for _, m in tr.shared.values()])
    for u in sorted(tr.deliveries):
        tr.masked_states[u], tr.masked_inputs[u] = protocol.client_masked_input(
            tr.shared[u][0], tr.deliveries[u], inputs[u]
        )
    on_time = [m for u, m in tr.masked_inputs.items() if u not in late]
    tr.server_masked, tr.requests = protocol.server_collect_masked(server_shared, on_time)
    if unmask:
        for u in sorted(tr.requests):
            tr.responses[u] = protocol.client_unmask(tr.masked_states[u], tr.requests[u])
        tr.result = protocol.server_unmask(tr.server_masked, list(tr.responses.values()))
    return tr


@pytest.fixture
def h() -> SimpleNamespace:
    """The helpers: make_params, random_inputs, run_transcript."""
    return SimpleNamespace(
        make_params=make_params, random_inputs=random_inputs, run_transcript=run_transcript
    )
