"""The SecAgg+ stages as pure functions over frozen states and frozen messages.

Client side: :func:`client_advertise` (0), :func:`client_share_keys` (1),
:func:`client_masked_input` (2), :func:`client_unmask` (3). Server side:
:func:`server_collect_adverts` (0), :func:`server_route_shares` (1), :func:`server_collect_masked`
(2), :func:`server_unmask` (3). Each server function takes the messages that arrived before the
stage's timeout (the transport applies timeouts); a client whose message is missing has dropped.
A server function raises :class:`RoundAbortedError` when too few clients remain; it then reveals nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import numpy.typing as npt

from fedlab.secagg import crypto
from fedlab.secagg.crypto import RandomSource
from fedlab.secagg.errors import (
    BothSharesRequestedError,
    ProtocolError,
    RoundAbortedError,
    ShamirError,
    Stage,
)
from fedlab.secagg.graph import Graph, effective_degree, neighbour_graph
from fedlab.secagg.messages import (
    ClientKeys,
    ClientMasked,
    ClientShared,
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    NeighbourRoster,
    PublicKeys,
    SecAggParams,
    SecureSum,
    ServerMasked,
    ServerRoster,
    ServerShared,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedlab.secagg.ring import Vector, as_residues, sum_mod
from fedlab.secagg.shamir import SHARE_BYTES, Share, reconstruct, split

# ---- helpers shared by both sides --------------------------------------------------------------


def _pair_keys(
    params: SecAggParams, label: bytes, own_id: int, own_private: bytes, peers: Mapping[int, bytes]
) -> dict[int, bytes]:
    order = sorted(peers)
    secrets = crypto.agree_many(own_private, [peers[v] for v in order])
    return {
        v: crypto.derive_key(secret, label=label, context=crypto.pair_context(params.round_id, own_id, v))
        for v, secret in zip(order, secrets, strict=True)
    }


def pairwise_seeds(
    params: SecAggParams, own_id: int, own_private: bytes, peers: Mapping[int, bytes]
) -> dict[int, bytes]:
    """Return the pairwise mask seeds s_uv with each peer (peer id -> its agreement public key).

    Either side of a pair gets the same seed: HKDF(X25519(sk_u, pk_v), mask-seed label, round, pair).
    """
    return _pair_keys(params, crypto.MASK_SEED_LABEL, own_id, own_private, peers)


def pairwise_mask(
    params: SecAggParams, own_id: int, own_private: bytes, peer_id: int, peer_public: bytes
) -> Vector:
    """Return PRG(s_uv), the mask shared by ``own_id`` and ``peer_id`` (same from either side)."""
    seed = pairwise_seeds(params, own_id, own_private, {peer_id: peer_public})[peer_id]
    return crypto.expand_mask(seed, params.vector_length, params.modulus)


def _check_round(params: SecAggParams, round_id: int, what: str) -> None:
    if round_id != params.round_id:
        raise ProtocolError(f"{what} belongs to round {round_id}, this is round {params.round_id}")


def _senders(
    params: SecAggParams,
    messages: Iterable[KeyAdvert | EncryptedShares | MaskedInput | UnmaskResponse],
    allowed: Collection[int],
    stage: Stage,
) -> frozenset[int]:
    seen: set[int] = set()
    for message in messages:
        _check_round(params, message.round_id, f"a stage {stage.name} message")
        if message.sender in seen:
            raise ProtocolError(f"client {message.sender} sent two stage {stage.name} messages")
        if message.sender not in allowed:
            raise ProtocolError(f"client {message.sender} is not expected at stage {stage.name}")
        seen.add(message.sender)
    return frozenset(seen)


def _require_alive(params: SecAggParams, alive: Collection[int], stage: Stage) -> None:
    if len(alive) < params.min_clients:
        raise RoundAbortedError(
            stage, f"only {len(alive)} clients remain, at least {params.min_clients} needed"
        )


def _require_live_neighbours(
    params: SecAggParams, graph: Graph, clients: Iterable[int], alive: frozenset[int], stage: Stage
) -> None:
    for client in sorted(clients):
        live = len(graph[client] & alive)
        if live < params.threshold:
            raise RoundAbortedError(
                stage, f"client {client} has {live} live neighbours, the threshold is {params.threshold}"
            )


# ---- stage 0: advertise keys -------------------------------------------------------------------


def client_advertise(
    params: SecAggParams, client_id: int, source: RandomSource
) -> tuple[ClientKeys, KeyAdvert]:
    """Stage 0 (client): draw fresh agreement and encryption key pairs; advertise the public halves.

    Stops: linking rounds through keys (fresh keys per round). Does not stop: a server or network
    substituting keys in transit (keys are not signed; use authenticated channels / a PKI).
    """
    if not 0 <= client_id < 2**63:
        raise ValueError(f"client ids must be in [0, 2**63), got {client_id}")
    agreement, encryption = crypto.generate_keypair(source), crypto.generate_keypair(source)
    state = ClientKeys(params, client_id, agreement, encryption)
    return state, KeyAdvert(params.round_id, client_id, PublicKeys(agreement.public, encryption.public))


def server_collect_adverts(
    params: SecAggParams, adverts: Collection[KeyAdvert]
) -> tuple[ServerRoster, dict[int, NeighbourRoster]]:
    """Stage 0 (server): build the neighbour graph over the advertised clients; send each its neighbours.

    Stops: duplicated public keys (a client copying another's key). Does not stop: Sybil clients
    (many advertised identities controlled by one party).

    Raises:
        RoundAbortedError: If too few clients advertised or the graph gives fewer than t neighbours.
        ProtocolError: If a message is from another round, duplicated or repeats a key.

    """
    alive = _senders(params, adverts, range(2**63), Stage.ADVERTISE_KEYS)
    keys = {a.sender: a.keys for a in adverts}
    published = [k.agreement for k in keys.values()] + [k.encryption for k in keys.values()]
    if len(set(published)) != len(published):
        raise ProtocolError("two advertised public keys are equal")
    _require_alive(params, alive, Stage.ADVERTISE_KEYS)
    degree = effective_degree(len(alive), params.neighbours)
    if degree < params.threshold:
        raise RoundAbortedError(
            Stage.ADVERTISE_KEYS,
            f"{len(alive)} clients give {degree} neighbours, below threshold {params.threshold}",
        )
    graph = neighbour_graph(alive, neighbours=params.neighbours, seed=params.graph_seed)
    rosters = {
        u: NeighbourRoster(params.round_id, u, {v: keys[v] for v in sorted(graph[u])}) for u in sorted(alive)
    }
    return ServerRoster(params, keys, graph), rosters


# ---- stage 1: share keys -----------------------------------------------------------------------


def _check_roster(state: ClientKeys, roster: NeighbourRoster) -> None:
    params, me = state.params, state.client_id
    _check_round(params, roster.round_id, "the neighbour roster")
    if roster.receiver != me or me in roster.neighbours:
        raise ProtocolError(f"the neighbour roster is not addressed to client {me} or lists it")
    size, k, t = len(roster.neighbours), params.neighbours, params.threshold
    if size < t:
        raise ProtocolError(f"only {size} neighbours, the threshold is {t}")
    if size > k:
        raise ProtocolError(f"the roster lists {size} neighbours, more than the announced k = {k}")
    if 2 * t <= size:
        raise ProtocolError(
            f"the roster lists {size} neighbours, at least 2t = {2 * t}: two disjoint groups of t "
            "could reveal both of our secrets"
        )
    published = [k.agreement for k in roster.neighbours.values()] + [state.agreement.public]
    published += [k.encryption for k in roster.neighbours.values()] + [state.encryption.public]
    if len(set(published)) != len(published):
        raise ProtocolError("the neighbour roster repeats a public key (possibly one of ours)")


def client_share_keys(
    state: ClientKeys, roster: NeighbourRoster, source: RandomSource
) -> tuple[ClientShared, EncryptedShares]:
    """Stage 1 (client): Shamir-share b_u and the mask key t-of-k; encrypt each pair to its neighbour.

    The roster is checked before any secret is drawn or shared: t <= len(roster) <= k (the
    announced ``params.neighbours``) and 2t > len(roster).

    Stops: the server or any t - 1 neighbours learning b_u or the mask key (shares are encrypted
    to each neighbour and any t - 1 of them are independent of the secrets); a roster reflecting
    our own keys back; roster inflation by a malicious server: with 2t or more neighbours it could
    tell t of them that we survived (collecting t shares of b_u) and t others that we dropped
    (collecting t shares of the mask key), each request valid on its own, then strip every mask
    from y_u. With fewer than 2t neighbours, each answering once, it cannot get t shares of both.
    Does not stop: t colluding neighbours (they hold enough shares, of both secrets); a server
    that substitutes a neighbour's encryption key with its own (keys are not signed): it decrypts
    that neighbour's shares itself, one share of each secret per substituted key; Sybil neighbours
    run by the server (the same effect).

    Raises:
        ProtocolError: If the roster is for another round or client, has fewer than t or more
            than k neighbours, has 2t or more neighbours, or repeats a public key.

    """
    _check_roster(state, roster)
    params, me = state.params, state.client_id
    self_seed = crypto.random_bytes(source, crypto.KEY_BYTES)
    order = sorted(roster.neighbours)
    xs = [v + 1 for v in order]
    seed_shares = split(self_seed, threshold=params.threshold, xs=xs, source=source)
    key_shares = split(state.agreement.private, threshold=params.threshold, xs=xs, source=source)
    peers = {v: keys.encryption for v, keys in roster.neighbours.items()}
    share_keys = _pair_keys(params, crypto.SHARE_KEY_LABEL, me, state.encryption.private, peers)
    ciphertexts: dict[int, bytes] = {}
    for v, seed_share, key_share in zip(order, seed_shares, key_shares, strict=True):
        plaintext = seed_share.to_bytes() + key_share.to_bytes()
        ciphertexts[v] = crypto.encrypt_share(
            share_keys[v], plaintext, sender=me, receiver=v, round_id=params.round_id, source=source
        )
    shared = ClientShared(params, me, state.agreement, roster.neighbours, self_seed, share_keys)
    return shared, EncryptedShares(params.round_id, me, ciphertexts)


def server_route_shares(
    state: ServerRoster, messages: Collection[EncryptedShares]
) -> tuple[ServerShared, dict[int, ShareDelivery]]:
    """Stage 1 (server): forward each ciphertext to its receiver, if the receiver shared keys too.

    Stops: going on when a survivor's secrets could not be reconstructed (fewer than t neighbours
    shared keys). Does not stop: nothing to stop here; the server only sees ciphertexts.

    Raises:
        RoundAbortedError: If fewer than ``min_clients`` shared keys or a survivor kept < t neighbours.
        ProtocolError: If a message is malformed (wrong round, sender or receivers).

    """
    params, graph = state.params, state.graph
    shared = _senders(params, messages, graph.keys(), Stage.SHARE_KEYS)
    for message in messages:
        if set(message.ciphertexts) != graph[message.sender]:
            raise ProtocolError(f"client {message.sender} did not encrypt to exactly its neighbours")
    _require_alive(params, shared, Stage.SHARE_KEYS)
    _require_live_neighbours(params, graph, shared, shared, Stage.SHARE_KEYS)
    by_sender = {m.sender: m.ciphertexts for m in messages}
    deliveries = {
        v: ShareDelivery(params.round_id, v, {u: by_sender[u][v] for u in sorted(graph[v] & shared)})
        for v in sorted(shared)
    }
    return ServerShared(state, shared), deliveries


# ---- stage 2: masked input ---------------------------------------------------------------------


def client_masked_input(
    state: ClientShared, delivery: ShareDelivery, vector: npt.ArrayLike
) -> tuple[ClientMasked, MaskedInput]:
    """Stage 2 (client): send y_u = x_u + PRG(b_u) + sum_{v<u} PRG(s_uv) - sum_{v>u} PRG(s_uv) mod m.

    Only neighbours that shared keys (the senders in ``delivery``) take part in pairwise masks.

    Stops: the server learning x_u from y_u (y_u is uniform given everything except b_u and the
    pairwise seeds), also when u's mask key is later revealed because u is wrongly thought
    dropped (b_u still hides x_u). Does not stop: a client sending a malicious x_u (input poisoning).

    Raises:
        ProtocolError: If the delivery is for another round or client, names a non-neighbour or
            has fewer than t senders.
        ValueError: If ``vector`` is not ``vector_length`` residues mod m.

    """
    params, me = state.params, state.client_id
    _check_round(params, delivery.round_id, "the share delivery")
    if delivery.receiver != me or not set(delivery.ciphertexts) <= set(state.neighbours):
        raise ProtocolError(f"the share delivery is not addressed to client {me} or names a non-neighbour")
    if len(delivery.ciphertexts) < params.threshold:
        raise ProtocolError(
            f"only {len(delivery.ciphertexts)} neighbours shared keys, threshold {params.threshold}"
        )
    peers = {v: state.neighbours[v].agreement for v in delivery.ciphertexts}
    seeds = pairwise_seeds(params, me, state.agreement.private, peers)
    masks = [(state.self_seed, True)] + [(seed, v < me) for v, seed in seeds.items()]
    residues = as_residues(vector, params.modulus, params.vector_length)
    masked = crypto.apply_masks(residues, masks, params.modulus)
    next_state = ClientMasked(params, me, state.share_keys, delivery.ciphertexts)
    return next_state, MaskedInput(params.round_id, me, masked)


def server_collect_masked(
    state: ServerShared, messages: Collection[MaskedInput]
) -> tuple[ServerMasked, dict[int, UnmaskRequest]]:
    """Stage 2 (server): sum the masked inputs; ask each sender for shares to unmask the sum.

    Each sender u is asked, for every neighbour v that shared keys, for the share of b_v if v sent
    a masked input and for the share of v's mask key if it did not: never both.

    Stops: summing too few inputs (``min_clients``) and going on when a secret could not be
    reconstructed. Does not stop: nothing to stop here; each y_u alone is uniformly random.

    Raises:
        RoundAbortedError: If too few inputs arrived or a survivor / dropped client with surviving
            neighbours has fewer than t surviving neighbours.
        ProtocolError: If a message is malformed.

    """
    params, graph = state.roster.params, state.roster.graph
    masked = _senders(params, messages, state.shared, Stage.MASKED_INPUT)
    _require_alive(params, masked, Stage.MASKED_INPUT)
    dropped = {v for v in state.shared - masked if graph[v] & masked}
    _require_live_neighbours(params, graph, masked | dropped, masked, Stage.MASKED_INPUT)
    length = params.vector_length
    total = sum_mod((as_residues(m.vector, params.modulus, length) for m in messages), params.modulus, length)
    requests = {
        u: UnmaskRequest(params.round_id, u, graph[u] & masked, (graph[u] & state.shared) - masked)
        for u in sorted(masked)
    }
    return ServerMasked(state.roster, state.shared, masked, total), requests


# ---- stage 3: unmask ---------------------------------------------------------------------------


def _check_request(state: ClientMasked, request: UnmaskRequest) -> None:
    params, me = state.params, state.client_id
    _check_round(params, request.round_id, "the unmask request")
    if request.receiver != me:
        raise ProtocolError(f"the unmask request is not addressed to client {me}")
    both = request.self_mask_of & request.mask_key_of
    if both:
        raise BothSharesRequestedError(
            f"refusing to reveal both the self-mask share and the key share of clients {sorted(both)}"
        )
    if not (request.self_mask_of | request.mask_key_of) <= set(state.received):
        raise ProtocolError("the unmask request names clients whose shares this client does not hold")
    if len(request.self_mask_of) < params.threshold:
        raise ProtocolError(
            f"only {len(request.self_mask_of)} neighbours survived, the threshold is {params.threshold}"
        )


def _open_shares(state: ClientMasked, sender: int) -> tuple[bytes, bytes]:
    params, me = state.params, state.client_id
    plaintext = crypto.decrypt_share(
        state.share_keys[sender], state.received[sender], sender=sender, receiver=me, round_id=params.round_id
    )
    seed_share, key_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES:]
    if len(key_share) != SHARE_BYTES or any(Share.from_bytes(s).x != me + 1 for s in (seed_share, key_share)):
        raise ProtocolError(f"the shares from client {sender} are malformed")
    return seed_share, key_share


def client_unmask(state: ClientMasked, request: UnmaskRequest) -> UnmaskResponse:
    """Stage 3 (client): reveal, per neighbour, the self-mask share or the key share, never both.

    Stops: a server that asks for both shares of one neighbour in one request (refused with
    :class:`BothSharesRequestedError`); a server lying about dropouts (the shares of b_v and of v's
    key would have to come from two disjoint groups of >= t neighbours, and v refused at stage 1
    any roster of 2t or more); tampered, replayed or re-routed share ciphertexts
    (:class:`~fedlab.secagg.errors.DecryptionError`).
    Does not stop: a server that calls this twice on the same state with different requests;
    the transport must discard the state after one answer (Bonawitz et al.'s signed consistency
    round for malicious servers is not implemented).

    Raises:
        BothSharesRequestedError: If a neighbour is named in both sets.
        ProtocolError: If the request is for another round/client, names shares this client does
            not hold, or claims fewer than t surviving neighbours.
        DecryptionError: If a requested ciphertext fails authentication.

    """
    _check_request(state, request)
    seed_shares: dict[int, bytes] = {}
    key_shares: dict[int, bytes] = {}
    for v in sorted(request.self_mask_of | request.mask_key_of):
        seed_share, key_share = _open_shares(state, v)
        if v in request.self_mask_of:
            seed_shares[v] = seed_share
        else:
            key_shares[v] = key_share
    return UnmaskResponse(state.params.round_id, state.client_id, seed_shares, key_shares)


def _collect(
    by_sender: Mapping[int, UnmaskResponse], holders: frozenset[int], owner: int, seeds: bool
) -> list[Share]:
    """Return the shares of ``owner``'s secret held by its neighbours that responded (k lookups)."""
    shares = []
    for holder in sorted(holders & by_sender.keys()):
        response = by_sender[holder]
        table = response.self_mask_shares if seeds else response.mask_key_shares
        if owner in table:
            shares.append(Share.from_bytes(table[owner]))
    return shares


def _recover(params: SecAggParams, shares: list[Share], owner: int, what: str) -> bytes:
    try:
        return reconstruct(shares, threshold=params.threshold)
    except ShamirError as error:
        raise RoundAbortedError(
            Stage.UNMASK, f"cannot reconstruct the {what} of client {owner}: {error}"
        ) from error


def server_unmask(state: ServerMasked, responses: Collection[UnmaskResponse]) -> SecureSum:
    """Stage 3 (server): reconstruct b_v of survivors and mask keys of dropped clients; unmask the sum.

    Cost: one Shamir reconstruction per client, plus one PRG expansion per survivor and per edge
    from a dropped client to a survivor, so about N * k for N clients of degree k.

    Stops: releasing a wrong sum from a wrong key share (a reconstructed key must match its
    advertised public key) and releasing anything when a secret cannot be reconstructed.
    Does not stop: a malicious client sending a wrong self-mask share (the sum is then wrong:
    robustness against malicious clients is not provided).

    Raises:
        RoundAbortedError: If some needed secret has fewer than t shares among the responses.
        ProtocolError: If a response is malformed.

    """
    roster = state.roster
    params, graph = roster.params, roster.graph
    responders = _senders(params, responses, state.masked, Stage.UNMASK)
    dropped = sorted(v for v in state.shared - state.masked if graph[v] & state.masked)
    _require_live_neighbours(params, graph, sorted(state.masked) + dropped, responders, Stage.UNMASK)
    by_sender = {response.sender: response for response in responses}
    masks: list[tuple[bytes, bool]] = []
    for v in sorted(state.masked):
        seed = _recover(params, _collect(by_sender, graph[v], v, seeds=True), v, "self-mask seed")
        masks.append((seed, False))
    for v in dropped:
        private = _recover(params, _collect(by_sender, graph[v], v, seeds=False), v, "mask key")
        if crypto.public_key_of(private) != roster.keys[v].agreement:
            raise RoundAbortedError(Stage.UNMASK, f"the reconstructed mask key of client {v} is inconsistent")
        peers = {u: roster.keys[u].agreement for u in graph[v] & state.masked}
        # u added +PRG(s_uv) if v < u and -PRG(s_uv) otherwise; undo it.
        masks += [(seed, v > u) for u, seed in pairwise_seeds(params, v, private, peers).items()]
    total = crypto.apply_masks(state.total, masks, params.modulus)
    return SecureSum(params.round_id, total, state.masked)
