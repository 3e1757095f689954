"""An in-process SecureTransport for tests: real clients (ClientRuntime + digits), real wire bytes.

Every stage message is serialized with the Flower transport's codec, answered by
:class:`fedlab.flower.secure_client.SecureStageClient` with its state kept as bytes between stages
(as under Flower's Ray engine), and the reply parsed back. ``dropouts`` injects losses:
round -> stage -> client ids that send nothing from that stage on. ``carried`` keeps every reply
the "server" received, to check what it could see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlab.algorithms.secure_messages import ClientStageMessage, StageReplies, StageRequest
from fedlab.algorithms.secure_wire import call_bytes, parse_call
from fedlab.core.config import RunConfig
from fedlab.core.metrics import RoundMetrics
from fedlab.core.reports import TrainReport
from fedlab.data.federated import build_federated_data
from fedlab.flower.secure_client import SecureStageClient
from fedlab.flower.secure_transport import decode_reply
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.ledger import FederationSpend
from fedlab.secagg.errors import SecAggError, Stage
from fedlab.training.client_runtime import ClientData, ClientRuntime

Dropouts = Mapping[int, Mapping[Stage, Set[str]]]


@dataclass
class LocalSecureTransport:
    """Runs the clients of ``config`` in this process."""

    config: RunConfig
    dropouts: Dropouts = field(default_factory=dict)
    carried: list[tuple[int, Stage, str, ClientStageMessage]] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)
    histories: dict[str, tuple[GaussianEvent, ...]] = field(default_factory=dict)
    seeded: bool = True  # simulation randomness (reproducible); False: a device's secret randomness

    def __post_init__(self) -> None:
        self.federated = build_federated_data(self.config.data, seed=self.config.run.seed)
        self.runtime = ClientRuntime()
        self.client = SecureStageClient(self.runtime, seeded=self.seeded)

    def data(self, cid: str) -> ClientData:
        return ClientData(
            client_id=cid,
            train=self.federated.client(int(cid)),
            num_classes=self.federated.num_classes,
            feature_shape=self.federated.feature_shape,
        )

    def available_clients(self) -> list[str]:
        return [str(i) for i in range(self.config.data.num_clients)]

    def _lost(self, round_num: int, stage: Stage, cid: str) -> bool:
        plan = self.dropouts.get(round_num, {})
        return any(cid in clients for s, clients in plan.items() if s <= stage)

    def stage(self, request: StageRequest) -> StageReplies:
        replies: dict[str, ClientStageMessage] = {}
        failures: list[str] = []
        for cid in request.messages:
            if self._lost(request.round_num, request.stage, cid):
                self.states.pop(cid, None)
                failures.append(f"client {cid}: injected dropout")
                continue
            try:
                answer = self.client.answer(
                    self.config,
                    self.data(cid),
                    parse_call(call_bytes(request.call(cid))),
                    state=self.states.get(cid),
                    weights=request.weights,
                    history=self.histories.get(cid, ()),
                )
            except (ValueError, SecAggError) as exc:
                self.states.pop(cid, None)
                failures.append(f"client {cid}: refused ({exc})")
                continue
            if answer.history is not None:
                self.histories[cid] = answer.history
            if answer.state is None:
                self.states.pop(cid, None)
            else:
                self.states[cid] = answer.state
            if answer.reply is None:
                failures.append(f"client {cid}: simulated dropout")
                continue
            reply = decode_reply(answer.reply, request)
            self.carried.append((request.round_num, request.stage, cid, reply))
            replies[cid] = reply
        return StageReplies(replies, tuple(failures))


@dataclass
class MemoryRecorder:
    """Keeps what a RunRecorder would release, without evaluation."""

    released: list[
        tuple[int, list[np.ndarray], tuple[TrainReport, ...], dict[str, Any], list[FederationSpend]]
    ] = field(default_factory=list)

    def start(self) -> None:
        pass

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
        self.released.append(
            (round_num, [np.array(w) for w in weights], tuple(reports), dict(extra or {}), list(federation))
        )
        return RoundMetrics(
            round=round_num, accuracy=0.0, loss=0.0, train_loss=0.0, epsilon_max=0.0, epsilon_mean=0.0,
            clients=len(reports), seconds=seconds,
        )  # fmt: skip
