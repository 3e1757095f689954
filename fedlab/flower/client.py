"""fedlab's Message-API ClientApp: local DP-SGD training behind ``@app.train``.

The trainer (model, optimizer, Opacus wrapper and DP data loader) is built once per
client in a process and reused every round. Flower's Ray engine unpickles the
ClientApp afresh for every message, so a :class:`FedlabClient` unpickles into the one
instance its process already holds for the same app (``_PROCESS_CLIENTS``). That memo
is fedlab's only process-level state, and results never depend on it: a rebuilt
trainer restarts its randomness every round (from the round seed under ``fedlab simulate``,
from a fresh client secret otherwise). The client's privacy accountant history lives in
``context.state`` (its own budget, accumulated over every round it took part in) and its
cumulative epsilon goes back to the server with its update.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.core.config import RunConfig
from fedlab.data.federated import build_federated_data
from fedlab.data.types import FederatedData
from fedlab.flower.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    identity_reply_content,
    train_reply_content,
)
from fedlab.flower.secure_client import (
    SecureStageClient,
    secagg_refusal,
    secagg_reply,
    stage_call,
    stored_stage_state,
)
from fedlab.flower.secure_transport import weights_of
from fedlab.privacy.events import ANNOUNCED_CLIP_NORM, GaussianEvent
from fedlab.secagg.errors import SecAggError
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.randomness import fresh_secret

PRIVACY_STATE = "fedlab-privacy"
EVALUATE_REFUSED = 4010
"""Error code of an evaluate message refused under DP."""

ConfigSource = Callable[[Context], RunConfig]


class ClientDataSource(Protocol):
    """Where a client's config and data come from (simulation partition, device files)."""

    def config(self, context: Context) -> RunConfig:
        """The run configuration for this client."""
        ...

    def client_id(self, context: Context) -> str:
        """The client's stable identity (without loading its data)."""
        ...

    def data(self, context: Context) -> ClientData:
        """The client's identity and local data."""
        ...


class PartitionDataSource:
    """Simulation: the client is partition ``node_config['partition-id']`` of the configured data.

    Args:
        config: A fixed config (``fedlab simulate``), or a function reading it from the
            Context (``flwr run``).

    """

    def __init__(self, config: RunConfig | ConfigSource) -> None:
        self._config = config
        self._data: tuple[RunConfig, FederatedData] | None = None

    def config(self, context: Context) -> RunConfig:
        """Return the fixed config or read it from the context."""
        return self._config if isinstance(self._config, RunConfig) else self._config(context)

    def _federated(self, config: RunConfig) -> FederatedData:
        if self._data is None or self._data[0] != config:
            self._data = (config, build_federated_data(config.data, seed=config.run.seed))
        return self._data[1]

    def client_id(self, context: Context) -> str:
        """The partition index, as a string."""
        return str(int(context.node_config["partition-id"]))

    def data(self, context: Context) -> ClientData:
        """Materialize only this client's partition."""
        config = self.config(context)
        federated = self._federated(config)
        partition = int(context.node_config["partition-id"])
        return ClientData(
            client_id=self.client_id(context),
            train=federated.client(partition),
            num_classes=federated.num_classes,
            feature_shape=federated.feature_shape,
        )


def _number_list(record: ConfigRecord, key: str) -> list[float]:
    values = record[key]
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"client state {PRIVACY_STATE}.{key} is not a list of numbers")
    return [float(v) for v in values]


def load_history(state: RecordDict) -> tuple[GaussianEvent, ...]:
    """Read the client's accountant history from its persistent context state."""
    if PRIVACY_STATE not in state.config_records:
        return ()
    record = state.config_records[PRIVACY_STATE]
    rows = zip(
        _number_list(record, "noise-multiplier"),
        _number_list(record, "sample-rate"),
        _number_list(record, "steps"),
        strict=True,
    )
    return tuple(GaussianEvent(noise_multiplier=z, sample_rate=q, steps=int(t)) for z, q, t in rows)


def store_history(state: RecordDict, history: Sequence[GaussianEvent]) -> None:
    """Write the client's accountant history into its persistent context state."""
    state.config_records[PRIVACY_STATE] = ConfigRecord(
        {
            "noise-multiplier": [float(h.noise_multiplier) for h in history],
            "sample-rate": [float(h.sample_rate) for h in history],
            "steps": [int(h.steps) for h in history],
        }
    )


class FedlabClient:
    """Turns Flower messages into :class:`ClientRuntime` calls, for any number of clients.

    The client's accountant history is read from and written back to its Flower
    ``context.state``, so its budget accumulates over every round it took part in.

    Args:
        source: Where each client's config and data come from.
        max_trainers: Trainers kept per process.
        token: Identifies the app instance across Ray's unpickling (see the module docstring).
        seeded: ``fedlab simulate`` only: DP-SGD batches and noise, SecAgg+ keys and masks seeded
            from the run seed, the round seed and the client id (reproducible, and known to the
            server). By default (``flwr run``, devices) every client draws a fresh secret per
            round and ``os.urandom``: the server cannot replay its training.
    """

    def __init__(
        self,
        source: ClientDataSource,
        *,
        max_trainers: int = 64,
        token: str | None = None,
        seeded: bool = False,
    ) -> None:
        self._source = source
        self._max_trainers = max_trainers
        self._token = token or uuid.uuid4().hex
        self._seeded = seeded
        self.runtime = ClientRuntime(max_trainers=max_trainers)
        self.secure = SecureStageClient(self.runtime, seeded=seeded)

    def __reduce__(self) -> tuple[object, tuple[str, ClientDataSource, int, bool]]:
        """Unpickle into this process's instance for the same app (see module docstring)."""
        return (_client_in_process, (self._token, self._source, self._max_trainers, self._seeded))

    def train(self, msg: Message, context: Context) -> Message:
        """Train on local data from the received global model; reply with the delta."""
        config = self._source.config(context)
        data = self._source.data(context)
        weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
        round_config = msg.content.config_records[CONFIG]
        seed = int(round_config["round-seed"])  # type: ignore[arg-type]
        clip = round_config.get(ANNOUNCED_CLIP_NORM)
        report, history = self.runtime.train(
            config,
            data,
            weights,
            history=load_history(context.state),
            round_seed=seed,
            clip_norm=float(clip) if isinstance(clip, (int, float)) else None,
            secret=None if self._seeded else fresh_secret(),
        )
        store_history(context.state, history)
        return Message(train_reply_content(report), reply_to=msg)

    def secagg(self, msg: Message, context: Context) -> Message:
        """Answer one SecAgg+ stage (``train.secagg``); keep the secret round state in ``context.state``.

        A refused stage (protocol violation, malformed message) or a simulated dropout answers
        with an error and forgets the round's state; the server counts the client as dropped.
        """
        config = self._source.config(context)
        data = self._source.data(context)
        try:
            answer = self.secure.answer(
                config,
                data,
                stage_call(msg),
                state=stored_stage_state(context),
                weights=weights_of(msg.content),
                history=load_history(context.state),
            )
        except (KeyError, ValueError, SecAggError) as exc:
            return secagg_refusal(msg, context, exc)
        if answer.history is not None:
            store_history(context.state, answer.history)
        return secagg_reply(msg, context, answer)

    def query(self, msg: Message, context: Context) -> Message:
        """Answer the server's identity query with this client's stable id."""
        return identity_reply(self._source, msg, context)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Evaluate the received global model on the client's local data."""
        return evaluate_reply(self.runtime, self._source, msg, context)


def identity_reply(source: ClientDataSource, msg: Message, context: Context) -> Message:
    """Reply to the identity query with the source's stable client id."""
    return Message(identity_reply_content(source.client_id(context)), reply_to=msg)


def evaluate_reply(
    runtime: ClientRuntime, source: ClientDataSource, msg: Message, context: Context
) -> Message:
    """Evaluate the received model on the client's local data; reply with loss and accuracy.

    Under any DP mode the client refuses: its loss and accuracy on any model the server sends
    are computed from its data without noise, so a server could query them to test whether an
    example is in the data (fedlab's server evaluates centrally and never asks).
    """
    config = source.config(context)
    if config.dp.enabled:
        reason = (
            f"dp.mode = {config.dp.mode!r}: evaluation on local data would leave the client without noise"
        )
        return Message(Error(code=EVALUATE_REFUSED, reason=reason), reply_to=msg)
    data = source.data(context)
    weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
    loss, accuracy = runtime.evaluate(config, data, weights)
    metrics = MetricRecord({"num-examples": len(data.train), "loss": loss, "accuracy": accuracy})
    return Message(RecordDict({METRICS: metrics}), reply_to=msg)


_PROCESS_CLIENTS: dict[str, FedlabClient] = {}


def _client_in_process(token: str, source: ClientDataSource, max_trainers: int, seeded: bool) -> FedlabClient:
    """Return this process's FedlabClient for ``token``, creating it on first use."""
    client = _PROCESS_CLIENTS.get(token)
    if client is None:
        client = FedlabClient(source, max_trainers=max_trainers, token=token, seeded=seeded)
        _PROCESS_CLIENTS[token] = client
    return client


class MessageHandlers(Protocol):
    """What a fedlab ClientApp answers: train, SecAgg+ stages, evaluate and the identity query."""

    def train(self, msg: Message, context: Context) -> Message:
        """Answer a train message."""
        ...

    def secagg(self, msg: Message, context: Context) -> Message:
        """Answer a ``train.secagg`` stage message."""
        ...

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Answer an evaluate message."""
        ...

    def query(self, msg: Message, context: Context) -> Message:
        """Answer the identity query."""
        ...


def client_app_of(handlers: MessageHandlers) -> ClientApp:
    """A ClientApp that routes each message type to ``handlers``."""
    app = ClientApp()
    app.train()(handlers.train)
    app.train("secagg")(handlers.secagg)
    app.evaluate()(handlers.evaluate)
    app.query()(handlers.query)
    return app


def make_client_app(source: ClientDataSource, *, seeded: bool = False) -> ClientApp:
    """Build the ClientApp serving train, evaluate and SecAgg+ stage messages from ``source``.

    ``seeded`` (``fedlab simulate`` only) makes every client's randomness reproducible from the
    run seed; see :class:`FedlabClient`.
    """
    return client_app_of(FedlabClient(source, seeded=seeded))
