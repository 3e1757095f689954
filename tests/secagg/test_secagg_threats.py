"""Each claim of the threat model in fedlab.secagg's docstring, attacked."""

import dataclasses

import numpy as np
import pytest
from scipy import stats

from fedlab.secagg import crypto, protocol
from fedlab.secagg.errors import (
    BothSharesRequestedError,
    DecryptionError,
    ProtocolError,
    RoundAbortedError,
    ShamirError,
)
from fedlab.secagg.messages import NeighbourRoster, PublicKeys, UnmaskRequest, UnmaskResponse
from fedlab.secagg.ring import add_mod, sub_mod
from fedlab.secagg.shamir import SHARE_BYTES, Share, reconstruct


def _uniform_pvalue(vector, modulus, bins=64):
    counts = np.bincount((vector.astype(np.float64) * bins / modulus).astype(np.int64), minlength=bins)
    return stats.chisquare(counts).pvalue


def _decrypt_as(tr, holder, owner):
    """What a corrupted ``holder`` can decrypt from ``owner``: both of its shares of owner's secrets."""
    params = tr.params
    own_keys, roster = tr.keys[holder][0], tr.rosters[holder]
    secret = crypto.agree(own_keys.encryption.private, roster.neighbours[owner].encryption)
    key = crypto.derive_key(
        secret, label=crypto.SHARE_KEY_LABEL, context=crypto.pair_context(params.round_id, holder, owner)
    )
    ct = tr.deliveries[holder].ciphertexts[owner]
    plain = crypto.decrypt_share(key, ct, sender=owner, receiver=holder, round_id=params.round_id)
    return Share.from_bytes(plain[:SHARE_BYTES]), Share.from_bytes(plain[SHARE_BYTES:])


@pytest.fixture
def round_(h):
    params = h.make_params(k=6, t=4, d=4096, m=2**16)
    inputs = {u: np.zeros(params.vector_length, dtype=np.uint64) for u in range(12)}  # far from uniform
    return h.run_transcript(inputs, params, unmask=False), inputs


def test_one_masked_vector_is_uniform_even_for_an_all_zero_input(round_):
    tr, _ = round_
    for u in (0, 5):
        assert _uniform_pvalue(tr.masked_inputs[u].vector, tr.params.modulus) > 1e-3


def test_a_request_for_both_shares_of_one_neighbour_is_refused(round_):
    tr, _ = round_
    honest = tr.requests[0]
    v = next(iter(honest.self_mask_of))
    greedy = dataclasses.replace(honest, mask_key_of=honest.mask_key_of | {v})
    with pytest.raises(BothSharesRequestedError, match=str(v)):
        protocol.client_unmask(tr.masked_states[0], greedy)
    protocol.client_unmask(tr.masked_states[0], honest)  # the honest request is answered


def test_other_bad_requests_are_refused(round_):
    tr, _ = round_
    state, request = tr.masked_states[0], tr.requests[0]
    stranger = next(u for u in range(12) if u != 0 and u not in state.received)
    bad_requests = [
        dataclasses.replace(request, mask_key_of=request.mask_key_of | {stranger}),  # not a neighbour
        dataclasses.replace(request, receiver=1),
        dataclasses.replace(request, round_id=request.round_id + 1),
        UnmaskRequest(request.round_id, 0, frozenset(sorted(request.self_mask_of)[:3]), frozenset()),  # < t
    ]
    for bad in bad_requests:
        with pytest.raises(ProtocolError):
            protocol.client_unmask(state, bad)


def test_tampered_replayed_and_rerouted_ciphertexts_are_rejected(h, round_):
    tr, inputs = round_
    state, request = tr.masked_states[0], tr.requests[0]
    v = min(request.self_mask_of)

    def answer_with(ciphertext, sender=v, target=state):
        forged = dataclasses.replace(target, received={**target.received, sender: ciphertext})
        return protocol.client_unmask(forged, dataclasses.replace(request, receiver=target.client_id))

    tampered = bytearray(state.received[v])
    tampered[30] ^= 0x80
    with pytest.raises(DecryptionError):
        answer_with(bytes(tampered))
    # Replay: the same pair's ciphertext from another round.
    other = h.run_transcript(inputs, dataclasses.replace(tr.params, round_id=8), unmask=False)
    with pytest.raises(DecryptionError):
        answer_with(other.masked_states[0].received[v])
    # Re-routing: a ciphertext v encrypted for another neighbour w, presented to 0 as from v.
    w = next(u for u in tr.deliveries if u != 0 and v in tr.deliveries[u].ciphertexts)
    with pytest.raises(DecryptionError):
        answer_with(tr.deliveries[w].ciphertexts[v])
    # Mis-attribution: v's ciphertext presented as coming from another neighbour x.
    x = max(request.self_mask_of)
    with pytest.raises(DecryptionError):
        answer_with(state.received[v], sender=x)


def test_t_minus_one_colluders_and_the_server_cannot_recover_an_honest_input(round_):
    tr, _ = round_
    params, honest = tr.params, 0
    colluders = sorted(tr.shared[honest][0].neighbours)[: params.threshold - 1]
    stolen = [_decrypt_as(tr, c, honest) for c in colluders]
    seed_shares, key_shares = [s for s, _ in stolen], [k for _, k in stolen]
    for shares in (seed_shares, key_shares):
        with pytest.raises(ShamirError):
            reconstruct(shares, threshold=params.threshold)
        with pytest.raises(ShamirError):  # pretending t - 1 suffice gives no 32-byte secret
            reconstruct(shares, threshold=params.threshold - 1)
    # The server plus colluders strip every mask they know: the rest still looks uniform.
    view = tr.masked_inputs[honest].vector
    for c in colluders:
        c_state = tr.shared[c][0]
        mask = protocol.pairwise_mask(
            params, c, c_state.agreement.private, honest, c_state.neighbours[honest].agreement
        )
        view = sub_mod(view, mask, params.modulus) if c < honest else add_mod(view, mask, params.modulus)
    assert _uniform_pvalue(view, params.modulus) > 1e-3
    # With t shares (one more colluder) the seed would fall: the threshold is exactly the line.
    one_more = sorted(tr.shared[honest][0].neighbours)[params.threshold - 1]
    seed_shares.append(_decrypt_as(tr, one_more, honest)[0])
    assert reconstruct(seed_shares, threshold=params.threshold) == tr.shared[honest][0].self_seed


def test_a_server_lying_about_a_dropout_cannot_collect_t_shares_of_both_secrets(h):
    """The server tells half of v's neighbours that v survived and the other half that it dropped.

    With 2t > k (required by SecAggParams; rosters of 2t or more are refused, see
    test_secagg_roster_inflation) each half holds fewer than t shares.
    """
    threshold = 4
    params = h.make_params(k=6, t=threshold, d=64, m=2**16)
    inputs = h.random_inputs(14, params, seed=4)
    tr = h.run_transcript(inputs, params, unmask=False)
    v = 0
    neighbours = sorted(tr.shared[v][0].neighbours)
    seed_shares, key_shares = [], []
    for i, u in enumerate(neighbours):
        others = frozenset(tr.masked_states[u].received) - {v}
        claim_alive = i % 2 == 0
        request = UnmaskRequest(
            params.round_id, u, others | {v} if claim_alive else others, frozenset() if claim_alive else {v}
        )
        response = protocol.client_unmask(tr.masked_states[u], request)
        if claim_alive:
            seed_shares.append(Share.from_bytes(response.self_mask_shares[v]))
        else:
            key_shares.append(Share.from_bytes(response.mask_key_shares[v]))
    assert len(seed_shares) == len(key_shares) == 3  # each neighbour answered once
    for shares in (seed_shares, key_shares):
        with pytest.raises(ShamirError, match="need 4 shares"):
            reconstruct(shares, threshold=threshold)
    with pytest.raises(ValueError, match="2 \\* threshold > neighbours"):
        h.make_params(k=6, t=3)  # t <= k / 2, where this lie would win, cannot be announced


def test_documented_limit_substituted_encryption_keys_let_the_server_read_shares(h):
    """Not protected (threat model): keys are not signed, so a malicious server can sit in the middle.

    It replaces the encryption keys of t of the victim's neighbours with its own: the roster stays
    valid, and each ciphertext to a substituted key gives it one share of both secrets.
    """
    params = h.make_params(k=6, t=4, d=16, m=2**16)
    source = crypto.seeded_source(b"mitm")
    keys = {u: protocol.client_advertise(params, u, source) for u in range(12)}
    _, rosters = protocol.server_collect_adverts(params, [a for _, a in keys.values()])
    victim, roster = 0, rosters[0]
    fakes = {v: crypto.generate_keypair(source) for v in sorted(roster.neighbours)[: params.threshold]}
    forged = {
        v: PublicKeys(pk.agreement, fakes[v].public) if v in fakes else pk
        for v, pk in roster.neighbours.items()
    }
    state, shares = protocol.client_share_keys(
        keys[victim][0], NeighbourRoster(roster.round_id, victim, forged), source
    )
    victim_key = keys[victim][1].keys.encryption
    stolen = []
    for v, fake in fakes.items():
        secret = crypto.agree(fake.private, victim_key)
        key = crypto.derive_key(
            secret, label=crypto.SHARE_KEY_LABEL, context=crypto.pair_context(params.round_id, victim, v)
        )
        plain = crypto.decrypt_share(
            key, shares.ciphertexts[v], sender=victim, receiver=v, round_id=params.round_id
        )
        stolen.append((Share.from_bytes(plain[:SHARE_BYTES]), Share.from_bytes(plain[SHARE_BYTES:])))
    assert reconstruct([s for s, _ in stolen], threshold=params.threshold) == state.self_seed
    assert (
        reconstruct([k for _, k in stolen], threshold=params.threshold) == keys[victim][0].agreement.private
    )


def test_a_late_masked_input_stays_hidden_after_its_mask_key_is_revealed(h):
    params = h.make_params(k=6, t=4, d=4096, m=2**16)
    inputs = {u: np.zeros(params.vector_length, dtype=np.uint64) for u in range(12)}
    late = 3
    tr = h.run_transcript(inputs, params, late=[late])
    assert late not in tr.result.included
    responses = list(tr.responses.values())
    key_shares = [Share.from_bytes(r.mask_key_shares[late]) for r in responses if late in r.mask_key_shares]
    private = reconstruct(key_shares, threshold=params.threshold)
    assert crypto.public_key_of(private) == tr.keys[late][0].agreement.public
    view = tr.masked_inputs[late].vector  # arrives after unmasking; strip all pairwise masks
    for u, keys in tr.shared[late][0].neighbours.items():
        mask = protocol.pairwise_mask(params, late, private, u, keys.agreement)
        view = sub_mod(view, mask, params.modulus) if u < late else add_mod(view, mask, params.modulus)
    assert _uniform_pvalue(view, params.modulus) > 1e-3  # still hidden by b_u
    assert not any(late in r.self_mask_shares for r in responses)  # b_late was never requested


def test_corrupted_shares_abort_the_round_instead_of_releasing_a_wrong_sum(h):
    params = h.make_params(k=6, t=4, d=32, m=2**16)
    inputs = h.random_inputs(12, params, seed=7)
    tr = h.run_transcript(inputs, params, late=[2], unmask=False)
    responses = {u: protocol.client_unmask(tr.masked_states[u], r) for u, r in tr.requests.items()}
    holder = next(u for u, r in responses.items() if 2 in r.mask_key_shares)
    good = Share.from_bytes(responses[holder].mask_key_shares[2])
    crafted = Share(good.x, good.y + 1).to_bytes()  # still a 32-byte "key", but the wrong one
    bad = dataclasses.replace(responses[holder], mask_key_shares={2: crafted})
    others = [r for u, r in responses.items() if u != holder]
    with pytest.raises(RoundAbortedError, match="inconsistent"):
        protocol.server_unmask(tr.server_masked, [bad, *others])
    survivor = next(iter(responses[holder].self_mask_shares))
    garbled = Share(good.x, int.from_bytes(crypto.seeded_source(b"x")(65), "big")).to_bytes()
    bad = dataclasses.replace(
        responses[holder], self_mask_shares={**responses[holder].self_mask_shares, survivor: garbled}
    )
    order = sorted([bad, *others], key=lambda r: r.sender)
    with pytest.raises(RoundAbortedError, match="self-mask seed"):
        protocol.server_unmask(tr.server_masked, order)


def test_a_roster_that_reflects_our_own_keys_or_is_misaddressed_is_refused(round_):
    tr, _ = round_
    state, roster = tr.keys[0][0], tr.rosters[0]
    v = next(iter(roster.neighbours))
    own = PublicKeys(state.agreement.public, state.encryption.public)
    source = crypto.seeded_source(b"r")
    for bad in (
        NeighbourRoster(roster.round_id, 0, {**roster.neighbours, v: own}),
        NeighbourRoster(roster.round_id, 1, roster.neighbours),
        NeighbourRoster(roster.round_id + 1, 0, roster.neighbours),
        NeighbourRoster(roster.round_id, 0, dict(list(roster.neighbours.items())[:3])),  # fewer than t
    ):
        with pytest.raises(ProtocolError):
            protocol.client_share_keys(state, bad, source)


def test_states_and_messages_are_frozen_and_drop_secrets_once_used(round_):
    tr, _ = round_
    message = tr.masked_inputs[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.sender = 1
    with pytest.raises(ValueError):
        message.vector[0] = 1
    with pytest.raises(TypeError):
        tr.deliveries[0].ciphertexts[99] = b""
    masked_state = tr.masked_states[0]
    fields = {f.name for f in dataclasses.fields(masked_state)}
    assert not fields & {"self_seed", "agreement", "encryption"}  # b_u and the private keys are gone
    response = UnmaskResponse(1, 0, {}, {})
    with pytest.raises(TypeError):
        response.self_mask_shares[1] = b""


def test_documented_limit_a_second_request_on_the_same_state_is_answered(round_):
    """Not protected (threat model): the transport must discard the state after one answer."""
    tr, _ = round_
    state, request = tr.masked_states[0], tr.requests[0]
    v = min(request.self_mask_of)
    first = protocol.client_unmask(state, request)
    second = protocol.client_unmask(
        state, dataclasses.replace(request, self_mask_of=request.self_mask_of - {v}, mask_key_of={v})
    )
    assert v in first.self_mask_shares and v in second.mask_key_shares
