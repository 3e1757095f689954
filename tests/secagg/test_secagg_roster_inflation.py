"""Roster inflation (F3): a malicious server gives one client 2t neighbours to get both its secrets.

The server announces k = 4, t = 3 but gives the victim a roster of 2t = 6 neighbours, split in
halves A and B of t clients. In stage 3 it tells A that the victim survived (A reveals t shares of
its self-mask seed) and B that it dropped (B reveals t shares of its mask key): each request is
valid on its own. With both secrets the server strips every mask from the victim's masked input.
The client's roster check at stage 1 (length <= k and 2t > length) stops this before any share
leaves the client.
"""

import dataclasses
from types import MappingProxyType

import numpy as np
import pytest

from fedlab.secagg import crypto, protocol
from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.driver import simulate_round
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.graph import degree_and_threshold, effective_degree
from fedlab.secagg.messages import (
    NeighbourRoster,
    PublicKeys,
    SecAggParams,
    SecureSum,
    ServerRoster,
    UnmaskRequest,
)
from fedlab.secagg.ring import add_mod, sub_mod
from fedlab.secagg.shamir import Share, reconstruct

VICTIM = 3


@dataclasses.dataclass
class Attack:
    """The malicious server's round: a victim with 2t neighbours, everyone else with k = t + 1."""

    params: SecAggParams
    half_a: list[int]
    half_b: list[int]
    graph: dict[int, frozenset[int]]
    keys: dict[int, tuple]
    public: dict[int, PublicKeys]
    rosters: dict[int, NeighbourRoster]
    source: crypto.RandomSource
    inputs: dict[int, np.ndarray]


def _set_up(params: SecAggParams) -> Attack:
    t, source = params.threshold, seeded_source(b"roster-inflation")
    others = [u for u in range(2 * t + 1) if u != VICTIM]
    half_a, half_b = others[:t], others[t:]
    graph = {VICTIM: frozenset(others)}  # 2t neighbours
    graph |= {u: frozenset(half_b) | {VICTIM} for u in half_a}  # A and B: complete bipartite,
    graph |= {u: frozenset(half_a) | {VICTIM} for u in half_b}  # so t + 1 = k neighbours each
    keys = {u: protocol.client_advertise(params, u, source) for u in sorted(graph)}
    public = {u: advert.keys for u, (_, advert) in keys.items()}
    rosters = {
        u: NeighbourRoster(params.round_id, u, {v: public[v] for v in sorted(graph[u])}) for u in graph
    }
    rng = np.random.default_rng(3)
    inputs = {u: rng.integers(0, params.modulus, params.vector_length, dtype=np.uint64) for u in graph}
    return Attack(params, half_a, half_b, graph, keys, public, rosters, source, inputs)


def _run(attack: Attack, refused: frozenset[int] = frozenset()) -> tuple[list[Share], list[Share], dict]:
    """Play stages 1-3 as the malicious server; return the victim's seed shares, key shares, state.

    Clients in ``refused`` send nothing at stage 1. An unmask request a client refuses gives nothing.
    """
    params, graph, t = attack.params, attack.graph, attack.params.threshold
    shared = {
        u: protocol.client_share_keys(attack.keys[u][0], attack.rosters[u], attack.source)
        for u in sorted(graph)
        if u not in refused
    }
    server_roster = ServerRoster(params, attack.public, MappingProxyType(graph))
    _, deliveries = protocol.server_route_shares(server_roster, [m for _, m in shared.values()])
    masked = {
        u: protocol.client_masked_input(shared[u][0], deliveries[u], attack.inputs[u]) for u in deliveries
    }
    seed_shares: list[Share] = []
    key_shares: list[Share] = []
    for u in attack.half_a:  # "the victim survived"
        request = UnmaskRequest(params.round_id, u, graph[u], frozenset())
        try:
            response = protocol.client_unmask(masked[u][0], request)
        except ProtocolError:
            continue
        seed_shares.append(Share.from_bytes(response.self_mask_shares[VICTIM]))
    for u in attack.half_b:  # "the victim dropped"
        request = UnmaskRequest(params.round_id, u, graph[u] - {VICTIM}, frozenset({VICTIM}))
        try:
            response = protocol.client_unmask(masked[u][0], request)
        except ProtocolError:
            continue
        key_shares.append(Share.from_bytes(response.mask_key_shares[VICTIM]))
    assert len(seed_shares) + len(key_shares) in (0, 2 * t)
    return seed_shares, key_shares, {"masked": masked, "deliveries": deliveries}


def _strip_masks(attack: Attack, seed_shares: list[Share], key_shares: list[Share], seen: dict) -> np.ndarray:
    """Reconstruct b_victim and the victim's mask key; remove every mask from its masked input."""
    params = attack.params
    m, d, t = params.modulus, params.vector_length, params.threshold
    self_seed = reconstruct(seed_shares, threshold=t)
    private = reconstruct(key_shares, threshold=t)
    assert crypto.public_key_of(private) == attack.public[VICTIM].agreement  # the server can check
    view = sub_mod(seen["masked"][VICTIM][1].vector, crypto.expand_mask(self_seed, d, m), m)
    for v in seen["deliveries"][VICTIM].ciphertexts:
        mask = protocol.pairwise_mask(params, VICTIM, private, v, attack.public[v].agreement)
        view = sub_mod(view, mask, m) if v < VICTIM else add_mod(view, mask, m)
    return view


def _params(**change: int) -> SecAggParams:
    return dataclasses.replace(
        SecAggParams(7, 16, 2**32, neighbours=4, threshold=3, graph_seed=bytes(32)), **change
    )


def test_without_the_roster_check_the_attack_recovers_the_victims_input(monkeypatch):
    """The attack is real: skip the client's roster check and the server gets the exact input."""
    monkeypatch.setattr(protocol, "_check_roster", lambda state, roster: None)
    attack = _set_up(_params())
    seed_shares, key_shares, seen = _run(attack)
    assert len(seed_shares) == len(key_shares) == attack.params.threshold
    assert np.array_equal(_strip_masks(attack, seed_shares, key_shares, seen), attack.inputs[VICTIM])


def test_the_inflated_roster_is_refused_at_stage_1_and_the_server_recovers_nothing():
    attack = _set_up(_params())
    victim_state, roster = attack.keys[VICTIM][0], attack.rosters[VICTIM]
    assert len(roster.neighbours) == 6 == 2 * attack.params.threshold > attack.params.neighbours
    with pytest.raises(
        ProtocolError, match=r"^the roster lists 6 neighbours, more than the announced k = 4$"
    ):
        protocol.client_share_keys(victim_state, roster, attack.source)
    # Every other roster is valid (k = t + 1 = 4 neighbours): the round goes on without the victim,
    # which released no EncryptedShares, so nobody holds a share of its secrets.
    seed_shares, key_shares, seen = _run(attack, refused=frozenset({VICTIM}))
    assert all(VICTIM not in d.ciphertexts for d in seen["deliveries"].values())
    assert seed_shares == key_shares == []


def test_a_roster_of_2t_neighbours_is_refused_even_within_the_announced_k():
    """Defence in depth: parameters that skipped validation (2t <= k) still give no 2t roster."""
    attack = _set_up(_params())
    weak = _params(neighbours=6, threshold=4)
    object.__setattr__(weak, "threshold", 3)  # as if built without SecAggParams' own check
    state = dataclasses.replace(attack.keys[VICTIM][0], params=weak)
    roster = dataclasses.replace(attack.rosters[VICTIM], round_id=weak.round_id)
    with pytest.raises(ProtocolError, match=r"at least 2t = 6: two disjoint groups of t"):
        protocol.client_share_keys(state, roster, attack.source)


def test_a_roster_longer_than_k_is_refused_even_below_2t():
    attack = _set_up(_params(neighbours=5, threshold=4))  # 2t = 8 neighbours, k = 5
    state, roster = attack.keys[VICTIM][0], attack.rosters[VICTIM]
    short = NeighbourRoster(roster.round_id, VICTIM, dict(list(roster.neighbours.items())[:6]))
    with pytest.raises(ProtocolError, match="6 neighbours, more than the announced k = 5"):
        protocol.client_share_keys(state, short, attack.source)
    fine = NeighbourRoster(roster.round_id, VICTIM, dict(list(roster.neighbours.items())[:5]))
    _, shares = protocol.client_share_keys(state, fine, attack.source)
    assert set(shares.ciphertexts) == set(fine.neighbours)


def test_params_with_2t_at_most_k_cannot_be_built():
    for k, t in ((4, 2), (6, 3), (10, 5)):
        with pytest.raises(ValueError, match="2 \\* threshold > neighbours"):
            _params(neighbours=k, threshold=t)
    _params(neighbours=5, threshold=3)


# ---- the honest path keeps working ---------------------------------------------------------------


def _plain_sum(inputs, included, modulus):
    total = sum(inputs[u].astype(object) for u in included)
    return np.array([int(v) % modulus for v in total], dtype=np.uint64)


@pytest.mark.parametrize(
    ("n", "k", "t", "lost"),
    [
        (7, 3, 2, {}),
        (9, 3, 2, {}),
        (9, 5, 3, {}),
        (11, 5, 3, {Stage.UNMASK: {4}}),
        (13, 7, 4, {Stage.MASKED_INPUT: {2}}),
        (12, 5, 3, {Stage.ADVERTISE_KEYS: {0}}),  # 11 clients advertise: an odd cohort
        (10, 9, 5, {Stage.ADVERTISE_KEYS: {1}}),  # classic SecAgg, 9 advertise
    ],
)
def test_honest_rounds_with_odd_cohorts_and_odd_k_succeed(h, n, k, t, lost):
    params = h.make_params(k=k, t=t, d=12)
    inputs = h.random_inputs(n, params, seed=n * k)
    result = simulate_round(inputs, params=params, source=seeded_source(b"odd"), dropouts=lost)
    assert isinstance(result, SecureSum), result
    assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))
    advertised = sorted(set(inputs) - lost.get(Stage.ADVERTISE_KEYS, set()))
    source = seeded_source(b"adverts")
    adverts = [protocol.client_advertise(params, u, source)[1] for u in advertised]
    _, rosters = protocol.server_collect_adverts(params, adverts)
    degree = effective_degree(len(advertised), k)
    assert {len(r.neighbours) for r in rosters.values()} == {degree}
    assert degree <= k and 2 * t > degree


@pytest.mark.parametrize("neighbours", [3, 5, 7])
@pytest.mark.parametrize("sampled", [10, 11, 15])
def test_for_clients_announces_a_degree_every_advertising_subset_honours(sampled, neighbours):
    params = SecAggParams.for_clients(
        sampled, round_id=3, vector_length=8, modulus=2**20, graph_seed=bytes(32), neighbours=neighbours
    )
    assert params.neighbours in (neighbours - 1, neighbours + 1) and 2 * params.threshold > params.neighbours
    rng = np.random.default_rng(sampled + neighbours)
    inputs = {u: rng.integers(0, params.modulus, 8, dtype=np.uint64) for u in range(sampled)}
    for lost_at_start in ({}, {Stage.ADVERTISE_KEYS: {0}}, {Stage.ADVERTISE_KEYS: {0, 5}}):
        result = simulate_round(inputs, params=params, source=seeded_source(b"fc"), dropouts=lost_at_start)
        assert isinstance(result, SecureSum), result
        assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))


def test_degree_and_threshold_always_gives_a_valid_announcement():
    for n in range(2, 41):
        for neighbours in (None, *range(1, 42, 2), *range(2, 42, 6)):
            for threshold in (None, *range(2, 25)):
                try:
                    k, t = degree_and_threshold(n, neighbours=neighbours, threshold=threshold)
                except ValueError:
                    # Only a given pair with 2t <= k (which the config refuses) is rejected.
                    assert neighbours is not None and threshold is not None
                    assert 2 * threshold <= neighbours
                    continue
                assert k <= n - 1 and (k % 2 == 0 or k == n - 1)
                assert t <= k and (2 * t > k)
                if threshold is not None and threshold <= k:
                    assert t == threshold  # a given threshold is kept when it fits
                if neighbours is not None:
                    assert abs(k - min(neighbours, n - 1)) <= 1
                for advertised in range(2, n + 1):  # however many clients advertise
                    assert effective_degree(advertised, k) == min(k, advertised - 1)
