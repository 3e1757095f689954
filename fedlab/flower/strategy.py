"""fedlab's FedAvg strategy, built on Flower's Message-API FedAvg.

Flower's FedAvg samples with Python's global ``random`` and averages full weights;
this strategy samples from an explicit numpy generator and averages the clients'
deltas (the additive update type) with :func:`fedlab.algorithms.fedavg.apply_fedavg`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlab.algorithms.fedavg import apply_fedavg
from fedlab.algorithms.sampling import sample_fraction
from fedlab.core.reports import TrainReport
from fedlab.flower.records import ARRAYS, CONFIG, split_replies


class FedlabFedAvg(FedAvg):
    """Weighted FedAvg over client deltas, with seeded sampling.

    Args:
        fraction_train: Fraction of the available nodes sampled each round.
        min_available_nodes: Nodes that must be connected before a round starts.
        rng: The generator client sampling draws from.

    """

    def __init__(
        self,
        *,
        fraction_train: float,
        min_available_nodes: int,
        rng: np.random.Generator,
        clients: Mapping[int, str],
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_available_nodes=min_available_nodes,
        )
        self._rng = rng
        self._node_of = {client_id: node_id for node_id, client_id in clients.items()}
        self._global: list[np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes from the explicit generator and send them the global model."""
        self._global = arrays.to_numpy_ndarrays()
        connected = set(grid.get_node_ids())
        available = [cid for cid, node in self._node_of.items() if node in connected]
        sampled = sample_fraction(available, fraction=self.fraction_train, rng=self._rng)
        node_ids = [self._node_of[cid] for cid in sampled]
        config["server-round"] = server_round
        return self.messages_for(node_ids, arrays, config)

    def node_of(self, client_id: str) -> int:
        """The node id serving a client id."""
        return self._node_of[client_id]

    def messages_for(
        self, node_ids: Sequence[int], arrays: ArrayRecord, config: ConfigRecord
    ) -> list[Message]:
        """One train message per node, each carrying the global model and the round config."""
        content = RecordDict({ARRAYS: arrays, CONFIG: config})
        return [Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in node_ids]

    def aggregate_reports(
        self, global_weights: Sequence[np.ndarray], reports: Sequence[TrainReport]
    ) -> list[np.ndarray]:
        """Return new global weights: old weights plus the example-weighted mean delta."""
        return apply_fedavg(global_weights, [r.update for r in reports])

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: decode replies, average the deltas onto the last global model."""
        reports = split_replies(replies).reports
        if not reports or self._global is None:
            return None, None
        weights = self.aggregate_reports(self._global, reports)
        total = sum(r.update.num_examples for r in reports)
        loss = sum(r.train_loss * r.update.num_examples for r in reports) / total
        return ArrayRecord(weights), MetricRecord({"train-loss": loss, "num-examples": total})
