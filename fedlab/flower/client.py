"""fedlab's Message-API ClientApp: local DP-SGD training behind ``@app.train``.

The trainer (model, optimizer, Opacus wrapper and DP data loader) is built once per
client in a process and reused every round. Flower's Ray engine unpickles the
ClientApp afresh for every message, so a :class:`FedlabClient` unpickles into the one
instance its process already holds for the same app (``_PROCESS_CLIENTS``). That memo
is fedlab's only process-level state, and results never depend on it: a rebuilt
trainer reseeds from the round seed and gives the same update. The client's privacy accountant
history lives in ``context.state`` (its own budget, accumulated over every round it
took part in) and its cumulative epsilon goes back to the server with its update.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlab.core.config import RunConfig
from fedlab.data.federated import build_federated_data
from fedlab.data.types import ArrayDataset, FederatedData
from fedlab.flower.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    TrainReport,
    identity_reply_content,
    train_reply_content,
)
from fedlab.training.device import resolve_device
from fedlab.training.local import (
    DpSgdSpec,
    LocalTrainer,
    OptimSpec,
    PrivacyStep,
    evaluate,
    noise_multiplier_for_epsilon,
    poisson_plan,
)
from fedlab.training.models import build_model, set_weights

PRIVACY_STATE = "fedlab-privacy"

ConfigSource = Callable[[Context], RunConfig]


@dataclass(frozen=True)
class ClientData:
    """A client's identity, its local training data and the task's shape."""

    client_id: str
    train: ArrayDataset
    num_classes: int
    feature_shape: tuple[int, ...]


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


def load_history(state: RecordDict) -> tuple[PrivacyStep, ...]:
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
    return tuple(PrivacyStep(noise_multiplier=z, sample_rate=q, steps=int(t)) for z, q, t in rows)


def store_history(state: RecordDict, history: Sequence[PrivacyStep]) -> None:
    """Write the client's accountant history into its persistent context state."""
    state.config_records[PRIVACY_STATE] = ConfigRecord(
        {
            "noise-multiplier": [float(h.noise_multiplier) for h in history],
            "sample-rate": [float(h.sample_rate) for h in history],
            "steps": [int(h.steps) for h in history],
        }
    )


def optim_spec(config: RunConfig) -> OptimSpec:
    """The local optimizer settings of a run."""
    t = config.train
    return OptimSpec(
        optimizer=t.optimizer,
        lr=t.lr,
        momentum=t.momentum,
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
    )


CalibrationKey = tuple[float, float, float, int, str]


def dp_spec(
    config: RunConfig, num_examples: int, calibrated: dict[CalibrationKey, float] | None = None
) -> DpSgdSpec | None:
    """The client's DP-SGD settings; a target epsilon is calibrated for all planned rounds.

    Args:
        config: The run configuration.
        num_examples: Size of the client's training data (sets the sample rate).
        calibrated: Optional memo of earlier calibrations (clients of equal size share one).
    """
    dp = config.dp
    if dp.mode != "dpsgd":
        return None
    noise = dp.noise_multiplier
    if noise is None:
        assert dp.target_epsilon is not None  # guaranteed by DpSection validation
        sample_rate, steps_per_round = poisson_plan(num_examples, optim_spec(config))
        key = (dp.target_epsilon, dp.delta, sample_rate, steps_per_round * config.run.rounds, dp.accountant)
        memo = {} if calibrated is None else calibrated
        if key not in memo:
            memo[key] = noise_multiplier_for_epsilon(
                target_epsilon=key[0], delta=key[1], sample_rate=key[2], steps=key[3], accountant=key[4]
            )
        noise = memo[key]
    return DpSgdSpec(
        noise_multiplier=noise, max_grad_norm=dp.max_grad_norm, delta=dp.delta, accountant=dp.accountant
    )


def client_seed(round_seed: int, client_id: str) -> int:
    """Mix the server's public round seed with the client's identity.

    >>> client_seed(7, "1") != client_seed(7, "2")
    True
    """
    words = [round_seed & 0xFFFFFFFF, round_seed >> 32, *client_id.encode()]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


class FedlabClient:
    """Handles train and evaluate messages for any number of clients in one process.

    Trainers are kept per client id (an LRU of ``max_trainers``), so a process that
    serves one client (a device) builds its Opacus-wrapped model exactly once.
    """

    def __init__(self, source: ClientDataSource, *, max_trainers: int = 64, token: str | None = None) -> None:
        self._source = source
        self._max_trainers = max_trainers
        self._token = token or uuid.uuid4().hex
        self._trainers: OrderedDict[str, tuple[RunConfig, LocalTrainer]] = OrderedDict()
        self._calibrated: dict[CalibrationKey, float] = {}

    def __reduce__(self) -> tuple[object, tuple[str, ClientDataSource, int]]:
        """Unpickle into this process's instance for the same app (see module docstring)."""
        return (_client_in_process, (self._token, self._source, self._max_trainers))

    def _trainer(self, config: RunConfig, data: ClientData) -> LocalTrainer:
        cached = self._trainers.get(data.client_id)
        if cached is not None and cached[0] == config:
            self._trainers.move_to_end(data.client_id)
            return cached[1]
        torch.set_num_threads(max(1, int(config.simulation.num_cpus_per_client)))
        model = build_model(
            config.model.kind,
            feature_shape=data.feature_shape,
            num_classes=data.num_classes,
            hidden=config.model.hidden,
            seed=config.run.seed,
        )
        trainer = LocalTrainer(
            model=model,
            x=data.train.x,
            y=data.train.y,
            optim=optim_spec(config),
            dp=dp_spec(config, len(data.train), self._calibrated),
            device=resolve_device(config.train.device),
            seed=config.run.seed,
        )
        self._trainers[data.client_id] = (config, trainer)
        while len(self._trainers) > self._max_trainers:
            self._trainers.popitem(last=False)
        return trainer

    def train(self, msg: Message, context: Context) -> Message:
        """Train on local data from the received global model; reply with the delta."""
        config = self._source.config(context)
        data = self._source.data(context)
        trainer = self._trainer(config, data)
        weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
        seed = int(msg.content.config_records[CONFIG]["round-seed"])  # type: ignore[arg-type]
        result = trainer.train_round(
            weights, history=load_history(context.state), round_seed=client_seed(seed, data.client_id)
        )
        store_history(context.state, result.history)
        report = TrainReport(
            client_id=data.client_id,
            update=result.update,
            train_loss=result.loss,
            # Without DP the release is noiseless: epsilon is infinite, noise 0, all data used.
            epsilon=result.epsilon if result.private else math.inf,
            noise_multiplier=result.noise_multiplier if result.private else 0.0,
            sample_rate=result.sample_rate if result.private else 1.0,
            steps=result.steps,
        )
        return Message(train_reply_content(report), reply_to=msg)

    def query(self, msg: Message, context: Context) -> Message:
        """Answer the server's identity query with this client's stable id."""
        return Message(identity_reply_content(self._source.client_id(context)), reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Evaluate the received global model on the client's local data."""
        config = self._source.config(context)
        data = self._source.data(context)
        model = build_model(
            config.model.kind,
            feature_shape=data.feature_shape,
            num_classes=data.num_classes,
            hidden=config.model.hidden,
            seed=config.run.seed,
        )
        set_weights(model, msg.content.array_records[ARRAYS].to_numpy_ndarrays())
        loss, accuracy = evaluate(model, data.train.x, data.train.y, batch_size=config.train.eval_batch_size)
        metrics = MetricRecord({"num-examples": len(data.train), "loss": loss, "accuracy": accuracy})
        return Message(RecordDict({METRICS: metrics}), reply_to=msg)


_PROCESS_CLIENTS: dict[str, FedlabClient] = {}


def _client_in_process(token: str, source: ClientDataSource, max_trainers: int) -> FedlabClient:
    """Return this process's FedlabClient for ``token``, creating it on first use."""
    client = _PROCESS_CLIENTS.get(token)
    if client is None:
        client = FedlabClient(source, max_trainers=max_trainers, token=token)
        _PROCESS_CLIENTS[token] = client
    return client


def make_client_app(source: ClientDataSource) -> ClientApp:
    """Build the ClientApp serving train and evaluate messages from ``source``."""
    client = FedlabClient(source)
    app = ClientApp()
    app.train()(client.train)
    app.evaluate()(client.evaluate)
    app.query()(client.query)
    return app
