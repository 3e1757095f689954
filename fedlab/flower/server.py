"""fedlab's Message-API ServerApp: drives rounds through the Grid, nothing more.

The round logic is transport-free: the strategy samples and aggregates deltas,
:class:`~fedlab.training.recorder.RunRecorder` commits privacy spending before it
releases each global model. This module only moves messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlab.core.config import RunConfig
from fedlab.core.errors import FedlabError
from fedlab.core.metrics import RoundObserver, SilentObserver
from fedlab.data.federated import build_federated_data
from fedlab.flower.records import TrainReport, arrays_record, client_id_from_content, split_replies
from fedlab.flower.strategy import FedlabFedAvg
from fedlab.training.models import build_model, get_weights
from fedlab.training.recorder import ClientRoundResult, RunRecorder

LOG = logging.getLogger("fedlab.server")

SettingsSource = Callable[[Context], "ServerSettings"]


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ServerApp needs, resolved at the edge.

    Attributes:
        config: The validated run configuration.
        run_dir: Where the ledger, metrics, model and summary go.
        min_nodes: Nodes that must be connected before the first round.
        observer: Receives progress (a progress bar in the CLI).

    """

    config: RunConfig
    run_dir: Path
    min_nodes: int
    observer: RoundObserver = field(default_factory=SilentObserver)


def round_seed(seed: int, round_num: int) -> int:
    """Derive the public per-round seed that clients mix with their own identity.

    >>> round_seed(0, 1) == round_seed(0, 1) != round_seed(0, 2)
    True
    """
    return int(np.random.SeedSequence([seed, round_num]).generate_state(1, dtype=np.uint64)[0] >> 1)


def wait_for_nodes(grid: Grid, *, count: int, timeout: float) -> list[int]:
    """Wait until at least ``count`` nodes are connected; raise FedlabError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise FedlabError(f"only {len(nodes)} of {count} client nodes connected within {timeout:g} s")
        time.sleep(0.2)


def discover_clients(grid: Grid, node_ids: Sequence[int], *, timeout: float) -> dict[int, str]:
    """Ask every connected node for its stable client id (the identity query).

    Returns:
        Node id to client id for every node that answered well-formed.

    Raises:
        FedlabError: If two nodes claim the same client id.
    """
    query = [
        Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids
    ]
    clients: dict[int, str] = {}
    for reply in grid.send_and_receive(query, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            LOG.warning("node %d did not answer the identity query: %s", node, reply.error.reason)
            continue
        try:
            clients[node] = client_id_from_content(reply.content)
        except (KeyError, ValueError) as exc:
            LOG.warning("node %d sent a malformed identity: %s", node, exc)
    if len(set(clients.values())) != len(clients):
        raise FedlabError("two client nodes claim the same client id")
    return clients


def _round_results(reports: Sequence[TrainReport]) -> list[ClientRoundResult]:
    return [
        ClientRoundResult(
            client_id=r.client_id,
            num_examples=r.update.num_examples,
            train_loss=r.train_loss,
            epsilon=r.epsilon,
            noise_multiplier=r.noise_multiplier,
            sample_rate=r.sample_rate,
            steps=r.steps,
        )
        for r in reports
    ]


def run_federation(grid: Grid, settings: ServerSettings) -> dict[str, Any]:
    """Run every configured round against ``grid`` and return the run summary.

    Each round: sample nodes, send them the global model, collect their deltas,
    average them, commit the privacy spending, then release the new model.
    """
    config = settings.config
    data = build_federated_data(config.data, seed=config.run.seed)
    model = build_model(
        config.model.kind,
        feature_shape=data.feature_shape,
        num_classes=data.num_classes,
        hidden=config.model.hidden,
        seed=config.run.seed,
    )
    recorder = RunRecorder(
        run_dir=settings.run_dir, config=config, model=model, test_set=data.test, observer=settings.observer
    )
    nodes = wait_for_nodes(grid, count=settings.min_nodes, timeout=config.server.timeout)
    strategy = FedlabFedAvg(
        fraction_train=config.server.fraction_train,
        min_available_nodes=settings.min_nodes,
        rng=np.random.default_rng([config.run.seed, 1]),
        clients=discover_clients(grid, nodes, timeout=config.server.timeout),
    )
    weights = get_weights(model)
    recorder.start()
    for round_num in range(1, config.run.rounds + 1):
        started = time.perf_counter()
        train_config = ConfigRecord({"round-seed": round_seed(config.run.seed, round_num)})
        messages = strategy.configure_train(round_num, arrays_record(weights), train_config, grid)
        replies = grid.send_and_receive(messages, timeout=config.server.timeout)
        reports, failures = split_replies(replies)
        for reason in failures:
            LOG.warning("round %d: dropped a reply: %s", round_num, reason)
        if reports:
            weights = strategy.aggregate_reports(weights, reports)
        recorder.release_round(
            round_num,
            weights,
            _round_results(reports),
            seconds=time.perf_counter() - started,
            extra={"failures": len(failures)},
        )
    return recorder.finish()


def make_server_app(
    settings_source: SettingsSource, *, after_run: Callable[[Path], object] | None = None
) -> ServerApp:
    """Build the ServerApp.

    Args:
        settings_source: Turns the run's Context into settings.
        after_run: Called with the run directory once the run finished (e.g. plots).

    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        settings = settings_source(context)
        run_federation(grid, settings)
        if after_run is not None:
            after_run(settings.run_dir)

    return app
