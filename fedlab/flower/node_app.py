"""fedlab's ClientApp for ``flwr run``: device nodes serve their own files, others a partition.

A device node (a SuperNode started by ``fedlab client``, see :func:`fedlab.flower.edge.is_device_node`)
is served by :class:`~fedlab.flower.edge.EdgeClient`; any other node by
:class:`~fedlab.flower.client.FedlabClient` on its simulation partition. Both acknowledge the
server's run-end query; a device also records it in its state directory
(:mod:`fedlab.flower.run_end`), which is how ``fedlab client`` knows to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlab.core.errors import FedlabError
from fedlab.flower.client import ClientDataSource, ConfigSource, FedlabClient, client_app_of
from fedlab.flower.client_privacy import BUDGET_REFUSED
from fedlab.flower.edge import EdgeClient, EdgeDataSource, device_settings, is_device_node
from fedlab.flower.run_end import run_end_reason, write_run_ended

LOG = logging.getLogger("fedlab.client")

DEVICE_FAILED = BUDGET_REFUSED + 1
"""The Error code of a device's FedlabError (bad data, an unreadable budget file)."""


class NodeDispatcher:
    """Sends each message to the edge client (device nodes) or the simulation client.

    The edge client is built on first use and not pickled (Ray pickles simulation apps).
    """

    def __init__(self, simulation: ClientDataSource, config: ConfigSource) -> None:
        self._simulation = FedlabClient(simulation)
        self._config = config
        self._edge: EdgeClient | None = None

    def __getstate__(self) -> dict[str, object]:
        return {"_simulation": self._simulation, "_config": self._config, "_edge": None}

    def _edge_client(self) -> EdgeClient:
        if self._edge is None:
            self._edge = EdgeClient(EdgeDataSource(self._config))
        return self._edge

    def train(self, msg: Message, context: Context) -> Message:
        """Route a train message."""
        if is_device_node(context.node_config):
            return _guard(lambda: self._edge_client().train(msg, context), msg)
        return self._simulation.train(msg, context)

    def query(self, msg: Message, context: Context) -> Message:
        """Route the identity query; acknowledge the run-end query (a device records it first)."""
        reason = run_end_reason(msg.content)
        if reason is not None:
            return _guard(lambda: self._run_ended(msg, context, reason), msg)
        if is_device_node(context.node_config):
            return _guard(lambda: self._edge_client().query(msg, context), msg)
        return self._simulation.query(msg, context)

    def secagg(self, msg: Message, context: Context) -> Message:
        """Route a SecAgg+ stage message."""
        if is_device_node(context.node_config):
            return _guard(lambda: self._edge_client().secagg(msg, context), msg)
        return self._simulation.secagg(msg, context)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Route an evaluate message."""
        if is_device_node(context.node_config):
            return _guard(lambda: self._edge_client().evaluate(msg, context), msg)
        return self._simulation.evaluate(msg, context)

    @staticmethod
    def _run_ended(msg: Message, context: Context, reason: str) -> Message:
        if is_device_node(context.node_config):
            state_dir = device_settings(context.node_config).state_dir
            try:
                write_run_ended(state_dir, run_id=context.run_id, stopped_because=reason)
            except OSError as exc:
                raise FedlabError(f"{state_dir}: cannot record the end of the run: {exc}") from None
            LOG.info("the server ended the run: %s", reason)
        return Message(RecordDict(), reply_to=msg)


def _guard(action: Callable[[], Message], msg: Message) -> Message:
    """A FedlabError (bad data, budget file) becomes an error reply with one line, logged locally."""
    try:
        return action()
    except FedlabError as exc:
        LOG.error("%s", exc)
        return Message(Error(code=DEVICE_FAILED, reason=str(exc)), reply_to=msg)


def make_node_client_app(simulation: ClientDataSource, config: ConfigSource) -> ClientApp:
    """The ClientApp for ``flwr run``: device nodes train on their files, others on partitions."""
    return client_app_of(NodeDispatcher(simulation, config))
