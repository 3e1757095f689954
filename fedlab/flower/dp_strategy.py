"""fedlab's user-level DP-FedAvg around any Flower Message-API strategy.

:class:`FedlabDpFedAvg` wraps a Flower ``Strategy`` (``FedAvg``, ``FedAdam``, ``FedYogi``, ...) the
way Flower's ``DifferentialPrivacyServerSideFixedClipping`` does, with fedlab's mechanism
(:mod:`fedlab.algorithms.dp_fedavg`): each round every connected node is sampled independently
with probability q from a secret stream; every received delta is clipped to C (or, with
``client_clipping``, rejected when over C); the clipped deltas are summed with weight 1, noised
once with standard deviation z*C and divided by the fixed denominator q*N; optionally C adapts to a
quantile of the norms. The accountant (PLD by default) composes one Poisson-subsampled Gaussian
per released round; a round that would take epsilon over ``max_epsilon`` is not started (Flower's
``PrivacyBudgetExhausted``); with ``ledger`` each round's epsilon is committed to fedlab's privacy
ledger before the round's model is returned.

The mechanism is :class:`~fedlab.algorithms.dp_fedavg.DpFedAvgServer` (:attr:`FedlabDpFedAvg.server`),
the object fedlab's own round loop runs its central-DP rounds through too; this module adapts it to
Flower's ``Strategy`` (node ids, records, the wrapped strategy, the ledger file).

The wrapped strategy then sees one reply: the current model plus the noisy mean delta. ``FedAvg``
returns exactly that; ``FedAdam`` and the other server optimizers step on it (post-processing, no
privacy cost). Its own node selection is replaced: the content of its first train message goes
to every sampled node.

Guarantee: (epsilon, delta) for add/remove one client (all its data), against anyone who sees the
released models, provided the clients cannot be sampled by a predictable stream (the default is
secret). Not against the server, which sees every update in clear; not for evaluation messages,
which the wrapped strategy sends and aggregates as it always does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import Result, Strategy

from fedlab.algorithms.dp_fedavg import MECHANISM, DpFedAvgServer
from fedlab.algorithms.fedavg import apply_delta
from fedlab.algorithms.validation import UpdateRules, screen
from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.flower.records import arrays_record
from fedlab.privacy.adaptive_clipping import AdaptiveClipState, norm_indicator
from fedlab.privacy.events import (
    ANNOUNCED_CLIP_NORM,
    ANNOUNCED_NOISE_MULTIPLIER,
    ANNOUNCED_ROUNDS,
    ANNOUNCED_SAMPLE_RATE,
)
from fedlab.privacy.ledger import FederationSpend, PrivacyLedger
from fedlab.privacy.secure_random import RandomStream, SecureRandom

CLIP_NORM = ANNOUNCED_CLIP_NORM
"""The train config key carrying the round's clip norm: Flower's own, so that Flower's
``fixedclipping_mod`` clips on the client (with ``client_clipping=True``)."""
NOISE_MULTIPLIER = ANNOUNCED_NOISE_MULTIPLIER
"""The train config key carrying z (public: a device can charge its own budget for the round)."""
SAMPLE_RATE = ANNOUNCED_SAMPLE_RATE
"""The train config key carrying q (public, as z)."""
ROUNDS = ANNOUNCED_ROUNDS
"""The train config key carrying T, the rounds :meth:`FedlabDpFedAvg.start` was asked for (public)."""
UNCLIPPED = "fedlab-unclipped"
"""The reply metric of a client that clips (``clipping_mod``): b = 1[norm <= C] - 1/2 before clipping."""


@dataclass(frozen=True)
class _Round:
    arrays: ArrayRecord
    template: Message
    sampled: int


class FedlabDpFedAvg(Strategy):
    """User-level DP-FedAvg (fixed denominator, noise once, PLD accounting) around ``strategy``.

    Args:
        strategy: The Flower strategy to wrap.
        noise_multiplier: z, the round's noise multiplier as accounted.
        clipping_norm: C, the (initial) clip norm.
        sample_rate: q, each node's probability of being sampled in a round.
        population_size: N, the population the denominator q*N is computed over.
        delta: The delta epsilon is reported at.
        max_epsilon: Do not start a round that would take epsilon above this.
        accountant: ``"pld"``, ``"prv"`` or ``"rdp"``.
        adaptive: Adaptive clipping (its ``clip_norm`` replaces ``clipping_norm``), or None.
        client_clipping: The clients clip (fedlab's ``clipping_mod`` or Flower's
            ``fixedclipping_mod`` read C from the train config): reject a delta over C instead of
            clipping it on the server. Adaptive clipping then counts the bit ``clipping_mod``
            reports (a reply without one counts 0, between the two bits).
        ledger: A fedlab privacy ledger file to create and commit every round to, or None.
        noise_rng: Where the noise comes from (default: a fresh secret stream).
        sample_rng: Where the cohorts come from (default: a fresh secret stream).
        weighted_by_key: The metric the wrapped strategy weights replies by.

    Attributes:
        server: The DP-FedAvg rounds (budget guard, cohort, announced settings, release, epsilon).

    Raises:
        ValueError: On a rate outside (0, 1], a non-positive z, C or N, a bad delta, or a ledger
            file that exists.

    Example:
        >>> from flwr.serverapp.strategy import FedAvg
        >>> dp = FedlabDpFedAvg(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5,
        ...                     sample_rate=0.1, population_size=100, delta=1e-5)
        >>> dp.epsilon, dp.clip_norm
        (0.0, 0.5)
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float,
        sample_rate: float,
        population_size: int,
        delta: float,
        max_epsilon: float | None = None,
        accountant: str = "pld",
        adaptive: AdaptiveClipState | None = None,
        client_clipping: bool = False,
        ledger: Path | None = None,
        noise_rng: RandomStream | None = None,
        sample_rng: RandomStream | None = None,
        weighted_by_key: str = "num-examples",
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; got {sample_rate!r}")
        if not (noise_multiplier > 0 and clipping_norm > 0 and population_size > 0):
            raise ValueError("noise_multiplier, clipping_norm and population_size must be positive")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1); got {delta!r}")
        if ledger is not None and ledger.exists():
            raise ValueError(f"ledger {ledger} exists: give a new path (a ledger holds one run)")
        self.strategy = strategy
        self.population_size = population_size
        self.client_clipping = client_clipping
        self.weighted_by_key = weighted_by_key
        self.server = DpFedAvgServer(
            noise_multiplier=noise_multiplier,
            clip_norm=clipping_norm,
            sample_rate=sample_rate,
            denominator=sample_rate * population_size,
            delta=delta,
            noise_rng=noise_rng or SecureRandom(),
            sample_rng=sample_rng or SecureRandom(),
            accountant=accountant,
            max_epsilon=max_epsilon,
            adaptive=adaptive,
        )
        self._ledger_path = ledger
        self._ledger: PrivacyLedger | None = None
        self._rounds: dict[int, _Round] = {}
        self.num_rounds: int | None = None

    @property
    def noise_multiplier(self) -> float:
        """The noise multiplier z."""
        return self.server.noise_multiplier

    @property
    def sample_rate(self) -> float:
        """The sampling rate q."""
        return self.server.sample_rate

    @property
    def delta(self) -> float:
        """The delta epsilon is reported at."""
        return self.server.delta

    @property
    def clip_norm(self) -> float:
        """The next round's clip norm."""
        return self.server.clip_norm

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far, at :attr:`delta`."""
        return self.server.epsilon

    @property
    def denominator(self) -> float:
        """The fixed denominator q*N."""
        return self.server.denominator

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's round loop, with ``num_rounds`` announced to the clients (a device charges the run)."""
        self.num_rounds = num_rounds
        return super().start(
            grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Check the budget, sample the cohort, and send it the wrapped strategy's train content.

        The train config gains the round's public DP settings: C (Flower's key), z, q and, once
        :meth:`start` set it, T.
        """
        refusal = self.server.refusal(server_round)
        if refusal is not None:
            raise PrivacyBudgetExhausted(refusal)
        public = self.server.announced(rounds=self.num_rounds)
        round_config = ConfigRecord({**dict(config), **public})
        offered = list(self.strategy.configure_train(server_round, arrays, round_config, grid))
        if not offered:
            return []
        nodes = {str(node): node for node in grid.get_node_ids()}
        sampled = self.server.sample(nodes)
        template = offered[0]
        self._rounds[server_round] = _Round(arrays, template, len(sampled))
        return [
            Message(
                content=template.content, dst_node_id=nodes[n], message_type=template.metadata.message_type
            )
            for n in sampled
        ]

    def _reports(self, replies: Iterable[Message], current: list[np.ndarray]) -> list[TrainReport]:
        reports = []
        for reply in replies:
            if reply.has_error() or len(reply.content.array_records) != 1:
                continue
            (record,) = reply.content.array_records.values()
            try:
                local = record.to_numpy_ndarrays()
            except (ValueError, TypeError):
                continue
            count, reported = 0, None
            for metrics in reply.content.metric_records.values():
                value = metrics.get(self.weighted_by_key)
                count = value if isinstance(value, int) and not isinstance(value, bool) else count
                bit = metrics.get(UNCLIPPED)
                reported = float(bit) if isinstance(bit, float) and bit in (0.5, -0.5) else reported
            matches = len(local) == len(current) and all(
                np.shape(a) == np.shape(b) for a, b in zip(local, current, strict=False)
            )
            # A local model of another shape is passed on as is: the screen rejects it by shape.
            delta = (
                tuple(
                    np.asarray(a, np.float64) - np.asarray(b, np.float64)
                    for a, b in zip(local, current, strict=True)
                )
                if matches
                else tuple(local)
            )
            update = Update(arrays=delta, num_examples=count, weight=1.0)
            norm = update.l2_norm() if matches else math.nan
            indicator = (
                norm_indicator(update_norm=norm, clip_norm=self.clip_norm) if math.isfinite(norm) else None
            )
            if self.client_clipping and indicator is not None:
                indicator = reported  # the norm seen here is after the client's clipping
            reports.append(
                TrainReport(
                    client_id=str(reply.metadata.src_node_id),
                    update=update,
                    train_loss=math.nan,
                    epsilon=math.inf,
                    noise_multiplier=0.0,
                    sample_rate=1.0,
                    steps=0,
                    clip_indicator=indicator,
                )
            )
        return reports

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Release the noisy mean of the clipped deltas through the wrapped strategy, accounted first."""
        state = self._rounds.pop(server_round, None)
        if state is None:
            return None, None
        current = state.arrays.to_numpy_ndarrays()
        rules = UpdateRules.for_model(current, max_norm=self.clip_norm if self.client_clipping else None)
        kept, rejected = screen(self._reports(replies, current), rules, server_round)
        release = self.server.release(
            kept, shapes=[tuple(np.shape(a)) for a in current], round_num=server_round
        )
        released = [
            np.asarray(w, dtype=np.asarray(c).dtype)
            for w, c in zip(apply_delta(current, release.delta), current, strict=True)
        ]
        self._commit(server_round)
        content = RecordDict(
            {
                "arrays": arrays_record(released, names=list(state.arrays.keys())),
                "metrics": MetricRecord({self.weighted_by_key: 1}),
            }
        )
        arrays, metrics = self.strategy.aggregate_train(
            server_round, [Message(content, reply_to=state.template)]
        )
        privacy = MetricRecord(
            {
                "epsilon": release.epsilon,
                "clip-norm": release.clip_norm,
                "clients": len(kept),
                "rejected": sum(rejected.values()),
                **(
                    {} if release.fraction_clipped is None else {"fraction-clipped": release.fraction_clipped}
                ),
            }
        )
        return arrays, _merged(metrics, privacy)

    def _commit(self, server_round: int) -> None:
        if self._ledger_path is None:
            return
        if self._ledger is None:
            settings = {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate}
            self._ledger = PrivacyLedger.create(
                self._ledger_path, run_name="flower-app", delta=self.delta, config_json=json.dumps(settings)
            )
        spend = FederationSpend(
            mechanism=MECHANISM,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=1,
            epsilon=self.epsilon,
        )
        self._ledger.commit_round(server_round, [], [spend])

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation (not covered by the guarantee)."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        """Log the wrapped strategy's summary."""
        self.strategy.summary()


def _merged(metrics: MetricRecord | None, privacy: MetricRecord) -> MetricRecord:
    if metrics is None:
        return privacy
    return MetricRecord({**dict(metrics), **dict(privacy)})
