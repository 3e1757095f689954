"""The in-process simulator: clients train one after another in this process, no Ray.

It runs exactly the server and client logic of a deployment: the transport-free round
loop (:func:`fedlab.algorithms.federation.run_fedavg`), the same
:class:`~fedlab.training.client_runtime.ClientRuntime` a Flower client uses, and the
same :class:`~fedlab.training.recorder.RunRecorder`. Only the message transport is
replaced by direct calls. Each client's accountant history is kept per client id, as
a Flower client keeps it in its context state. Client data is materialized only when
the client is sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.algorithms.federation import FedAvgSettings, RoundPlan, run_fedavg
from fedlab.core.config import RunConfig
from fedlab.core.metrics import RoundObserver
from fedlab.core.reports import RoundReplies
from fedlab.data.federated import build_federated_data
from fedlab.data.types import FederatedData
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.local import PrivacyStep
from fedlab.training.models import build_model, get_weights
from fedlab.training.recorder import RunRecorder


class InlineTransport:
    """Delivers a round to in-process clients by calling their runtime directly.

    Args:
        config: The run configuration every client uses.
        data: The federated data set; client ``i`` is partition ``i``.
        runtime: The client runtime (trainer cache) shared by all clients.
    """

    def __init__(self, config: RunConfig, data: FederatedData, runtime: ClientRuntime) -> None:
        self._config = config
        self._data = data
        self._runtime = runtime
        self._histories: dict[str, tuple[PrivacyStep, ...]] = {}

    def available_clients(self) -> list[str]:
        """Every client of the data set."""
        return [str(i) for i in range(self._data.num_clients)]

    def _client_data(self, client_id: str) -> ClientData:
        return ClientData(
            client_id=client_id,
            train=self._data.client(int(client_id)),
            num_classes=self._data.num_classes,
            feature_shape=self._data.feature_shape,
        )

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Train each planned client in turn from ``weights``."""
        reports = []
        for client_id in plan.client_ids:
            report, history = self._runtime.train(
                self._config,
                self._client_data(client_id),
                weights,
                history=self._histories.get(client_id, ()),
                round_seed=plan.seed,
            )
            self._histories[client_id] = history
            reports.append(report)
        return RoundReplies(reports=tuple(reports))


def simulate_inline(config: RunConfig, run_dir: Path, observer: RoundObserver) -> dict[str, Any]:
    """Run ``config`` in this process and return the run summary."""
    data = build_federated_data(config.data, seed=config.run.seed)
    model = build_model(
        config.model.kind,
        feature_shape=data.feature_shape,
        num_classes=data.num_classes,
        hidden=config.model.hidden,
        seed=config.run.seed,
    )
    recorder = RunRecorder(run_dir=run_dir, config=config, model=model, test_set=data.test, observer=observer)
    run_fedavg(
        transport=InlineTransport(config, data, ClientRuntime()),
        recorder=recorder,
        initial_weights=get_weights(model),
        settings=FedAvgSettings(
            rounds=config.run.rounds, fraction_train=config.server.fraction_train, seed=config.run.seed
        ),
    )
    return recorder.finish()
