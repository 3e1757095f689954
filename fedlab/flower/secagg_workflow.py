"""fedlab's SecAgg+ FedAvg as a workflow any ServerApp's ``main`` can call.

:class:`SecAggWorkflow` runs rounds of federated averaging in which the server only ever unmasks
the sum of the sampled clients' deltas (:func:`~fedlab.algorithms.secure_loop.run_secure_fedavg`,
the loop ``fedlab simulate`` and ``fedlab server`` run, over the Grid with
:class:`~fedlab.flower.secure_transport.FlowerSecureTransport`). Its clients are any ClientApp
with :class:`~fedlab.flower.secagg_mod.SecAggMod`: the workflow sends ``train`` messages that
hold a ``secagg`` record; at the masked-input stage they also hold the global model (``arrays``,
keyed as the model the workflow was given) and the train config (``config``), which the app's own
train function reads.

Each round: a fraction of the connected nodes is drawn from a secret stream, fresh public SecAgg+
parameters and graph, four stages; a round with too few survivors aborts and keeps the model.
The mean is weighted by capped example counts (or uniform); the weighting is announced to the
clients with each stage message.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MessageType
from flwr.serverapp import Grid

from fedlab.algorithms.secure_fedavg import SecureFedAvgSettings, fixed_point_codec
from fedlab.algorithms.secure_loop import run_secure_fedavg
from fedlab.core.metrics import RoundMetrics
from fedlab.core.reports import TrainReport
from fedlab.flower.records import arrays_record
from fedlab.flower.secure_transport import FlowerSecureTransport
from fedlab.flower.server import wait_for_nodes
from fedlab.privacy.ledger import FederationSpend
from fedlab.privacy.secure_random import SecureRandom

LOG = logging.getLogger("fedlab.secagg_workflow")

Scalar = int | float | str | bool


@dataclass(frozen=True)
class SecAggResult:
    """How a secure run ended.

    Attributes:
        arrays: The final global model, keyed and typed as the initial one.
        rounds_released: Rounds whose mean delta was applied.
        rounds_aborted: Rounds that aborted (model unchanged).
        history: Per round: sampled, included and failed clients, the denominator, and
            ``aborted``/``abort_reason`` for an aborted round.

    Example:
        >>> import numpy as np
        >>> from flwr.app import Array
        >>> result = SecAggResult(ArrayRecord({"w": Array(np.zeros(2))}), rounds_released=1, rounds_aborted=0)
        >>> result.rounds_released, list(result.arrays.keys())
        (1, ['w'])
    """

    arrays: ArrayRecord
    rounds_released: int
    rounds_aborted: int
    history: tuple[Mapping[str, float | int | str], ...] = field(default=())


@dataclass
class _History:
    """A recorder that keeps each round's public metrics (nothing to commit: no DP here)."""

    rounds: list[Mapping[str, float | int | str]] = field(default_factory=list)

    def start(self) -> None:
        """Nothing to set up."""

    def release_round(
        self,
        round_num: int,
        weights: Sequence[np.ndarray],
        reports: Sequence[TrainReport],
        *,
        seconds: float,
        extra: Mapping[str, float | int | str] | None = None,
        federation: Sequence[FederationSpend] = (),
        state: Mapping[str, Any] | None = None,
    ) -> RoundMetrics:
        """Keep the round's metrics and log one line."""
        row = dict(extra or {})
        self.rounds.append(row)
        LOG.info("secagg round %d: %s", round_num, ", ".join(f"{k} {v}" for k, v in sorted(row.items())))
        included = row.get("included")
        return RoundMetrics(
            round=round_num,
            accuracy=math.nan,
            loss=math.nan,
            train_loss=math.nan,
            epsilon_max=math.inf,
            epsilon_mean=math.inf,
            clients=included if isinstance(included, int) else None,
            seconds=seconds,
            extra=row,
        )


class SecAggWorkflow:
    """Secure FedAvg rounds over the Grid, for clients with :class:`~fedlab.flower.SecAggMod`.

    Args:
        num_rounds: Rounds to run.
        fraction_train: Fraction of the nodes (connected at the start) sampled each round.
        min_nodes: Wait for this many nodes before the first round.
        bits: The modulus 2^bits (each client's :class:`SecAggMod` must agree, or it refuses).
        clip_range: Per-coordinate clip of the fixed-point encoding (likewise).
        weighting: ``"examples"``: each client scales its delta by min(examples, max_weight) /
            max_weight and the sum is divided by the total weight; ``"uniform"``: by the number
            of clients in the sum. Announced to the clients with every round.
        max_weight: The example-count cap of ``"examples"``.
        min_survivors: Fraction of the sampled clients whose masked inputs must be in the sum.
        neighbours: SecAgg+ degree k (0: automatic, O(log n)).
        threshold: Shamir threshold t (0: automatic).
        timeout: Seconds to wait for each stage's replies.
        wait_timeout: Seconds to wait for ``min_nodes``.
        train_config: Sent to the app's train function as the ``config`` record (with
            ``server-round``).

    Raises:
        ValueError: On a non-positive count, a fraction outside (0, 1], or a weighting other
            than ``"examples"`` or ``"uniform"``.

    Example:
        >>> workflow = SecAggWorkflow(num_rounds=3, fraction_train=0.5, train_config={"lr": 0.1})
        >>> workflow.num_rounds
        3
    """

    def __init__(
        self,
        *,
        num_rounds: int,
        fraction_train: float = 1.0,
        min_nodes: int = 2,
        bits: int = 32,
        clip_range: float = 1.0,
        weighting: str = "examples",
        max_weight: int = 1000,
        min_survivors: float = 0.7,
        neighbours: int = 0,
        threshold: int = 0,
        timeout: float = 120.0,
        wait_timeout: float = 600.0,
        train_config: Mapping[str, Scalar] | None = None,
    ) -> None:
        if num_rounds < 1 or min_nodes < 2 or max_weight < 1:
            raise ValueError(f"need num_rounds >= 1, min_nodes >= 2, max_weight >= 1; got {num_rounds}, "
                             f"{min_nodes}, {max_weight}")  # fmt: skip
        if not 0.0 < fraction_train <= 1.0 or not 0.0 < min_survivors <= 1.0:
            raise ValueError(
                f"fraction_train and min_survivors must be in (0, 1]: {fraction_train}, {min_survivors}"
            )
        if weighting not in ("examples", "uniform"):
            raise ValueError(f"weighting must be 'examples' or 'uniform', not {weighting!r}")
        self.num_rounds = num_rounds
        self.fraction_train = fraction_train
        self.min_nodes = min_nodes
        self._bits, self._neighbours, self._threshold = bits, neighbours, threshold
        self._clip_range = clip_range
        self._weight_cap = max_weight if weighting == "examples" else None
        self._min_survivors = min_survivors
        self._timeout = timeout
        self._wait_timeout = wait_timeout
        self._train_config = ConfigRecord(dict(train_config or {}))

    def __call__(self, grid: Grid, arrays: ArrayRecord) -> SecAggResult:
        """Run the rounds from ``arrays``; return the final model and each round's metrics.

        Raises:
            FedlabError: If ``min_nodes`` did not connect within ``wait_timeout``.
            ConfigError: If ``bits`` cannot hold the sum of every node's input.

        """
        nodes = wait_for_nodes(grid, count=self.min_nodes, timeout=self._wait_timeout)
        clients = {node: str(node) for node in nodes}
        names = list(arrays.keys())
        initial = [array.numpy() for array in arrays.values()]
        settings = SecureFedAvgSettings(
            rounds=self.num_rounds,
            fraction_train=self.fraction_train,
            sampling="fraction",
            seed=secrets.randbits(62),
            num_clients=len(clients),
            bits=self._bits,
            neighbours=self._neighbours,
            threshold=self._threshold,
            clip_range=self._clip_range,
            min_survivors=self._min_survivors,
            weight_cap=self._weight_cap,
        )
        fixed_point_codec(bits=settings.bits, clip=settings.clip_range, max_summands=len(clients))
        transport = FlowerSecureTransport(
            grid,
            clients,
            timeout=self._timeout,
            message_type=MessageType.TRAIN,
            names=names,
            train_config=self._train_config,
            weight_cap=self._weight_cap,
        )
        history = _History()
        outcome = run_secure_fedavg(
            transport=transport,
            recorder=history,
            initial_weights=initial,
            settings=settings,
            source=os.urandom,
            sample_rng=SecureRandom(),
        )
        final = [np.asarray(w).astype(a.dtype) for w, a in zip(outcome.weights, initial, strict=True)]
        return SecAggResult(
            arrays=arrays_record(final, names),
            rounds_released=outcome.rounds_completed - outcome.rounds_aborted,
            rounds_aborted=outcome.rounds_aborted,
            history=tuple(history.rounds),
        )
