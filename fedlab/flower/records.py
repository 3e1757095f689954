"""Conversions between fedlab types and Flower Message-API records."""

from __future__ import annotations

import io
import math
import tokenize
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.update import Update

ARRAYS = "arrays"
METRICS = "metrics"
CONFIG = "config"
FEATURE_RANGE = "feature-range"
"""Train config key: the central test set's [smallest, largest] feature (a device checks its scale)."""
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
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"metric {key!r} is too large for a float") from None


def _count(metrics: MetricRecord, key: str) -> int:
    value = _metric(metrics, key)
    if not math.isfinite(value):
        raise ValueError(f"metric {key!r} must be a finite count, got {value}")
    return int(value)


_NPY_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, RecursionError, tokenize.TokenError)
"""What numpy's ``.npy`` header parser (a ``literal_eval`` of the sender's text) raises on a bad header."""


def _ndarray(array: Array) -> np.ndarray:
    """One array of a reply: a ``.npy`` whose header describes exactly its data, else ValueError.

    Flower's ``Array.numpy`` would open a zip archive, allocate what a forged header claims before
    reading any data, and raise EOFError, OverflowError or a tokenizer error on a malformed one.
    """
    if array.stype != SType.NUMPY:
        raise ValueError(f"unsupported array serialization {array.stype!r}")
    stream = io.BytesIO(array.data)
    try:
        version = npy_format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read_header = (
            npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
    except _NPY_HEADER_ERRORS as exc:
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(f"malformed array header: {type(exc).__name__} {first_line}") from None
    size = len(array.data) - stream.tell()
    if dtype.hasobject or min(shape, default=0) < 0 or math.prod(shape) * dtype.itemsize != size:
        raise ValueError(f"malformed array: shape {shape} of {dtype} does not fit its {size} bytes")
    loaded: np.ndarray = np.load(io.BytesIO(array.data), allow_pickle=False)
    return loaded


def train_report_from_content(content: RecordDict) -> TrainReport:
    """Unpack a client's train reply; raises ValueError/KeyError on a malformed reply."""
    metrics = content.metric_records[METRICS]
    arrays = tuple(_ndarray(a) for a in content.array_records[ARRAYS].values())
    num_examples = _count(metrics, "num-examples")
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
        steps=_count(metrics, "steps"),
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


def arrays_record(weights: Sequence[np.ndarray], names: Sequence[str] | None = None) -> ArrayRecord:
    """Wrap model weights into an ArrayRecord, keyed by ``names`` in order (None: "0", "1", ...).

    Raises:
        ValueError: If ``names`` and ``weights`` differ in length.

    Example:
        >>> import numpy as np
        >>> list(arrays_record([np.zeros(2), np.ones(1)], names=["w", "b"]).keys())
        ['w', 'b']
    """
    if names is None:
        return ArrayRecord([np.asarray(w) for w in weights])
    if len(names) != len(weights):
        raise ValueError(f"{len(weights)} arrays for {len(names)} names")
    return ArrayRecord({name: Array(np.asarray(w)) for name, w in zip(names, weights, strict=True)})
