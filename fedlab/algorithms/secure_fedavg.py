"""Federated averaging under secure aggregation (SecAgg+), with optional distributed DP (Skellam).

This is where :mod:`fedlab.secagg` (the protocol) and :mod:`fedlab.privacy` (the Skellam mechanism
and its accountant) meet. The server side of a round, transport-free:

1. sample the cohort (fraction, or Poisson as distributed DP's accountant assumes), give each
   sampled client a per-round protocol index 0..m-1 and draw fresh public :class:`SecAggParams`;
2. drive the four stages through a :class:`SecureTransport`: each stage sends one message per
   client and gets back the replies that arrived; a missing or malformed reply is a dropout;
3. clients **train during the masked-input stage** (stage 2): the global weights travel with the
   stage 2 messages, so a client's delta is encoded and masked as soon as it exists and is never
   stored between stages. Stage 2 also carries the encoding (:class:`FixedPointCodec` or
   :class:`SkellamParams`); the rotation seed of distributed DP is the public round seed;
4. unmask, take the modular sum, decode it and apply the mean delta.

Denominators (public, and documented in the metrics): **plain SecAgg** weights clients by examples
by default, as FedAvg does: each client multiplies its delta by :func:`~fedlab.core.update.example_weight`
(min(examples, cap) / cap, at most 1, so the clip range still bounds it) before encoding, and the
server divides the decoded sum by the included clients' total weight, computed from their example
counts (public metadata). With ``secagg.weighting = "uniform"`` every weight is 1 and the
denominator is the number of clients whose masked input is in the sum. **Distributed DP**
divides by the fixed expected cohort ``q * N`` (never the realised number of survivors, which is
not private), as DP-FedAvg does: dropouts shrink the step by survivors / expected.

Aborts: a round whose protocol aborts (too few clients at some stage, a survivor with fewer than t
live neighbours, a malformed protocol message), whose cohort is below ``min_survivors`` or above the
encoding's capacity, keeps the model unchanged, releases nothing and records why in the metrics
(``aborted`` = stage, ``abort_reason``); the next round goes on. Under distributed DP the spend is
committed (``skellam-ddp`` against the server, ``skellam-ddp-released`` for readers of the released
models; see :mod:`fedlab.privacy.skellam_release`) only for rounds whose sum was unmasked, before
the model is released; an aborted round released nothing and spends nothing. Before decoding, the
server tops the sum's noise up to the cohort cap.

What this stops: the server learning any client's update (only the sum of at least
``min_survivors`` inputs is ever unmasked); with distributed DP, the server learning more about a
client's update than ``skellam-ddp``'s epsilon (zero-out: it knows who took part), and readers of
the released models learning more about a client's participation than ``skellam-ddp-released``'s.
What it does not stop: see :mod:`fedlab.secagg` (malicious server beyond SecAgg+, Sybils,
poisoning) and :mod:`fedlab.privacy.skellam` (clients withholding noise); who took part is known to
the server. Per-client public metadata (number of examples and the client's own DP-SGD spend under
plain SecAgg+; nothing under distributed DP) still reaches the server.

The transport protocol (:class:`SecureTransport`): ``available_clients()`` and
``stage(request) -> StageReplies``. ``request.messages`` maps a client id to its stage message
(stage 0: :class:`SetupMessage`; 1: :class:`NeighbourRoster`; 2: :class:`MaskedInputMessage`;
3: :class:`UnmaskRequest`); ``request.weights`` is the global model (stage 2 only, the same for
every client). The transport returns the replies that arrived before its timeout (stage 0:
:class:`KeyAdvert`; 1: :class:`EncryptedShares`; 2: :class:`MaskedReply`; 3: :class:`UnmaskResponse`),
keyed by client id. It must keep each client's secret state between stages on the client side
(the server never sees it) and may drop any reply (that is a dropout).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedlab.algorithms.federation import round_seed
from fedlab.algorithms.sampling import sample_fraction, sample_poisson
from fedlab.algorithms.secure_messages import (
    ClientStageMessage,
    MaskedInputMessage,
    MaskedReply,
    ServerStageMessage,
    SetupMessage,
    StageReplies,
    StageRequest,
)
from fedlab.algorithms.validation import UpdateRules, screen
from fedlab.core.errors import ConfigError
from fedlab.core.reports import TrainReport
from fedlab.core.server_config import MAX_EXAMPLES, ServerOptimizerSettings
from fedlab.core.update import Update, example_weight
from fedlab.privacy.secure_random import RandomStream
from fedlab.privacy.skellam import (
    SkellamEvent,
    SkellamParams,
    noise_is_sufficient,
)
from fedlab.privacy.skellam_release import (
    RELEASED_VIEW,
    SERVER_VIEW,
    released_sum,
    released_view_event,
    server_view_event,
)
from fedlab.secagg import protocol
from fedlab.secagg.crypto import RandomSource
from fedlab.secagg.encoding import FixedPointCodec, decode_counted_sum
from fedlab.secagg.errors import EncodingError, SecAggError, Stage
from fedlab.secagg.graph import degree_and_threshold
from fedlab.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    SecAggParams,
    SecureSum,
    UnmaskResponse,
)

LOG = logging.getLogger("fedlab.secure_fedavg")

# ---- the stage transport protocol --------------------------------------------------------------


@runtime_checkable
class SecureTransport(Protocol):
    """Carries SecAgg+ stage messages to clients and their replies back (see the module docstring)."""

    def available_clients(self) -> list[str]:
        """The stable ids of the clients that can be sampled now."""
        ...

    def stage(self, request: StageRequest) -> StageReplies:
        """Deliver each client its stage message; return the replies that arrived in time."""
        ...


# ---- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SecureFedAvgSettings:
    """A secure-aggregation run.

    Attributes:
        rounds: Planned rounds.
        fraction_train: Fraction of clients (``fraction``) or sampling rate q (``poisson``).
        sampling: ``fraction`` or ``poisson``.
        seed: Run seed (sampling; the per-round public seeds derive from it).
        num_clients: N, the population (the distributed-DP denominator is q * N).
        bits: The SecAgg modulus is 2^bits.
        neighbours: SecAgg+ degree k (0: automatic, O(log n)).
        threshold: Shamir threshold t (0: automatic, k // 2 + 1).
        clip_range: Plain SecAgg: per-coordinate clip of the fixed-point encoding.
        min_survivors: Fraction of the (expected) cohort whose inputs must be in the sum.
        ddp: Distributed DP parameters (calibrated), or None for plain SecAgg.
        delta: Distributed DP: the run's delta.
        max_epsilon: Distributed DP: stop before a round that would exceed this epsilon.
        weight_cap: Plain SecAgg weighted by examples: each client scaled its delta by
            :func:`~fedlab.core.update.example_weight` with this cap; None averages the included
            clients uniformly.
        max_examples: The largest example count a masked reply may claim (public metadata).

    """

    rounds: int
    fraction_train: float
    sampling: str
    seed: int
    num_clients: int
    bits: int
    neighbours: int = 0
    threshold: int = 0
    clip_range: float = 1.0
    min_survivors: float = 0.7
    ddp: SkellamParams | None = None
    delta: float = 1e-5
    max_epsilon: float | None = None
    weight_cap: int | None = None
    max_examples: int = MAX_EXAMPLES
    optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)

    @property
    def expected_cohort(self) -> float:
        """The expected cohort q * N: the fixed denominator of distributed DP."""
        return self.fraction_train * self.num_clients

    def min_included(self, sampled: int) -> int:
        """Fewest inputs a released sum must hold (at least 2: one input is not a sum)."""
        if self.ddp is not None:
            return max(2, self.ddp.min_survivors)
        return max(2, math.ceil(self.min_survivors * sampled - 1e-9))

    def sample(self, client_ids: Sequence[str], rng: RandomStream) -> list[str]:
        """Draw one round's clients."""
        if self.sampling == "poisson":
            return sample_poisson(client_ids, rate=self.fraction_train, rng=rng)
        return sample_fraction(client_ids, fraction=self.fraction_train, rng=rng)

    def round_events(self) -> dict[str, SkellamEvent]:
        """One released distributed-DP round as each adversary sees it, by ledger mechanism.

        The server: zero-out, ``min_survivors`` shares, no amplification; readers of the released
        models: add/remove, the topped-up ``num_clients`` shares, Poisson rate q (see
        :mod:`fedlab.privacy.skellam_release`).
        """
        assert self.ddp is not None
        return {
            SERVER_VIEW: server_view_event(self.ddp),
            RELEASED_VIEW: released_view_event(self.ddp, sample_rate=self.fraction_train),
        }


def fixed_point_codec(*, bits: int, clip: float, max_summands: int) -> FixedPointCodec:
    """The finest fixed-point codec whose sum of ``max_summands`` values cannot wrap.

    Raises:
        ConfigError: If ``bits`` cannot hold that many summands (a one-line reason).

    """
    try:
        return FixedPointCodec.for_sum(bits=bits, clip=clip, max_summands=max_summands)
    except EncodingError as exc:
        raise ConfigError(f"secagg.bits: {exc}") from None


# ---- the round ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecureRoundOutcome:
    """One round: the mean delta (None if aborted), who is included, and the metrics."""

    mean_delta: list[np.ndarray] | None
    reports: tuple[TrainReport, ...]
    extra: dict[str, float | int | str]


class RoundAbortedError(Exception):
    """A round stopped cleanly before anything was unmasked."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def _valid(
    replies: StageReplies,
    kind: type,
    index: Mapping[str, int],
    round_num: int,
    failures: list[str],
) -> dict[str, ClientStageMessage]:
    """Keep the replies of the right type, sender and round; count the rest as dropouts."""
    kept: dict[str, ClientStageMessage] = {}
    failures.extend(replies.failures)
    for cid, reply in replies.replies.items():
        inner = reply.masked if isinstance(reply, MaskedReply) else reply
        if (
            cid not in index
            or not isinstance(reply, kind)
            or getattr(inner, "sender", None) != index[cid]
            or getattr(inner, "round_id", None) != round_num
        ):
            failures.append(f"client {cid}: unexpected reply {type(reply).__name__}")
            continue
        kept[cid] = reply
    return kept


def _shapes_split(flat: npt.NDArray[np.float64], shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape)) if shape else 1
        out.append(flat[start : start + size].reshape(shape))
        start += size
    return out


def secure_round(
    transport: SecureTransport,
    settings: SecureFedAvgSettings,
    *,
    round_num: int,
    sampled: Sequence[str],
    weights: Sequence[np.ndarray],
    source: RandomSource,
) -> SecureRoundOutcome:
    """Run one secure round; return the mean delta or a clean abort (model unchanged).

    Args:
        transport: Carries the stages.
        settings: The run's settings.
        round_num: The round number (the SecAgg round id).
        sampled: The cohort.
        weights: The global model (sent with stage 2).
        source: Server randomness (the public graph seed): ``os.urandom`` in deployment.

    """
    shapes = [tuple(np.shape(w)) for w in weights]
    dim = int(sum(int(np.prod(s)) if s else 1 for s in shapes))
    seed = round_seed(settings.seed, round_num)
    failures: list[str] = []
    extra: dict[str, float | int | str] = {"sampled": len(sampled)}
    try:
        summed, included, reports = _drive(
            transport, settings, round_num, seed, sampled, weights, dim, source, failures, extra
        )
    except RoundAbortedError as abort:
        LOG.warning("round %d aborted at %s: %s", round_num, abort.stage, abort.reason)
        extra.update(aborted=abort.stage, abort_reason=abort.reason, failures=len(failures))
        return SecureRoundOutcome(None, (), extra)
    extra.update(included=len(included), failures=len(failures))
    if settings.ddp is not None:
        top_up_rng = np.random.Generator(np.random.PCG64(int.from_bytes(source(32), "little")))
        total = released_sum(
            summed.total.astype(np.int64), settings.ddp, num_included=len(included), seed=seed, rng=top_up_rng
        )
        mean = total / settings.expected_cohort
        extra["denominator"] = settings.expected_cohort
    else:
        codec = fixed_point_codec(bits=settings.bits, clip=settings.clip_range, max_summands=len(sampled))
        counted = decode_counted_sum(summed.total, codec, num_summands=len(included))
        total_weight = math.fsum(r.update.weight for r in reports)  # 0 only if no client had data
        mean = counted.values / total_weight if total_weight > 0.0 else np.zeros_like(counted.values)
        extra.update(denominator=total_weight, clipped_values=counted.clipped)
    return SecureRoundOutcome(_shapes_split(mean, shapes), reports, extra)


def _drive(
    transport: SecureTransport,
    settings: SecureFedAvgSettings,
    round_num: int,
    seed: int,
    sampled: Sequence[str],
    weights: Sequence[np.ndarray],
    dim: int,
    source: RandomSource,
    failures: list[str],
    extra: dict[str, float | int | str],
) -> tuple[SecureSum, frozenset[int], tuple[TrainReport, ...]]:
    need = settings.min_included(len(sampled))
    if len(sampled) < need:
        raise RoundAbortedError("SAMPLING", f"{len(sampled)} clients sampled, at least {need} needed")
    encoding: FixedPointCodec | SkellamParams
    if settings.ddp is not None:
        encoding = settings.ddp
        if len(sampled) > encoding.num_clients:
            raise RoundAbortedError(
                "SAMPLING", f"{len(sampled)} clients sampled, the encoding allows {encoding.num_clients}"
            )
        length, modulus = encoding.padded_dim, encoding.modulus
    else:
        encoding = fixed_point_codec(bits=settings.bits, clip=settings.clip_range, max_summands=len(sampled))
        length, modulus = dim + 1, encoding.modulus  # the delta, then the clipped-count slot
    index = {cid: i for i, cid in enumerate(sampled)}
    client_of = {i: cid for cid, i in index.items()}
    try:
        k, t = degree_and_threshold(
            len(sampled), neighbours=settings.neighbours or None, threshold=settings.threshold or None
        )
    except ValueError as exc:
        raise RoundAbortedError("SAMPLING", str(exc)) from None
    if t < 2:
        raise RoundAbortedError("SAMPLING", f"{len(sampled)} clients give threshold {t}, at least 2 needed")
    params = SecAggParams(round_num, length, modulus, k, t, source(32), need)
    extra.update(neighbours=k, threshold=t)

    def stage(
        which: Stage, messages: Mapping[str, ServerStageMessage], kind: type
    ) -> dict[str, ClientStageMessage]:
        request = StageRequest(
            round_num, seed, which, dict(messages), tuple(weights) if which == Stage.MASKED_INPUT else ()
        )
        return _valid(transport.stage(request), kind, index, round_num, failures)

    try:
        setup = {c: SetupMessage(params, index[c], encoding) for c in sampled}
        adverts = stage(Stage.ADVERTISE_KEYS, setup, KeyAdvert)
        roster, rosters = protocol.server_collect_adverts(
            params, [a for a in adverts.values() if isinstance(a, KeyAdvert)]
        )
        shares = stage(Stage.SHARE_KEYS, {client_of[i]: r for i, r in rosters.items()}, EncryptedShares)
        shared, deliveries = protocol.server_route_shares(
            roster, [s for s in shares.values() if isinstance(s, EncryptedShares)]
        )
        masked_msgs = {client_of[i]: MaskedInputMessage(d, encoding) for i, d in deliveries.items()}
        masked = stage(Stage.MASKED_INPUT, masked_msgs, MaskedReply)
        masked_replies = _valid_metadata(
            [m for m in masked.values() if isinstance(m, MaskedReply)], client_of, settings, round_num, extra
        )
        collected, requests = protocol.server_collect_masked(shared, [m.masked for m in masked_replies])
        if settings.ddp is not None and not noise_is_sufficient(len(collected.masked), settings.ddp):
            raise RoundAbortedError(
                Stage.MASKED_INPUT.name,
                f"{len(collected.masked)} noise shares, {settings.ddp.min_survivors} needed",
            )
        responses = stage(Stage.UNMASK, {client_of[i]: r for i, r in requests.items()}, UnmaskResponse)
        summed = protocol.server_unmask(
            collected, [r for r in responses.values() if isinstance(r, UnmaskResponse)]
        )
    except SecAggError as exc:
        where = getattr(exc, "stage", None)
        raise RoundAbortedError(
            where.name if isinstance(where, Stage) else "PROTOCOL", getattr(exc, "reason", str(exc))
        ) from None
    reports = tuple(
        _report(m, client_of, settings) for m in masked_replies if m.masked.sender in summed.included
    )
    return summed, summed.included, reports


def _report(m: MaskedReply, client_of: Mapping[int, str], settings: SecureFedAvgSettings) -> TrainReport:
    """A masked reply's public metadata as the client's report (no arrays: the server never sees them)."""
    return TrainReport(
        client_id=client_of[m.masked.sender],
        update=Update(
            arrays=(),
            num_examples=m.num_examples,
            weight=example_weight(m.num_examples, settings.weight_cap),
        ),
        train_loss=math.nan,  # not reported under secure aggregation: it is per-client data
        epsilon=m.epsilon,
        noise_multiplier=m.noise_multiplier,
        sample_rate=m.sample_rate,
        steps=m.steps,
    )


def _valid_metadata(
    replies: Sequence[MaskedReply],
    client_of: Mapping[int, str],
    settings: SecureFedAvgSettings,
    round_num: int,
    extra: dict[str, float | int | str],
) -> list[MaskedReply]:
    """The masked replies whose public metadata is valid; the others drop out before unmasking."""
    kept, counts = screen(
        [_report(m, client_of, settings) for m in replies],
        UpdateRules(shapes=(), max_examples=settings.max_examples),
        round_num,
    )
    extra.update(counts)
    valid = {r.client_id for r in kept}
    return [m for m in replies if client_of[m.masked.sender] in valid]


# ---- the loop ----------------------------------------------------------------------------------
