"""Frozen parameters, per-stage states and messages of the SecAgg+ protocol.

Messages hold only bytes, ints, frozensets, read-only mappings and read-only numpy arrays, so a
transport (the Flower adapter) can serialize them and no stage function can alter another's data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from fedlab.secagg.crypto import KeyPair
from fedlab.secagg.errors import Stage
from fedlab.secagg.graph import Graph, degree_and_threshold
from fedlab.secagg.ring import Vector, check_modulus

K = TypeVar("K")
V = TypeVar("V")


def frozen_mapping(mapping: Mapping[K, V]) -> Mapping[K, V]:
    """Return a read-only copy of ``mapping``."""
    return MappingProxyType(dict(mapping))


def _freeze(instance: Any, *names: str) -> None:
    for name in names:
        value = getattr(instance, name)
        if isinstance(value, np.ndarray):
            value = value.copy()
            value.flags.writeable = False
        elif isinstance(value, Mapping):
            value = frozen_mapping(value)
        elif isinstance(value, set | frozenset):
            value = frozenset(value)
        object.__setattr__(instance, name, value)


@dataclass(frozen=True)
class SecAggParams:
    """Public parameters of one secure-aggregation round, agreed before stage 0.

    Attributes:
        round_id: Identifies the round; bound into every key derivation and share ciphertext.
        vector_length: Length of every input vector.
        modulus: Inputs, masks and the sum are residues mod ``modulus`` (2 to 2**62).
        neighbours: Degree k of the neighbour graph (k >= n - 1 gives classic SecAgg): the most
            neighbours any client gets; a client refuses a longer roster.
        threshold: Shamir threshold t: shares needed to reconstruct a secret; t - 1 colluding
            neighbours learn nothing. Must exceed k / 2 (2t > k): with a roster of 2t neighbours a
            server could collect t shares of both of a client's secrets from two disjoint halves.
        graph_seed: Public 32-byte seed of the neighbour graph (fresh per round).
        min_clients: The server aborts when fewer clients than this remain at any stage.

    """

    round_id: int
    vector_length: int
    modulus: int
    neighbours: int
    threshold: int
    graph_seed: bytes
    min_clients: int = 2

    def __post_init__(self) -> None:
        check_modulus(self.modulus)
        if not 0 <= self.round_id < 2**64:
            raise ValueError(f"round_id must be in [0, 2**64), got {self.round_id}")
        if self.vector_length < 0:
            raise ValueError(f"vector_length must be non-negative, got {self.vector_length}")
        if not 2 <= self.threshold <= self.neighbours:
            raise ValueError(f"need 2 <= threshold <= neighbours, got {self.threshold}, {self.neighbours}")
        if 2 * self.threshold <= self.neighbours:
            raise ValueError(
                f"need 2 * threshold > neighbours, got {self.threshold}, {self.neighbours}: a roster of "
                "2t neighbours would reveal both of a client's secrets"
            )
        if len(self.graph_seed) != 32:
            raise ValueError(f"graph_seed must be 32 bytes, got {len(self.graph_seed)}")
        if self.min_clients < 2:
            raise ValueError(
                f"min_clients must be at least 2 (one input is not a sum), got {self.min_clients}"
            )

    @classmethod
    def for_clients(
        cls,
        num_clients: int,
        *,
        round_id: int,
        vector_length: int,
        modulus: int,
        graph_seed: bytes,
        neighbours: int | None = None,
        threshold: int | None = None,
        min_clients: int = 2,
    ) -> SecAggParams:
        """Return parameters for a cohort of ``num_clients`` clients: k = O(log n), t = k // 2 + 1.

        k and t follow :func:`~fedlab.secagg.graph.degree_and_threshold`: a given ``neighbours``
        is capped at n - 1 and, when odd and below n - 1, made even, so that every honest roster
        has at most k neighbours however many clients advertise; a given ``threshold`` is capped
        at k; always 2t > k.

        >>> p = SecAggParams.for_clients(100, round_id=1, vector_length=3, modulus=2**32,
        ...                              graph_seed=bytes(32))
        >>> p.neighbours, p.threshold
        (20, 11)

        Raises:
            ValueError: As :func:`~fedlab.secagg.graph.degree_and_threshold`, or for bad parameters.

        """
        k, t = degree_and_threshold(num_clients, neighbours=neighbours, threshold=threshold)
        return cls(round_id, vector_length, modulus, k, t, graph_seed, min_clients)


@dataclass(frozen=True)
class PublicKeys:
    """A client's two public keys: for mask agreement and for share encryption."""

    agreement: bytes
    encryption: bytes


# ---- stage 0: advertise keys -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAdvert:
    """Client -> server, stage 0: the client's public keys."""

    round_id: int
    sender: int
    keys: PublicKeys


@dataclass(frozen=True)
class NeighbourRoster:
    """Server -> client, end of stage 0: the public keys of the client's neighbours."""

    round_id: int
    receiver: int
    neighbours: Mapping[int, PublicKeys]

    def __post_init__(self) -> None:
        _freeze(self, "neighbours")


@dataclass(frozen=True)
class ClientKeys:
    """Client state after stage 0: its two key pairs."""

    params: SecAggParams
    client_id: int
    agreement: KeyPair
    encryption: KeyPair


@dataclass(frozen=True)
class ServerRoster:
    """Server state after stage 0: every advertised client's keys and the neighbour graph."""

    params: SecAggParams
    keys: Mapping[int, PublicKeys]
    graph: Graph

    def __post_init__(self) -> None:
        _freeze(self, "keys", "graph")


# ---- stage 1: share keys -----------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedShares:
    """Client -> server, stage 1: one ciphertext per neighbour (receiver id -> ciphertext)."""

    round_id: int
    sender: int
    ciphertexts: Mapping[int, bytes]

    def __post_init__(self) -> None:
        _freeze(self, "ciphertexts")


@dataclass(frozen=True)
class ShareDelivery:
    """Server -> client, end of stage 1: ciphertexts addressed to it (sender id -> ciphertext)."""

    round_id: int
    receiver: int
    ciphertexts: Mapping[int, bytes]

    def __post_init__(self) -> None:
        _freeze(self, "ciphertexts")


@dataclass(frozen=True)
class ClientShared:
    """Client state after stage 1: mask key, neighbours' keys, b_u and the per-neighbour share keys.

    The encryption private key is dropped: the derived share keys are all stage 3 needs.
    """

    params: SecAggParams
    client_id: int
    agreement: KeyPair
    neighbours: Mapping[int, PublicKeys]
    self_seed: bytes = field(repr=False)
    share_keys: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        _freeze(self, "neighbours", "share_keys")


@dataclass(frozen=True)
class ServerShared:
    """Server state after stage 1: who shared keys (U2)."""

    roster: ServerRoster
    shared: frozenset[int]

    def __post_init__(self) -> None:
        _freeze(self, "shared")


# ---- stage 2: masked input ---------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedInput:
    """Client -> server, stage 2: y_u = x_u + PRG(b_u) +- pairwise masks, mod m."""

    round_id: int
    sender: int
    vector: Vector

    def __post_init__(self) -> None:
        _freeze(self, "vector")


@dataclass(frozen=True)
class ClientMasked:
    """Client state after stage 2: only what unmasking needs (b_u and the mask key are dropped).

    Attributes:
        share_keys: Neighbour id -> the AES-GCM key of that pair's share ciphertexts.
        received: Neighbour id -> the ciphertext of its shares addressed to this client.

    """

    params: SecAggParams
    client_id: int
    share_keys: Mapping[int, bytes] = field(repr=False)
    received: Mapping[int, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        _freeze(self, "share_keys", "received")


@dataclass(frozen=True)
class ServerMasked:
    """Server state after stage 2: who sent a masked input (U3) and the running masked sum."""

    roster: ServerRoster
    shared: frozenset[int]
    masked: frozenset[int]
    total: Vector

    def __post_init__(self) -> None:
        _freeze(self, "shared", "masked", "total")


# ---- stage 3: unmask ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UnmaskRequest:
    """Server -> client, stage 3: reveal self-mask shares of these neighbours, key shares of those.

    A request naming one neighbour in both sets is refused by the client.
    """

    round_id: int
    receiver: int
    self_mask_of: frozenset[int]
    mask_key_of: frozenset[int]

    def __post_init__(self) -> None:
        _freeze(self, "self_mask_of", "mask_key_of")


@dataclass(frozen=True)
class UnmaskResponse:
    """Client -> server, stage 3: the requested shares (neighbour id -> encoded share)."""

    round_id: int
    sender: int
    self_mask_shares: Mapping[int, bytes]
    mask_key_shares: Mapping[int, bytes]

    def __post_init__(self) -> None:
        _freeze(self, "self_mask_shares", "mask_key_shares")


# ---- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureSum:
    """The round's output: the sum mod m of the included clients' inputs, and who is included."""

    round_id: int
    total: Vector
    included: frozenset[int]

    def __post_init__(self) -> None:
        _freeze(self, "total", "included")


@dataclass(frozen=True)
class AbortedRound:
    """A round that stopped cleanly: no sum, nothing revealed, and why."""

    round_id: int
    stage: Stage
    reason: str


RoundResult = SecureSum | AbortedRound
