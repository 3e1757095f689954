"""Secure aggregation (SecAgg+): the server learns the sum of the clients' inputs, nothing more.

SecAgg+ (Bell et al. 2020) on top of Bonawitz et al. 2017, as pure functions over frozen states and
messages (:mod:`fedlab.secagg.protocol`), crypto as bytes-in/bytes-out functions over the
``cryptography`` package (:mod:`fedlab.secagg.crypto`), our own Shamir sharing
(:mod:`fedlab.secagg.shamir`), the random k-regular neighbour graph (:mod:`fedlab.secagg.graph`),
fixed-point encoding (:mod:`fedlab.secagg.encoding`) and an in-process driver
(:func:`simulate_round`). No transport: the Flower adapter only carries the messages.

Threat model
------------
Protected (each claim is tested in ``tests/secagg``):

* An honest-but-curious server, together with up to t - 1 colluding clients, learns nothing about
  an honest client's input beyond the sum of the included clients' inputs: every masked input is
  uniform mod m, pairwise masks cancel only in the sum, and t - 1 Shamir shares of a seed or key
  are consistent with every possible secret.
* Dropouts at any of the four stages are tolerated while every survivor keeps at least t live
  neighbours (and at least ``min_clients`` clients remain); otherwise the round aborts cleanly with
  a stage and a reason, and no sum or partial sum is released.
* A client whose masked input arrives late, after the server reconstructed its mask key, stays
  hidden by its self mask (double masking).
* Roster inflation, even by a malicious server. Before it draws or shares any secret (stage 1), a
  client checks its neighbour roster: t <= length <= k, where k is the announced ``neighbours`` of
  :class:`SecAggParams`, and 2t > length (:class:`SecAggParams` also requires 2t > k). A roster of
  2t neighbours would let a server tell t of them that the client survived and t others that it
  dropped, collect t shares of both its self-mask seed and its mask key with requests each valid
  on its own, and strip every mask from its input; the client refuses such a roster and sends no
  share. A request for both the self-mask share and the key share of one neighbour is refused too,
  so a server lying to different clients about who dropped cannot collect t shares of both
  secrets of one client (each neighbour answering once). An honest server never sends a longer
  roster: the graph's degree never exceeds k (an odd k on an odd number of clients gives k - 1).
* Share ciphertexts are authenticated (AES-GCM) with sender, receiver and round as associated data:
  tampered, replayed (other round) and re-routed (other sender/receiver) ciphertexts are rejected.
* Masks come from a ChaCha20 keystream keyed by the full 256-bit seed (no 32-bit seeding),
  rejection-sampled to be exactly uniform mod m.
* Fixed-point encoding never wraps silently: out-of-range values are clipped and counted, and a
  configuration whose sum of n values could wrap the modulus is refused up front. With
  :func:`encode_counted` the counts ride in one more slot of the secure sum, so the server learns
  how many values the included clients clipped in total, never one client's count.

The guarantees hold against an honest-but-curious server plus up to t - 1 colluding clients; of a
malicious server's attacks, only those named above are stopped (roster inflation, both shares of
one neighbour in one request, tampered, replayed or re-routed ciphertexts).

Not protected:

* Public keys are not signed: there is no PKI and no signed consistency round. A malicious server
  can substitute public keys and sit as a man in the middle between clients: it then reads the
  share ciphertexts it routes (each substituted key of a client's neighbour gives it one share of
  both of the client's secrets; t of them give it both secrets). It can also give clients
  inconsistent views (of the graph, the keys or who dropped), simulate Sybil clients, ask the same
  client twice on the same state, or pick the graph seed adversarially.
* More than t - 1 colluding neighbours of a client, or a Sybil attack where the server or one party
  controls many clients (k-regular graphs with small k make this cheaper than in classic SecAgg).
* Input poisoning: a malicious client can send any in-range input or wrong shares (the result is a
  wrong sum or an abort; wrong mask-key shares are detected, wrong self-mask shares are not).
* What the sum itself reveals (use distributed DP), who participated, message sizes and timing.
* Secrets in memory of a compromised client or server, and denial of service.
"""

from fedlab.secagg.crypto import RandomSource, expand_mask, seeded_source
from fedlab.secagg.driver import simulate_round
from fedlab.secagg.encoding import (
    CountedSum,
    Encoded,
    FixedPointCodec,
    decode_counted_sum,
    decode_sum,
    encode,
    encode_counted,
)
from fedlab.secagg.errors import (
    BothSharesRequestedError,
    DecryptionError,
    EncodingError,
    ProtocolError,
    RoundAbortedError,
    SecAggError,
    ShamirError,
    Stage,
)
from fedlab.secagg.graph import neighbour_graph, suggest_neighbours, suggest_threshold
from fedlab.secagg.messages import (
    AbortedRound,
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    NeighbourRoster,
    PublicKeys,
    RoundResult,
    SecAggParams,
    SecureSum,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedlab.secagg.protocol import (
    client_advertise,
    client_masked_input,
    client_share_keys,
    client_unmask,
    server_collect_adverts,
    server_collect_masked,
    server_route_shares,
    server_unmask,
)

__all__ = [
    "AbortedRound",
    "BothSharesRequestedError",
    "CountedSum",
    "DecryptionError",
    "Encoded",
    "EncodingError",
    "EncryptedShares",
    "FixedPointCodec",
    "KeyAdvert",
    "MaskedInput",
    "NeighbourRoster",
    "ProtocolError",
    "PublicKeys",
    "RandomSource",
    "RoundAbortedError",
    "RoundResult",
    "SecAggError",
    "SecAggParams",
    "SecureSum",
    "ShamirError",
    "ShareDelivery",
    "Stage",
    "UnmaskRequest",
    "UnmaskResponse",
    "client_advertise",
    "client_masked_input",
    "client_share_keys",
    "client_unmask",
    "decode_counted_sum",
    "decode_sum",
    "encode",
    "encode_counted",
    "expand_mask",
    "neighbour_graph",
    "seeded_source",
    "server_collect_adverts",
    "server_collect_masked",
    "server_route_shares",
    "server_unmask",
    "simulate_round",
    "suggest_neighbours",
    "suggest_threshold",
]
