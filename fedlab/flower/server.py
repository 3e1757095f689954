"""fedlab's Message-API ServerApp: drives rounds through the Grid, nothing more.

The round logic is transport-free (:func:`~fedlab.algorithms.runs.run_configured`
samples, aggregates and applies the privacy mechanism;
:class:`~fedlab.training.recorder.RunRecorder` commits privacy spending before it
releases each global model). This module only moves messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid import InMemoryGrid

from fedlab.algorithms.federation import RoundPlan
from fedlab.algorithms.runs import run_configured
from fedlab.core.config import RunConfig
from fedlab.core.errors import FAILED_RUN_LINE, FedlabError
from fedlab.core.metrics import RoundObserver, SilentObserver
from fedlab.core.reports import RoundReplies
from fedlab.flower.exchange import exchange
from fedlab.flower.records import (
    ARRAYS,
    CONFIG,
    FEATURE_RANGE,
    arrays_record,
    client_id_from_content,
    split_replies,
)
from fedlab.flower.run_end import announce_run_end
from fedlab.flower.secure_transport import FlowerSecureTransport
from fedlab.training.recorder import FAILED
from fedlab.training.run_setup import set_up_run

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
        secure_noise: Draw the server's randomness from secret streams (deployment).
        resume: Go on with the run in ``run_dir`` after its last committed round; clients'
            epsilons are then charged on their ledger histories (their context state is new).
        announce_end: Once the run stopped, tell every connected node why (the run-end query of
            :mod:`fedlab.flower.run_end`), so that ``fedlab client`` stops instead of retrying.

    """

    config: RunConfig
    run_dir: Path
    min_nodes: int
    observer: RoundObserver = field(default_factory=SilentObserver)
    secure_noise: bool = False
    resume: bool = False
    announce_end: bool = False


WAIT_REPORT_S = 5.0
"""How often :func:`wait_for_nodes` says how many nodes it is waiting for."""
SIMULATION_SETTLE_S = 10.0
"""A simulation registers its SuperNodes at once: a count unchanged this long is final."""


def wait_for_nodes(grid: Grid, *, count: int, timeout: float, settle: float | None = None) -> list[int]:
    """Wait until at least ``count`` nodes are connected, saying so every :data:`WAIT_REPORT_S` s.

    Args:
        grid: The Grid.
        count: Nodes needed.
        timeout: Seconds to wait in all.
        settle: A federation whose nodes all register at once (Flower's simulation engine): fail
            when the count stays unchanged and short this many seconds. None: wait to the timeout.

    Raises:
        FedlabError: One line: on timeout, or a settled count short of ``count``.
    """
    start = time.monotonic()
    reported = changed = start
    seen = -1
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        now = time.monotonic()
        if len(nodes) != seen:
            seen, changed = len(nodes), now
        if settle is not None and seen > 0 and now - changed > settle:
            raise FedlabError(
                f"the simulation federation has {seen} SuperNodes but the run needs {count} "
                f"(data.num_clients): run with --federation-config 'num-supernodes={count}'"
            )
        if now - start > timeout:
            raise FedlabError(f"only {len(nodes)} of {count} client nodes connected within {timeout:g} s")
        if now - reported >= WAIT_REPORT_S:
            log(INFO, "fedlab: waiting for %d client nodes (%d connected)", count, len(nodes))
            reported = now
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


class FlowerTransport:
    """Carries rounds over a Flower Grid: one train message per planned client's node.

    Args:
        grid: The Grid of the running ServerApp.
        clients: Node id to client id, from the identity query.
        timeout: Seconds to wait for a round's replies; late clients count as failed. A client
            whose node drops and rejoins within it is asked again (see :func:`exchange`).
        feature_range: The central test set's smallest and largest feature, announced in the
            train config (``feature-range``) so that a device can tell its data is scaled otherwise.
    """

    def __init__(
        self,
        grid: Grid,
        clients: Mapping[int, str],
        *,
        timeout: float,
        feature_range: tuple[float, float] | None = None,
    ) -> None:
        self._grid = grid
        self._feature_range = feature_range
        self._clients = dict(clients)
        self._node_of = {client_id: node for node, client_id in clients.items()}
        self._timeout = timeout

    def available_clients(self) -> list[str]:
        """Client ids of the nodes connected now."""
        connected = set(self._grid.get_node_ids())
        return [cid for node, cid in self._clients.items() if node in connected]

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Send the planned clients the model and the round seed; decode their replies."""
        config = ConfigRecord({"round-seed": plan.seed, "server-round": plan.round_num, **plan.instructions})
        if self._feature_range is not None:
            config[FEATURE_RANGE] = list(self._feature_range)
        nodes = [self._node_of[cid] for cid in plan.client_ids]
        arrays = arrays_record(weights)
        by_node = exchange(
            self._grid, lambda targets: train_messages(targets, arrays, config), nodes, timeout=self._timeout
        )
        replies = split_replies({cid: by_node.get(self._node_of[cid]) for cid in plan.client_ids})
        for reason in replies.failures:
            LOG.warning("round %d: dropped a reply: %s", plan.round_num, reason)
        return replies


def train_messages(node_ids: Sequence[int], arrays: ArrayRecord, config: ConfigRecord) -> list[Message]:
    """One train message per node, each carrying the global model and the round config."""
    content = RecordDict({ARRAYS: arrays, CONFIG: config})
    return [Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in node_ids]


def run_federation(grid: Grid, settings: ServerSettings) -> dict[str, Any]:
    """Run every configured round against ``grid`` and return the run summary.

    A run that cannot go on (too few nodes, two nodes claiming one client, a refused resume
    step) still writes ``summary.json``, with ``stopped_because`` = ``failed: REASON``.
    """
    config = settings.config
    setup = set_up_run(config, run_dir=settings.run_dir, observer=settings.observer, resume=settings.resume)
    if settings.resume:
        setup.recorder.account_from_ledger()
    try:
        settle = SIMULATION_SETTLE_S if isinstance(grid, InMemoryGrid) else None
        nodes = wait_for_nodes(grid, count=settings.min_nodes, timeout=config.server.timeout, settle=settle)
        clients = discover_clients(grid, nodes, timeout=config.server.timeout)
        test = setup.data.test.x
        transport: FlowerTransport | FlowerSecureTransport = FlowerTransport(
            grid, clients, timeout=config.server.timeout, feature_range=(float(test.min()), float(test.max()))
        )
        if config.secagg.enabled:
            transport = FlowerSecureTransport(
                grid, clients, timeout=config.server.timeout, weight_cap=config.secure_weight_cap()
            )
        outcome = run_configured(
            config,
            transport=transport,
            recorder=setup.recorder,
            initial_weights=setup.initial_weights,
            num_clients=len(clients),
            secure_noise=settings.secure_noise,
            resume=setup.recorder.resumed,
        )
    except FedlabError as exc:
        return setup.recorder.finish(stopped_because=f"{FAILED}{exc}")  # one line, no traceback
    return setup.recorder.finish(stopped_because=outcome.stopped_because)


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
        summary = run_federation(grid, settings)
        if str(summary["stopped_because"]).startswith(FAILED):
            log(ERROR, "%s%s", FAILED_RUN_LINE, summary["stopped_because"])
        if after_run is not None:
            after_run(settings.run_dir)
        if settings.announce_end:
            announce_run_end(grid, str(summary["stopped_because"]))

    return app
