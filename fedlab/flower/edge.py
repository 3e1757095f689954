"""The edge client: a device's own data, its own persistent privacy budget, its own refusal.

A SuperNode started by ``fedlab client`` carries the device settings in its node
config (``data-path``, ``state-dir``, ``device-id``, ``max-epsilon``, ``delta``,
``allow-non-private`` and optionally ``feature-shape``, ``num-classes``,
``label-column``). The ClientApp then serves that device with :class:`EdgeClient`;
without those keys it serves a simulation partition.

Budget rule (the owner's guarantee, independent of the server; :mod:`fedlab.training.device_budget`):
before training, the client computes the epsilon it would have after the round (its whole history
plus the round's charge, at its *own* delta) and refuses the round if that exceeds ``max-epsilon``;
it also refuses a run whose ``dp.delta`` exceeds its delta, a noiseless round unless started with
``--allow-non-private``, and a round already in its budget (never twice). The round's release and
charge are committed to ``STATE/budget.sqlite`` *before* the reply leaves, so a crash never loses
a released round. A refusal is one line, logged, answered with :data:`BUDGET_REFUSED` and (except
"already released") kept in the budget file; nothing computed from the data leaves.

Under secure aggregation (``train.secagg`` stage messages) the same rule applies: the device
refuses to join a round at the key-advertising stage (from the encoding stage 0 announces)
and checks again at the masked-input stage, where it trains (distributed DP: the stage-2
encoding must be the one stage 0 announced); the round is committed before the masked input
is returned.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message

from fedlab.algorithms.secure_messages import MaskedInputMessage, SetupMessage
from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError, DataError
from fedlab.data.files import load_local_files
from fedlab.data.types import ArrayDataset, range_mismatch
from fedlab.flower.client import (
    ConfigSource,
    evaluate_reply,
    identity_reply,
)
from fedlab.flower.client_privacy import BUDGET_REFUSED
from fedlab.flower.records import ARRAYS, CONFIG, FEATURE_RANGE, train_reply_content
from fedlab.flower.secure_client import (
    SECAGG_STATE,
    SecureStageClient,
    secagg_refusal,
    secagg_reply,
    stage_call,
    stored_stage_state,
)
from fedlab.flower.secure_transport import weights_of
from fedlab.privacy.client_budget import ClientBudget
from fedlab.privacy.events import ANNOUNCED_CLIP_NORM, GaussianEvent
from fedlab.privacy.skellam import SkellamParams
from fedlab.secagg.errors import SecAggError, Stage
from fedlab.training.client_runtime import CalibrationKey, ClientData, ClientRuntime
from fedlab.training.device_budget import (
    DEFAULT_DELTA,
    MAX_DELTA,
    Charge,
    DevicePolicy,
    RoundDecision,
    commit,
    decide,
    dpsgd_history,
    keep_refusal,
    round_charge,
    taken_dpsgd_charge,
)
from fedlab.training.randomness import fresh_secret

LOG = logging.getLogger("fedlab.client")

DATA_PATH = "data-path"
STATE_DIR = "state-dir"
DEVICE_ID = "device-id"
MAX_EPSILON = "max-epsilon"
DELTA = "delta"
ALLOW_NON_PRIVATE = "allow-non-private"
FEATURE_SHAPE = "feature-shape"
NUM_CLASSES = "num-classes"
LABEL_COLUMN = "label-column"
BUDGET_FILE = "budget.sqlite"
ANNOUNCED = "fedlab-device-round"
"""Context-state record of the encoding stage 0 announced (distributed DP), checked at stage 2."""


@dataclass(frozen=True)
class DeviceSettings:
    """A device's settings, parsed once from the SuperNode's node config.

    Attributes:
        device_id: The stable identity the device answers to the identity query.
        data_path: Its local data (folder of class folders, CSV or Parquet).
        state_dir: Where its budget file lives.
        max_epsilon: The most it will ever spend (``inf``: no limit).
        delta: Every epsilon is computed at this delta, in (0, 0.1]; a run with a larger one is refused.
        allow_non_private: Whether it releases noiseless rounds (``dp.mode = "none"``).
        feature_shape: Reshape each example to this (e.g. ``(1, 8, 8)``), or keep.
        num_classes: Number of classes of the task, or as found in the data.
        label_column: Label column of a table.
    """

    device_id: str
    data_path: Path
    state_dir: Path
    max_epsilon: float = math.inf
    delta: float = DEFAULT_DELTA
    allow_non_private: bool = False
    feature_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    label_column: str = "label"

    @property
    def budget_path(self) -> Path:
        """The device's budget file."""
        return self.state_dir / BUDGET_FILE

    @property
    def policy(self) -> DevicePolicy:
        """The device's budget rule."""
        return DevicePolicy(
            max_epsilon=self.max_epsilon, delta=self.delta, allow_non_private=self.allow_non_private
        )


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
    >>> device_settings({"data-path": "d.csv", "state-dir": "s", "device-id": "pi-1", "delta": 0.5})
    Traceback (most recent call last):
    ...
    fedlab.core.errors.ConfigError: node config 'delta': must be in (0, 0.1]; got 0.5
    >>> device_settings({"data-path": "d.csv", "state-dir": "s", "device-id": "pi-1",
    ...                  "allow-non-private": "yes"})
    Traceback (most recent call last):
    ...
    fedlab.core.errors.ConfigError: node config 'allow-non-private': must be true or false; got 'yes'
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
    delta = node_config.get(DELTA, DEFAULT_DELTA)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 < delta <= MAX_DELTA:
        raise ConfigError(f"node config {DELTA!r}: must be in (0, {MAX_DELTA:g}]; got {delta!r}")
    allow = node_config.get(ALLOW_NON_PRIVATE, False)
    if not isinstance(allow, bool):
        raise ConfigError(f"node config {ALLOW_NON_PRIVATE!r}: must be true or false; got {allow!r}")
    classes = node_config.get(NUM_CLASSES)
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 2):
        raise ConfigError(f"node config {NUM_CLASSES!r}: must be an integer >= 2; got {classes!r}")
    return DeviceSettings(
        device_id=_text(node_config, DEVICE_ID),
        data_path=Path(_text(node_config, DATA_PATH)),
        state_dir=Path(_text(node_config, STATE_DIR)),
        max_epsilon=float(raw_max) if raw_max > 0 else math.inf,
        delta=float(delta),
        allow_non_private=allow,
        feature_shape=shape,
        num_classes=classes if isinstance(classes, int) else None,
        label_column=_text(node_config, LABEL_COLUMN, "label"),
    )


def load_device_data(settings: DeviceSettings) -> ArrayDataset:
    """Load the device's local files, reshaped and labelled as its settings say.

    Raises:
        DataError: On missing or unreadable data, or a shape that does not fit.
    """
    data = load_local_files(
        settings.data_path, label_column=settings.label_column, num_classes=settings.num_classes
    )
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


class _RefusedError(Exception):
    """A round the device refuses; the message is the one-line reason it answers with."""


@dataclass(frozen=True)
class DeviceRound:
    """One round a device is asked for: budget file, settings (its rule), the run's config, the round."""

    budget: ClientBudget
    settings: DeviceSettings
    config: RunConfig
    run_id: int
    server_round: int

    def refusal(self, why: str, decision: RoundDecision | None = None) -> _RefusedError:
        """Log a refusal (and keep it in the budget file if the rule says so); the exception to raise."""
        reason = f"device {self.settings.device_id} refuses round {self.server_round}: {why}"
        if decision is not None:
            keep_refusal(
                self.budget,
                decision,
                self.settings.policy,
                run_id=self.run_id,
                server_round=self.server_round,
            )
        LOG.warning(reason)
        return _RefusedError(reason)

    def plan(
        self,
        data: ClientData,
        calibrated: dict[CalibrationKey, float],
        *,
        values: Mapping[str, Any] | None = None,
        encoding: object = None,
    ) -> RoundDecision:
        """The device's decision on the round, from what the server announced (or :class:`_RefusedError`)."""
        try:
            charge = round_charge(
                self.config, num_examples=len(data.train), round_values=values, encoding=encoding,
                calibrated=calibrated,
            )  # fmt: skip
        except ValueError as exc:
            raise self.refusal(str(exc)) from None
        return self.check(charge)

    def check(self, charge: Charge) -> RoundDecision:
        """Apply the rule to ``charge``; raises :class:`_RefusedError` with the reason if it refuses."""
        dp = self.config.dp
        decision = decide(
            self.budget, self.settings.policy, run_id=self.run_id, server_round=self.server_round,
            charge=charge, run_delta=dp.delta, accountant=dp.resolved_accountant if dp.dpsgd else "rdp",
        )  # fmt: skip
        if decision.refusal is not None:
            raise self.refusal(decision.refusal, decision)
        return decision

    def history(self) -> tuple[GaussianEvent, ...]:
        """The accountant history the trainer continues (DP-SGD charges; none for other modes)."""
        return dpsgd_history(self.budget) if self.config.dp.dpsgd else ()

    def commit(
        self, decision: RoundDecision, *, before: Sequence[GaussianEvent], after: Sequence[GaussianEvent]
    ) -> float:
        """Commit the released round (DP-SGD: the steps actually taken); its epsilon. Before the reply."""
        if self.config.dp.dpsgd:
            taken = taken_dpsgd_charge(before=before, after=after)
            if taken is None:
                decision = dataclasses.replace(decision, charge=None)
            elif decision.charge != taken:
                decision = self.check(taken)  # what was taken, not what was planned, is charged
        commit(self.budget, decision, run_id=self.run_id, server_round=self.server_round)
        LOG.info(
            "device %s: round %d released (%s), epsilon %.4f (max %g, delta %g)", self.settings.device_id,
            self.server_round, decision.mechanism, decision.epsilon, self.settings.max_epsilon,
            self.settings.delta,
        )  # fmt: skip
        return decision.epsilon


def _announce(context: Context, round_num: int, encoding: object) -> None:
    """Keep the Skellam encoding stage 0 announced, to hold stage 2 to it."""
    announced = json.dumps(encoding.to_dict()) if isinstance(encoding, SkellamParams) else ""
    context.state.config_records[ANNOUNCED] = ConfigRecord({"round": round_num, "skellam": announced})


def _announced(context: Context, round_num: int) -> SkellamParams | None:
    record = context.state.config_records.get(ANNOUNCED)
    if record is None or record.get("round") != round_num or not record.get("skellam"):
        return None
    return SkellamParams.from_dict(json.loads(str(record["skellam"])))


class EdgeClient:
    """Serves one device: trains within its budget, commits each round before replying."""

    def __init__(self, source: EdgeDataSource) -> None:
        self._source = source
        self.runtime = ClientRuntime(max_trainers=1)
        self._calibrated: dict[CalibrationKey, float] = {}
        self._secure = SecureStageClient(self.runtime)  # os.urandom: keys and masks are never seeded here
        self._range_checked = False

    def train(self, msg: Message, context: Context) -> Message:
        """Train one round if the budget allows; else reply with an error saying why."""
        settings = self._source.settings(context)
        config = self._source.config(context)
        data = self._source.data(context)
        round_config = msg.content.config_records[CONFIG]
        server_round = int(round_config["server-round"])  # type: ignore[arg-type]
        seed = int(round_config["round-seed"])  # type: ignore[arg-type]
        clip = round_config.get(ANNOUNCED_CLIP_NORM)
        self._warn_if_scaled_otherwise(settings, data, round_config.get(FEATURE_RANGE))
        with ClientBudget.open(settings.budget_path) as budget:
            device = DeviceRound(budget, settings, config, int(context.run_id), server_round)
            try:
                decision = device.plan(data, self._calibrated, values=dict(round_config))
                history = device.history()
                weights = msg.content.array_records[ARRAYS].to_numpy_ndarrays()
                report, after = self.runtime.train(
                    config, data, weights, history=history, round_seed=seed,
                    clip_norm=float(clip) if isinstance(clip, (int, float)) else None, secret=fresh_secret(),
                )  # fmt: skip
                device.commit(decision, before=history, after=after)
            except _RefusedError as refused:
                return Message(Error(code=BUDGET_REFUSED, reason=str(refused)), reply_to=msg)
        report = dataclasses.replace(report, epsilon=max(0.0, report.epsilon))  # never negative
        return Message(train_reply_content(report), reply_to=msg)

    def _warn_if_scaled_otherwise(
        self, settings: DeviceSettings, data: ClientData, announced: object
    ) -> None:
        """Once per process: warn when the device's features are not on the server's scale."""
        if self._range_checked or not (isinstance(announced, list) and len(announced) == 2):
            return
        self._range_checked = True
        why = range_mismatch(data.train.x, (float(announced[0]), float(announced[1])))
        if why is not None:
            LOG.warning(
                "device %s: %s; scale them as the server does (fedlab data split writes such files)",
                settings.device_id, why,
            )  # fmt: skip

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
            call = stage_call(msg)
            with ClientBudget.open(settings.budget_path) as budget:
                device = DeviceRound(budget, settings, config, int(context.run_id), call.round_num)
                message = call.message
                encoding = (
                    message.encoding if isinstance(message, SetupMessage | MaskedInputMessage) else None
                )
                decision = None
                if call.stage == Stage.ADVERTISE_KEYS:
                    if config.dp.central:
                        raise device.refusal("central DP does not run under secure aggregation")
                    device.plan(data, self._calibrated, encoding=encoding)
                    _announce(context, call.round_num, encoding)
                elif call.stage == Stage.MASKED_INPUT:
                    if config.dp.distributed and _announced(context, call.round_num) != encoding:
                        raise device.refusal(
                            "the masked-input stage's encoding is not the one stage 0 announced"
                        )
                    decision = device.plan(data, self._calibrated, encoding=encoding)
                history = device.history()
                answer = self._secure.answer(
                    config, data, call, state=stored_stage_state(context),
                    weights=weights_of(msg.content), history=history,
                )  # fmt: skip
                if decision is not None and answer.reply is not None:
                    context.state.config_records.pop(ANNOUNCED, None)
                    device.commit(decision, before=history, after=answer.history or ())
        except _RefusedError as refused:
            context.state.config_records.pop(SECAGG_STATE, None)
            context.state.config_records.pop(ANNOUNCED, None)
            return Message(Error(code=BUDGET_REFUSED, reason=str(refused)), reply_to=msg)
        except (KeyError, ValueError, SecAggError) as exc:
            context.state.config_records.pop(ANNOUNCED, None)
            return secagg_refusal(msg, context, exc)
        return secagg_reply(msg, context, answer)

    def query(self, msg: Message, context: Context) -> Message:
        """Answer the identity query with the device id."""
        return identity_reply(self._source, msg, context)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Evaluate the received model on the device's local data."""
        return evaluate_reply(self.runtime, self._source, msg, context)
