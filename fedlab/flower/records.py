"""Conversions between fedlab types and Flower Message-API records."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.update import Update

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
CLIENT = "client"
NOT_PRIVATE = math.inf


def train_reply_content(report: TrainReport) -> RecordDict:
    """Pack a client's train report into the content of its reply message."""
    metrics = MetricRecord(
        {
            "num-examples": report.update.num_examples,
            "train-loss": report.train_loss,
            "epsilon": report.epsilon if math.isfinite(report.epsilon) else -1.0,
            "noise-multiplier": report.noise_multiplier,
            "sample-rate": report.sample_rate,
            "steps": report.steps,
            **({} if report.clip_indicator is None else {"clip-indicator": report.clip_indicator}),
        }
    )
    return RecordDict(
        {
            ARRAYS: ArrayRecord([np.asarray(a) for a in report.update.arrays]),
            METRICS: metrics,
            CLIENT: ConfigRecord({"client-id": report.client_id}),
        }
    )


def _metric(metrics: MetricRecord, key: str) -> float:
    value = metrics[key]
    if not isinstance(value, (int, float)):
        raise ValueError(f"metric {key!r} must be a number")
    return float(value)


def train_report_from_content(content: RecordDict) -> TrainReport:
    """Unpack a client's train reply; raises ValueError/KeyError on a malformed reply."""
    metrics = content.metric_records[METRICS]
    arrays = tuple(content.array_records[ARRAYS].to_numpy_ndarrays())
    num_examples = int(_metric(metrics, "num-examples"))
    if num_examples < 0:
        raise ValueError("num-examples must be >= 0")
    epsilon = _metric(metrics, "epsilon")
    return TrainReport(
        client_id=client_id_from_content(content),
        update=Update(arrays=arrays, num_examples=num_examples, weight=float(num_examples)),
        train_loss=_metric(metrics, "train-loss"),
        epsilon=NOT_PRIVATE if epsilon < 0 else epsilon,
        noise_multiplier=_metric(metrics, "noise-multiplier"),
        sample_rate=_metric(metrics, "sample-rate"),
        steps=int(_metric(metrics, "steps")),
        clip_indicator=_metric(metrics, "clip-indicator") if "clip-indicator" in metrics else None,
    )


def usable_reply(client_id: str, msg: Message | None, failures: list[str]) -> Message | None:
    """The reply if it carries content to decode; else None, and why goes to ``failures``."""
    if msg is None:
        failures.append(f"client {client_id}: no reply in time")
        return None
    if msg.has_error():
        failures.append(f"client {client_id}: {msg.error.reason}")
        return None
    return msg


def split_replies(replies: Mapping[str, Message | None]) -> RoundReplies:
    """Decode the train replies of the planned clients and describe why the others failed.

    Args:
        replies: Client id -> the reply from that client's node, or None when none came in time.

    A reply whose report names another client than its node's is refused: a node speaks only for
    its own client.
    """
    reports: list[TrainReport] = []
    failures: list[str] = []
    for client_id, reply in replies.items():
        msg = usable_reply(client_id, reply, failures)
        if msg is None:
            continue
        try:
            report = train_report_from_content(msg.content)
        except (KeyError, ValueError, TypeError) as exc:
            failures.append(f"client {client_id}: malformed reply ({exc})")
            continue
        if report.client_id != client_id:
            failures.append(f"client {client_id}: its reply claims to be client {report.client_id!r}")
            continue
        reports.append(report)
    return RoundReplies(reports=tuple(reports), failures=tuple(failures))


def identity_reply_content(client_id: str) -> RecordDict:
    """Pack a client's answer to the identity query."""
    return RecordDict({CLIENT: ConfigRecord({"client-id": client_id})})


def client_id_from_content(content: RecordDict) -> str:
    """Unpack a client id from a reply; raises KeyError/ValueError on a malformed one."""
    value = content.config_records[CLIENT]["client-id"]
    if not isinstance(value, str) or not value:
        raise ValueError("client-id must be a non-empty string")
    return value


def arrays_record(weights: Sequence[np.ndarray]) -> ArrayRecord:
    """Wrap model weights into an ArrayRecord."""
    return ArrayRecord([np.asarray(w) for w in weights])
