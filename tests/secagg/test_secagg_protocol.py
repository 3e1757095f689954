"""SecAgg+ rounds: masks cancel under dropouts at every stage; clean aborts below threshold."""

import dataclasses

import numpy as np
import pytest

from fedlab.secagg import (
    AbortedRound,
    FixedPointCodec,
    ProtocolError,
    SecAggParams,
    SecureSum,
    Stage,
    client_advertise,
    decode_sum,
    encode,
    seeded_source,
    server_collect_adverts,
    simulate_round,
)
from fedlab.secagg.errors import RoundAbortedError
from fedlab.secagg.graph import neighbour_graph


def _plain_sum(inputs, included, modulus):
    total = 0
    for u in included:
        total = total + inputs[u].astype(object)
    return np.array([int(v) % modulus for v in total], dtype=np.uint64)


def _random_dropouts(rng, clients, per_stage):
    remaining = list(clients)
    dropouts = {}
    for stage in Stage:
        chosen = rng.choice(remaining, size=per_stage[stage], replace=False).tolist()
        dropouts[stage] = set(chosen)
        remaining = [c for c in remaining if c not in chosen]
    return dropouts


def _expected_included(clients, dropouts):
    lost = set().union(
        *(dropouts.get(s, set()) for s in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT))
    )
    return frozenset(clients) - lost


@pytest.mark.parametrize("trial", range(6))
def test_secure_sum_equals_plain_sum_with_dropouts_at_every_stage(h, trial):
    rng = np.random.default_rng(trial)
    n = 24
    params = h.make_params(k=10, t=6, d=257, m=[2**32, 2**20, 1_000_003][trial % 3], seed=b"g%d" % trial)
    inputs = h.random_inputs(n, params, seed=trial)
    # Dropping at most 4 clients in all keeps every survivor at >= 6 of its 10 neighbours.
    sizes = rng.multinomial(4, [0.25] * 4)
    dropouts = _random_dropouts(rng, list(inputs), dict(zip(Stage, sizes.tolist(), strict=True)))
    result = simulate_round(inputs, params=params, source=seeded_source(b"t%d" % trial), dropouts=dropouts)
    assert isinstance(result, SecureSum), result
    assert result.included == _expected_included(inputs, dropouts)
    assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))


@pytest.mark.parametrize("stage", list(Stage))
def test_dropouts_at_each_single_stage_are_tolerated(h, stage):
    params = h.make_params(k=8, t=5, d=33)
    inputs = h.random_inputs(16, params, seed=int(stage))
    dropouts = {stage: {1, 6, 11}}
    result = simulate_round(inputs, params=params, source=seeded_source(b"s"), dropouts=dropouts)
    assert isinstance(result, SecureSum), result
    assert result.included == _expected_included(inputs, dropouts)
    assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))


def test_heavy_random_dropouts_give_the_right_sum_or_a_clean_abort_never_a_wrong_sum(h):
    rng = np.random.default_rng(99)
    outcomes = {"sum": 0, "abort": 0}
    for trial in range(25):
        params = h.make_params(k=6, t=4, d=16, m=2**16, seed=b"h%d" % trial)
        inputs = h.random_inputs(14, params, seed=100 + trial)
        sizes = rng.integers(0, 3, size=4).tolist()
        dropouts = _random_dropouts(rng, list(inputs), dict(zip(Stage, sizes, strict=True)))
        result = simulate_round(
            inputs, params=params, source=seeded_source(b"h%d" % trial), dropouts=dropouts
        )
        if isinstance(result, AbortedRound):
            outcomes["abort"] += 1
            assert "live neighbours" in result.reason or "clients remain" in result.reason
            continue
        outcomes["sum"] += 1
        assert result.included == _expected_included(inputs, dropouts)
        assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))
    assert outcomes["sum"] > 0 and outcomes["abort"] > 0


@pytest.mark.parametrize("n", [3, 6, 9])
def test_classic_secagg_with_k_of_n_minus_one(h, n):
    params = h.make_params(k=n - 1, t=max(2, n // 2 + 1), d=20)
    inputs = h.random_inputs(n, params, seed=n)
    result = simulate_round(inputs, params=params, source=seeded_source(b"c"), dropouts={})
    assert isinstance(result, SecureSum)
    assert result.included == frozenset(range(n))
    assert np.array_equal(result.total, _plain_sum(inputs, range(n), params.modulus))
    if n >= 9:
        dropped = {Stage.MASKED_INPUT: {0}, Stage.UNMASK: {1}}
        result = simulate_round(inputs, params=params, source=seeded_source(b"c"), dropouts=dropped)
        assert isinstance(result, SecureSum) and 0 not in result.included and 1 in result.included
        assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))


def test_float_updates_through_encoding_sum_within_the_quantization_bound(h):
    n, d = 20, 500
    codec = FixedPointCodec.for_sum(bits=24, clip=0.5, max_summands=n)
    params = h.make_params(k=8, t=5, d=d, m=codec.modulus)
    rng = np.random.default_rng(5)
    floats = {i: rng.normal(0, 0.3, d) for i in range(n)}
    encoded = {i: encode(x, codec, rng=rng) for i, x in floats.items()}
    dropouts = {Stage.SHARE_KEYS: {3}, Stage.MASKED_INPUT: {7}, Stage.UNMASK: {9}}
    result = simulate_round(
        {i: e.values for i, e in encoded.items()},
        params=params,
        source=seeded_source(b"f"),
        dropouts=dropouts,
    )
    assert isinstance(result, SecureSum)
    included = sorted(result.included)
    decoded = decode_sum(result.total, codec, num_summands=len(included))
    expected = np.sum([np.clip(floats[i], -0.5, 0.5) for i in included], axis=0)
    assert np.max(np.abs(decoded - expected)) <= codec.quantization_bound(len(included))
    assert sum(encoded[i].clipped for i in included) > 0  # some values were clipped, and counted


def _neighbours_of(params, clients, u):
    return sorted(neighbour_graph(clients, neighbours=params.neighbours, seed=params.graph_seed)[u])


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
def test_below_threshold_the_round_aborts_cleanly_with_a_reason(h, stage):
    params = h.make_params(k=4, t=3, d=10)
    inputs = h.random_inputs(10, params, seed=1)
    victim_neighbours = _neighbours_of(params, list(inputs), 0)
    dropouts = {stage: set(victim_neighbours[:2])}  # client 0 keeps 2 < 3 live neighbours
    result = simulate_round(inputs, params=params, source=seeded_source(b"a"), dropouts=dropouts)
    assert isinstance(result, AbortedRound)
    assert result.stage == stage and result.round_id == params.round_id
    assert "live neighbours" in result.reason and "threshold is 3" in result.reason
    assert not hasattr(result, "total")


def test_too_few_clients_abort_at_advertise_and_min_clients_is_enforced(h):
    params = h.make_params(k=4, t=3, d=10)
    inputs = h.random_inputs(6, params, seed=2)
    result = simulate_round(
        inputs, params=params, source=seeded_source(b"a"), dropouts={Stage.ADVERTISE_KEYS: {0, 1, 2}}
    )
    assert isinstance(result, AbortedRound) and result.stage == Stage.ADVERTISE_KEYS
    assert "below threshold" in result.reason
    strict = dataclasses.replace(params, min_clients=6)
    result = simulate_round(
        inputs, params=strict, source=seeded_source(b"a"), dropouts={Stage.MASKED_INPUT: {5}}
    )
    assert isinstance(result, AbortedRound) and result.stage == Stage.MASKED_INPUT
    assert "5 clients remain" in result.reason


def test_an_abort_at_masked_input_releases_no_unmask_request(h):
    """Aborting before stage 3 means no client is ever asked for a share: nothing is revealed."""
    params = h.make_params(k=4, t=3, d=10)
    inputs = h.random_inputs(10, params, seed=3)
    with pytest.raises(RoundAbortedError) as info:
        h.run_transcript(inputs, params, late=_neighbours_of(params, list(inputs), 0)[:2])
    assert info.value.stage == Stage.MASKED_INPUT


def test_params_are_validated(h):
    good = h.make_params(k=4, t=3)
    for change in (
        dict(threshold=1),
        dict(threshold=5),
        dict(threshold=2),  # 2t <= k: a roster of 2t neighbours would reveal both secrets
        dict(modulus=1),
        dict(modulus=2**63),
        dict(graph_seed=b"short"),
        dict(min_clients=1),
        dict(round_id=-1),
    ):
        with pytest.raises(ValueError):
            dataclasses.replace(good, **change)
    p = SecAggParams.for_clients(1000, round_id=1, vector_length=1, modulus=2**32, graph_seed=bytes(32))
    assert (p.neighbours, p.threshold) == (30, 16)


def test_inputs_must_be_residues_of_the_right_length(h):
    params = h.make_params(k=2, t=2, d=4, m=2**8)
    good = {i: np.zeros(4, dtype=np.int64) for i in range(4)}
    for bad in (np.zeros(3, dtype=np.int64), np.full(4, 256), np.full(4, -1), np.zeros(4)):
        with pytest.raises(ValueError):
            simulate_round({**good, 0: bad}, params=params, source=seeded_source(b"v"))


def test_a_round_of_a_hundred_clients_applies_masks_linearly_in_clients(h, monkeypatch):
    # Expanding masks is the protocol's cost. Each client applies its self mask and one pairwise
    # mask per neighbour; the server removes the survivors' self masks and the dropped clients'
    # pairwise masks: at most 2 N (k + 1) in all, where an O(N^2) unmasking would apply about
    # N^2 = 10^4. (Timings: benchmarks/secagg.py.)
    from fedlab.secagg import crypto

    applied: list[int] = []
    apply = crypto.apply_masks

    def counted(vector, masks, modulus):
        applied.append(len(masks))
        return apply(vector, masks, modulus)

    monkeypatch.setattr(crypto, "apply_masks", counted)
    params = h.make_params(k=20, t=11, d=10_000)
    inputs = h.random_inputs(100, params, seed=0)
    rng = np.random.default_rng(0)
    dropouts = _random_dropouts(
        rng,
        list(inputs),
        {Stage.ADVERTISE_KEYS: 2, Stage.SHARE_KEYS: 2, Stage.MASKED_INPUT: 3, Stage.UNMASK: 3},
    )
    result = simulate_round(inputs, params=params, source=seeded_source(b"fast"), dropouts=dropouts)
    assert isinstance(result, SecureSum)
    assert np.array_equal(result.total, _plain_sum(inputs, result.included, params.modulus))
    assert 100 <= sum(applied) <= 2 * 100 * (params.neighbours + 1), sum(applied)


def test_wrong_round_messages_are_refused(h):
    params = h.make_params(k=2, t=2, d=4)
    source = seeded_source(b"r")
    adverts = [client_advertise(params, u, source)[1] for u in range(3)]
    stale = client_advertise(dataclasses.replace(params, round_id=6), 3, source)[1]
    with pytest.raises(ProtocolError, match="round 6"):
        server_collect_adverts(params, [*adverts, stale])
    with pytest.raises(ProtocolError, match="two"):
        server_collect_adverts(params, [*adverts, adverts[0]])
