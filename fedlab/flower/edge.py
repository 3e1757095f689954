"""The edge client: a device's own data, its own persistent privacy budget, its own refusal.

A SuperNode started by ``fedlab client`` carries the device settings in its node
config (``data-path``, ``state-dir``, ``device-id``, ``max-epsilon`` and optionally
``feature-shape``, ``num-classes``, ``label-column``). The ClientApp then serves that
device with :class:`EdgeClient`; without those keys it serves a simulation partition.

Budget rule (the device owner's guarantee, independent of the server): before
training, the client computes the epsilon it would have after the round — its whole
persisted history plus the round's planned Poisson steps, with the same accountant
the training uses — and refuses the round if that exceeds ``max-epsilon``. After
training, the round is committed to ``STATE/budget.sqlite`` *before* the reply with
the update is returned to Flower, so a crash never loses a released round. A device
never trains a round twice: a round already in its budget (a restarted device asked
again for the round it released just before it died) is refused before training.

Under secure aggregation (``train.secagg`` stage messages) the same rule applies: the
device refuses to join a round at the key-advertising stage, and checks again at the
masked-input stage, where it trains; that round is committed before the masked input
is returned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp

from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError, DataError, FedlabError
from fedlab.data.files import load_local_files
from fedlab.data.types import ArrayDataset
from fedlab.flower.client import (
    SECAGG_STATE,
    ClientDataSource,
    ConfigSource,
    FedlabClient,
    client_app_of,
    evaluate_reply,
    identity_reply,
    secagg_refusal,
    secagg_reply,
    stage_call_bytes,
    stored_stage_state,
)
from fedlab.flower.records import ARRAYS, CONFIG, train_reply_content
from fedlab.flower.secure_transport import weights_of
from fedlab.privacy.client_budget import ClientBudget, RefusalRow, SpendRow
from fedlab.secagg.errors import SecAggError, Stage
from fedlab.training.accounting import PrivacyStep, epsilon_from_history
from fedlab.training.client_runtime import CalibrationKey, ClientData, ClientRuntime, dp_spec, optim_spec
from fedlab.training.local import poisson_plan
from fedlab.training.randomness import fresh_secret
from fedlab.training.secure_client import SecureClient, parse_call

LOG = logging.getLogger("fedlab.client")

DATA_PATH = "data-path"
STATE_DIR = "state-dir"
DEVICE_ID = "device-id"
MAX_EPSILON = "max-epsilon"
FEATURE_SHAPE = "feature-shape"
NUM_CLASSES = "num-classes"
LABEL_COLUMN = "label-column"
BUDGET_FILE = "budget.sqlite"
BUDGET_REFUSED = 4001  # the Error code of a refusal (outside Flower's own codes)


@dataclass(frozen=True)
class DeviceSettings:
    """A device's settings, parsed once from the SuperNode's node config.

    Attributes:
        device_id: The stable identity the device answers to the identity query.
        data_path: Its local data (folder of class folders, CSV or Parquet).
        state_dir: Where its budget file lives.
        max_epsilon: The most it will ever spend (``inf``: no limit).
        feature_shape: Reshape each example to this (e.g. ``(1, 8, 8)``), or keep.
        num_classes: Number of classes of the task, or as found in the data.
        label_column: Label column of a table.
    """

    device_id: str
    data_path: Path
    state_dir: Path
    max_epsilon: float = math.inf
    feature_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    label_column: str = "label"

    @property
    def budget_path(self) -> Path:
        """The device's budget file."""
        return self.state_dir / BUDGET_FILE


def is_device_node(node_config: Mapping[str, Any]) -> bool:
    """Whether the SuperNode was started for a device (``fedlab client``)."""
    return DATA_PATH in node_config


def _text(node_config: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = node_config.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"node config {key!r}: must be a non-empty string; got {value!r}")
    return value


def device_settings(node_config: Mapping[str, Any]) -> DeviceSettings:
    """Parse the device settings from a node config.

    >>> device_settings({"data-path": "d.csv", "state-dir": "s", "device-id": "pi-1",
    ...                  "max-epsilon": 4.0, "feature-shape": "1,8,8"}).feature_shape
    (1, 8, 8)
    >>> device_settings({"data-path": "d.csv", "state-dir": "s", "device-id": "pi-1", "max-epsilon": -2})
    Traceback (most recent call last):
    ...
    fedlab.core.errors.ConfigError: node config 'max-epsilon': must be > 0 (or 0 for no limit); got -2
    """
    raw_max = node_config.get(MAX_EPSILON, 0.0)
    if isinstance(raw_max, bool) or not isinstance(raw_max, (int, float)) or math.isnan(raw_max):
        raise ConfigError(f"node config {MAX_EPSILON!r}: must be a number; got {raw_max!r}")
    if raw_max < 0:
        raise ConfigError(f"node config {MAX_EPSILON!r}: must be > 0 (or 0 for no limit); got {raw_max!r}")
    shape_text = str(node_config.get(FEATURE_SHAPE, "")).strip()
    shape: tuple[int, ...] | None = None
    if shape_text:
        try:
            shape = tuple(int(part) for part in shape_text.split(","))
        except ValueError:
            raise ConfigError(
                f"node config {FEATURE_SHAPE!r}: expected e.g. '1,8,8'; got {shape_text!r}"
            ) from None
    classes = node_config.get(NUM_CLASSES)
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise ConfigError(f"node config {NUM_CLASSES!r}: must be an integer >= 2; got {classes!r}")
    return DeviceSettings(
        device_id=_text(node_config, DEVICE_ID),
        data_path=Path(_text(node_config, DATA_PATH)),
        state_dir=Path(_text(node_config, STATE_DIR)),
        max_epsilon=float(raw_max) if raw_max > 0 else math.inf,
        feature_shape=shape,
        num_classes=classes if isinstance(classes, int) else None,
        label_column=_text(node_config, LABEL_COLUMN, "label"),
    )


def load_device_data(settings: DeviceSettings) -> ArrayDataset:
    """Load the device's local files, reshaped and labelled as its settings say.

    Raises:
        DataError: On missing or unreadable data, or a shape that does not fit.
    """
    data = load_local_files(settings.data_path, label_column=settings.label_column)
    x = data.x
    if settings.feature_shape is not None:
        if math.prod(settings.feature_shape) != math.prod(data.feature_shape):
            raise DataError(
                f"{FEATURE_SHAPE} {settings.feature_shape} does not fit examples of shape "
                f"{data.feature_shape}"
            )
        x = x.reshape((len(data), *settings.feature_shape))
    classes = settings.num_classes if settings.num_classes is not None else data.num_classes
    return ArrayDataset(np.ascontiguousarray(x), data.y, num_classes=classes)


class EdgeDataSource:
    """A device's config (from the run) and data (from its node config's ``data-path``).

    Args:
        config: Reads the run's fedlab config from the Context.
    """

    def __init__(self, config: ConfigSource) -> None:
        self._config = config
        self._loaded: tuple[DeviceSettings, ArrayDataset] | None = None

    def settings(self, context: Context) -> DeviceSettings:
        """The device settings of this SuperNode."""
        return device_settings(context.node_config)

    def config(self, context: Context) -> RunConfig:
        """The run's fedlab config."""
        return self._config(context)

    def client_id(self, context: Context) -> str:
        """The device id."""
        return self.settings(context).device_id

    def data(self, context: Context) -> ClientData:
        """The device's local data, loaded once per process."""
        settings = self.settings(context)
        if self._loaded is None or self._loaded[0] != settings:
            self._loaded = (settings, load_device_data(settings))
        dataset = self._loaded[1]
        return ClientData(
            client_id=settings.device_id,
            train=dataset,
            num_classes=dataset.num_classes,
            feature_shape=dataset.feature_shape,
        )


@dataclass(frozen=True)
class BudgetDecision:
    """What the device's budget says about the next round.

    Attributes:
        planned_epsilon: Epsilon after the round, if trained as planned.
        allowed: Whether that stays within the device's maximum.
    """

    planned_epsilon: float
    allowed: bool


def plan_round(
    config: RunConfig,
    num_examples: int,
    history: tuple[PrivacyStep, ...],
    *,
    max_epsilon: float,
    calibrated: dict[CalibrationKey, float] | None = None,
) -> BudgetDecision:
    """Decide whether the next round fits the device's budget.

    Uses the same noise multiplier (calibrated as the trainer does), sample rate,
    step count and accountant as the training, so the epsilon reported after the
    round equals the planned one and never exceeds ``max_epsilon``.

    Security: stops a server (honest but misconfigured, or malicious) from making the
    device spend more than its owner allowed, however many rounds it asks for or
    whatever it claims about earlier spending. Does not stop a server from learning
    from the updates the device did send within its budget, nor a device owner from
    deleting the budget file.
    """
    spec = dp_spec(config, num_examples, calibrated)
    if spec is None:
        # Without DP every release is noiseless: epsilon is infinite.
        return BudgetDecision(planned_epsilon=math.inf, allowed=math.isinf(max_epsilon))
    sample_rate, steps = poisson_plan(num_examples, optim_spec(config))
    planned = (
        *history,
        PrivacyStep(noise_multiplier=spec.noise_multiplier, sample_rate=sample_rate, steps=steps),
    )
    epsilon = epsilon_from_history(planned, delta=spec.delta, accountant=spec.accountant)
    return BudgetDecision(planned_epsilon=epsilon, allowed=epsilon <= max_epsilon)


def history_of(budget: ClientBudget) -> tuple[PrivacyStep, ...]:
    """The device's accountant history, from its budget file."""
    return tuple(
        PrivacyStep(noise_multiplier=s.noise_multiplier, sample_rate=s.sample_rate, steps=s.steps)
        for s in budget.spends()
    )


def already_released(budget: ClientBudget, run_id: int, server_round: int) -> bool:
    """Whether the device's budget already holds this round of this run."""
    return any(s.run_id == run_id and s.server_round == server_round for s in budget.spends())


class EdgeClient:
    """Serves one device: trains within its budget, commits each round before replying."""

    def __init__(self, source: EdgeDataSource) -> None:
        self._source = source
        self.runtime = ClientRuntime(max_trainers=1)
        self._calibrated: dict[CalibrationKey, float] = {}
        self._secure = SecureClient(self.runtime)  # os.urandom: keys and masks are never seeded here

    def _refusal(
        self,
        budget: ClientBudget,
        settings: DeviceSettings,
        config: RunConfig,
        data: ClientData,
        context: Context,
        server_round: int,
    ) -> str | None:
        """Why the device refuses ``server_round`` (already released, or over budget), or None.

        An over-budget refusal is recorded in the budget file and logged.
        """
        run_id = int(context.run_id)
        if already_released(budget, run_id, server_round):
            reason = f"device {settings.device_id} already released round {server_round}; never twice"
            LOG.warning(reason)
            return reason
        decision = plan_round(
            config, len(data.train), history_of(budget), max_epsilon=settings.max_epsilon,
            calibrated=self._calibrated,
        )  # fmt: skip
        if decision.allowed:
            return None
        reason = (
            f"device {settings.device_id} refuses round {server_round}: its epsilon would reach "
            f"{decision.planned_epsilon:.4f} > max epsilon {settings.max_epsilon:g} (budget spent)"
        )
        budget.record_refusal(
            RefusalRow(
                run_id=run_id,
                server_round=server_round,
                planned_epsilon=min(decision.planned_epsilon, 1e300),
                max_epsilon=min(settings.max_epsilon, 1e300),
            )
        )
        LOG.warning(reason)
        return reason

    def train(self, msg: Message, context: Context) -> Message:
        """Train one round if the budget allows; else reply with an error saying why."""
        settings = self._source.settings(context)
        config = self._source.config(context)
        data = self._source.data(context)
        round_config = msg.content.config_records[CONFIG]
        server_round = int(round_config["server-round"])  # type: ignore[arg-type]
        seed = int(round_config["round-seed"])  # type: ignore[arg-type]
        with ClientBudget.open(settings.budget_path) as budget:
            history = history_of(budget)
            reason = self._refusal(budget, settings, config, data, context, server_round)
            if reason is not None:
                return Message(Error(code=BUDGET_REFUSED, reason=reason), reply_to=msg)
            weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
            report, after = self.runtime.train(
                config, data, weights, history=history, round_seed=seed, secret=fresh_secret()
            )
            spent = sum(s.steps for s in after) - sum(s.steps for s in history)
            if spent > 0:
                budget.commit_spend(
                    SpendRow(
                        run_id=int(context.run_id),
                        server_round=server_round,
                        noise_multiplier=report.noise_multiplier,
                        sample_rate=report.sample_rate,
                        steps=spent,
                        epsilon=report.epsilon,
                    )
                )
            LOG.info(
                "device %s: round %d trained, epsilon %.4f (max %g)",
                settings.device_id,
                server_round,
                report.epsilon,
                settings.max_epsilon,
            )
        return Message(train_reply_content(report), reply_to=msg)

    def secagg(self, msg: Message, context: Context) -> Message:
        """Answer one SecAgg+ stage within the device's budget (see the module docstring).

        The secret per-round state lives in the SuperNode's ``context.state`` (lost if the
        device restarts mid-round: the server then counts it as dropped). A refused stage
        forgets that state and answers with an error.
        """
        settings = self._source.settings(context)
        config = self._source.config(context)
        data = self._source.data(context)
        try:
            call = stage_call_bytes(msg)
            parsed = parse_call(call)
            with ClientBudget.open(settings.budget_path) as budget:
                history = history_of(budget)
                if parsed.stage in (Stage.ADVERTISE_KEYS, Stage.MASKED_INPUT):
                    reason = self._refusal(budget, settings, config, data, context, parsed.round_num)
                    if reason is not None:
                        context.state.config_records.pop(SECAGG_STATE, None)
                        return Message(Error(code=BUDGET_REFUSED, reason=reason), reply_to=msg)
                answer = self._secure.answer(
                    config, data, call, state=stored_stage_state(context),
                    weights=weights_of(msg.content), history=history,
                )  # fmt: skip
                if answer.history is not None:
                    self._commit(budget, settings, config, data, context, parsed.round_num, answer.history)
        except (KeyError, ValueError, SecAggError) as exc:
            return secagg_refusal(msg, context, exc)
        return secagg_reply(msg, context, answer)

    def _commit(
        self,
        budget: ClientBudget,
        settings: DeviceSettings,
        config: RunConfig,
        data: ClientData,
        context: Context,
        server_round: int,
        after: Sequence[PrivacyStep],
    ) -> None:
        """Commit a securely aggregated round's DP-SGD steps to the budget (before its reply leaves)."""
        spec = dp_spec(config, len(data.train), self._calibrated)
        spent = sum(s.steps for s in after) - sum(s.steps for s in history_of(budget))
        if spec is None or spent <= 0:
            return
        epsilon = epsilon_from_history(after, delta=spec.delta, accountant=spec.accountant)
        budget.commit_spend(
            SpendRow(
                run_id=int(context.run_id),
                server_round=server_round,
                noise_multiplier=after[-1].noise_multiplier,
                sample_rate=after[-1].sample_rate,
                steps=spent,
                epsilon=epsilon,
            )
        )
        LOG.info(
            "device %s: round %d trained under secure aggregation, epsilon %.4f",
            settings.device_id,
            server_round,
            epsilon,
        )

    def query(self, msg: Message, context: Context) -> Message:
        """Answer the identity query with the device id."""
        return identity_reply(self._source, msg, context)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Evaluate the received model on the device's local data."""
        return evaluate_reply(self.runtime, self._source, msg, context)


class NodeDispatcher:
    """Sends each message to the edge client (device nodes) or the simulation client.

    The edge client is built on first use and not pickled (Ray pickles simulation apps).
    """

    def __init__(self, simulation: ClientDataSource, config: ConfigSource) -> None:
        self._simulation = FedlabClient(simulation)
        self._config = config
        self._edge: EdgeClient | None = None

    def __getstate__(self) -> dict[str, Any]:
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
        """Route the identity query."""
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


def _guard(action: Any, msg: Message) -> Message:
    """A FedlabError (bad data, budget file) becomes an error reply with one line, logged locally."""
    try:
        reply: Message = action()
    except FedlabError as exc:
        LOG.error("%s", exc)
        return Message(Error(code=BUDGET_REFUSED + 1, reason=str(exc)), reply_to=msg)
    return reply


def make_node_client_app(simulation: ClientDataSource, config: ConfigSource) -> ClientApp:
    """The ClientApp for ``flwr run``: device nodes train on their files, others on partitions."""
    return client_app_of(NodeDispatcher(simulation, config))
