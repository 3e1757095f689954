"""Fuzzing the train reply records: a malformed reply is a KeyError or ValueError, never a crash.

The server decodes each client's train reply (a Flower RecordDict) with
``train_report_from_content`` and its identity with ``client_id_from_content``, which document
KeyError and ValueError for a malformed reply; ``split_replies`` turns those (and TypeError) into
that client's failure, so anything else a reply can provoke would crash the server's round. Here
replies lose records and keys, carry metrics of every type and value (NaN, infinities, huge counts,
lists), a client id of another type, and arrays whose bytes are random, truncated, zip archives,
object arrays or headers claiming huge shapes.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, scalar_dtypes

from fedlab.core.reports import TrainReport
from fedlab.core.update import Update
from fedlab.flower.records import (
    ARRAYS,
    CLIENT,
    METRICS,
    client_id_from_content,
    split_replies,
    train_reply_content,
    train_report_from_content,
)
from tests.flower.fake_grid import server_identity
from tests.secagg.test_secagg_wire_fuzz import FUZZ, decoded_or_refused, mutate_bytes

MALFORMED = (KeyError, ValueError)
"""What ``train_report_from_content`` documents for a malformed reply (``split_replies`` turns these,
and TypeError, into one client's failure)."""

METRIC_KEYS = ["num-examples", "train-loss", "epsilon", "noise-multiplier", "sample-rate", "steps"]

# ---- valid replies ----------------------------------------------------------------------------------

float_arrays = arrays(
    st.sampled_from([np.float32, np.float64]), array_shapes(min_dims=0, max_dims=3, max_side=4)
)
train_reports = st.builds(
    TrainReport,
    client_id=st.text(min_size=1, max_size=12),
    update=st.builds(
        lambda arrays, n: Update(arrays=tuple(arrays), num_examples=n, weight=float(n)),
        st.lists(float_arrays, max_size=3),
        st.integers(0, 10**6),
    ),
    train_loss=st.floats(),
    epsilon=st.just(math.inf) | st.floats(0.0, 1e6),
    noise_multiplier=st.floats(0.0, 100.0),
    sample_rate=st.floats(1e-6, 1.0),
    steps=st.integers(0, 10**6),
    clip_indicator=st.none() | st.sampled_from([-0.5, 0.5]),
)

# ---- odd record contents ----------------------------------------------------------------------------

EDGE_NUMBERS = [0, -1, 1, 2**53 + 1, 2**63 - 1, -(2**63), 2**64, 10**400, -0.0, 1e308, -1e308, 5e-324]
EDGE_NUMBERS += [float("nan"), float("inf"), float("-inf")]
metric_values = st.one_of(
    st.integers(),
    st.floats(),
    st.sampled_from(EDGE_NUMBERS),
    st.lists(st.integers(), max_size=3),
    st.lists(st.floats(), max_size=3),
)
config_values = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.lists(st.text(max_size=4), max_size=3),
    st.lists(st.booleans(), max_size=3),
)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=array)
    return buffer.getvalue()


def forged_header(shape: str, descr: str = "<f8", data: bytes = b"\x00" * 16) -> bytes:
    """A .npy file whose header claims ``shape`` and ``descr`` over ``data``."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode("latin1")
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


ODD_ARRAY_BYTES = [
    b"",
    b"junk",
    b"PK\x03\x04junk",
    b"\x93NUMPY",
    b"\x93NUMPY\x03\x00",
    npz(np.zeros(3)),
    forged_header("(2,)"),
    forged_header("(3,)"),
    forged_header("(-2,)"),
    forged_header("(-2, -1)"),
    forged_header("(2**70,)"),
    forged_header("(99999999999999999999,)"),
    forged_header("(2**34,)"),
    forged_header("(1099511627776,)"),
    forged_header("(4294967296, 4294967296)"),
    forged_header("(2,)", "|O"),
    forged_header("(2,)", "xx"),
    forged_header("(1,)", "(2,)<f8"),
    forged_header("'x'"),
    forged_header("{[1]: 2}"),
    forged_header("-" * 3000 + "1"),
    forged_header("(" * 300 + ")" * 300),
    forged_header("(1,"),
    forged_header("(1,)", "<f8', 'x': (1"),
]
"""Bytes a hostile client could put in an Array: garbage, zip archives, headers that lie."""


@st.composite
def odd_arrays(draw: Callable[..., Any]) -> Array:
    """An Array a client could send: odd bytes, a valid array's bytes mutated, or any dtype."""
    kind = draw(st.sampled_from(["odd", "mutated", "dtype", "stype"]))
    if kind == "odd":
        data = draw(st.sampled_from(ODD_ARRAY_BYTES) | st.binary(max_size=64))
    elif kind == "mutated":
        data = mutate_bytes(draw, npy(draw(float_arrays)))
    elif kind == "dtype":
        dtype = draw(scalar_dtypes() | st.sampled_from([np.dtype("U3"), np.dtype("S2")]))
        data = npy(draw(arrays(dtype, array_shapes(min_dims=0, max_dims=2, max_side=3))))
    else:
        return Array("float64", (1,), draw(st.sampled_from(["", "torch.Tensor", "numpy.ndarray "])), b"")
    return Array("float64", (1,), "numpy.ndarray", data)


def mutate_content(draw: Callable[..., Any], content: RecordDict) -> RecordDict:
    """Apply one to four edits to a reply's records."""
    records: dict[str, Any] = {
        name: type(record)(dict(record.items()))
        for name, record in content.items()  # a copy
    }
    edits = ["drop-record", "swap-record", "metric", "drop-metric", "client-id", "array", "extra-array"]
    for edit in draw(st.lists(st.sampled_from(edits), min_size=1, max_size=4)):
        if edit == "drop-record" and records:
            del records[draw(st.sampled_from(sorted(records)))]
        elif edit == "swap-record":
            name = draw(st.sampled_from([ARRAYS, METRICS, CLIENT]))
            records[name] = draw(
                st.sampled_from(
                    [ArrayRecord(), MetricRecord({"num-examples": 1}), ConfigRecord({"client-id": "x"})]
                )
            )
        elif edit in ("metric", "drop-metric") and isinstance(records.get(METRICS), MetricRecord):
            metrics = dict(records[METRICS].items())
            key = draw(st.sampled_from([*METRIC_KEYS, "clip-indicator", "other"]))
            if edit == "drop-metric":
                metrics.pop(key, None)
            else:
                metrics[key] = draw(metric_values)
            records[METRICS] = MetricRecord(metrics)
        elif edit == "client-id" and isinstance(records.get(CLIENT), ConfigRecord):
            value = draw(config_values)
            records[CLIENT] = ConfigRecord({draw(st.sampled_from(["client-id", "client_id"])): value})
        elif edit in ("array", "extra-array") and isinstance(records.get(ARRAYS), ArrayRecord):
            items = dict(records[ARRAYS].items())
            key = draw(st.sampled_from(sorted(items))) if items and edit == "array" else f"x{len(items)}"
            items[key] = draw(odd_arrays())
            records[ARRAYS] = ArrayRecord(items)
    return RecordDict(records)


# ---- the properties ---------------------------------------------------------------------------------


def assert_well_formed(report: TrainReport | None) -> None:
    if report is None:
        return
    assert isinstance(report.client_id, str) and report.client_id
    assert all(type(a) is np.ndarray and not a.dtype.hasobject for a in report.update.arrays)
    assert isinstance(report.update.num_examples, int) and report.update.num_examples >= 0
    assert isinstance(report.steps, int)
    numbers = (report.train_loss, report.epsilon, report.noise_multiplier, report.sample_rate)
    assert all(isinstance(x, float) for x in numbers)
    assert report.clip_indicator is None or isinstance(report.clip_indicator, float)


@FUZZ
@given(train_reports)
def test_every_train_report_survives_its_records(report: TrainReport) -> None:
    decoded = train_report_from_content(train_reply_content(report))
    scalars = ("client_id", "epsilon", "noise_multiplier", "sample_rate", "steps", "clip_indicator")
    assert [getattr(decoded, f) for f in scalars] == [getattr(report, f) for f in scalars]
    assert decoded.update.num_examples == report.update.num_examples
    assert math.isnan(report.train_loss) or decoded.train_loss == report.train_loss
    assert len(decoded.update.arrays) == len(report.update.arrays)
    for got, sent in zip(decoded.update.arrays, report.update.arrays, strict=True):
        assert got.dtype == sent.dtype and np.array_equal(got, sent, equal_nan=True)


@FUZZ
@given(train_reports, st.data())
def test_a_mutated_reply_decodes_or_is_refused(report: TrainReport, data: st.DataObject) -> None:
    content = mutate_content(data.draw, train_reply_content(report))
    assert_well_formed(decoded_or_refused(lambda: train_report_from_content(content), MALFORMED))


@FUZZ
@given(train_reports, st.data())
def test_a_mutated_reply_is_a_report_or_a_failure_of_its_client(
    report: TrainReport, data: st.DataObject
) -> None:
    content = mutate_content(data.draw, train_reply_content(report))
    with server_identity():
        message = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
    replies = split_replies({report.client_id: message})  # never raises: the round goes on
    assert len(replies.reports) + len(replies.failures) == 1
    assert all(r.client_id == report.client_id for r in replies.reports)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from([CLIENT, "other"]),
        st.dictionaries(st.sampled_from(["client-id", "client_id"]) | st.text(max_size=10), config_values),
    )
)
def test_any_identity_record_is_a_client_id_or_refused(records: dict[str, dict[str, Any]]) -> None:
    content = RecordDict({name: ConfigRecord(values) for name, values in records.items()})
    client_id = decoded_or_refused(lambda: client_id_from_content(content), (KeyError, ValueError))
    assert client_id is None or (isinstance(client_id, str) and client_id)


@pytest.mark.parametrize("data", ODD_ARRAY_BYTES, ids=[f"odd{i}" for i in range(len(ODD_ARRAY_BYTES))])
def test_forged_array_bytes_never_become_an_array(data: bytes) -> None:
    report = TrainReport("c", Update((np.zeros(2),), 1, 1.0), 0.0, math.inf, 0.0, 1.0, 1)
    content = train_reply_content(report)
    content[ARRAYS] = ArrayRecord({"0": Array("float64", (2,), "numpy.ndarray", data)})
    decoded = decoded_or_refused(lambda: train_report_from_content(content), MALFORMED)
    assert decoded is None or data == forged_header("(2,)")


def test_a_zip_archive_is_not_an_array() -> None:
    assert zipfile.is_zipfile(io.BytesIO(npz(np.zeros(3))))
    report = TrainReport("c", Update((np.zeros(3),), 1, 1.0), 0.0, math.inf, 0.0, 1.0, 1)
    content = train_reply_content(report)
    content[ARRAYS] = ArrayRecord({"0": Array("float64", (3,), "numpy.ndarray", npz(np.zeros(3)))})
    with pytest.raises(ValueError, match="malformed array"):
        train_report_from_content(content)
