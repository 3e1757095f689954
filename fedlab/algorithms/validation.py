"""Checking every client report before it is aggregated: one rule set, one reason per rejection.

Every round loop (FedAvg, DP-FedAvg, secure FedAvg's public metadata) screens what came back
with :func:`screen`: a report with the wrong number of arrays, a wrong shape or dtype, NaN or
infinite values, a norm over the bound, a negative or absurd example count, or non-finite
metrics is rejected with its reason (a log line), the round goes on with the rest, and the
round's metrics count the rejections by reason (``rejected_<reason>``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from fedlab.core.reports import TrainReport
from fedlab.core.server_config import MAX_EXAMPLES

LOG = logging.getLogger("fedlab.server")

NORM_TOLERANCE = 1e-6
"""Relative slack on a norm bound for floating-point rounding (a client clipped to exactly C)."""


class Rejected(StrEnum):
    """Why an update was rejected: the suffix of its ``rejected_<reason>`` count."""

    ARRAYS = "arrays"
    SHAPE = "shape"
    DTYPE = "dtype"
    NON_FINITE = "non_finite"
    NORM = "norm"
    EXAMPLES = "examples"
    METRICS = "metrics"


@dataclass(frozen=True)
class UpdateRules:
    """What a valid report looks like this round.

    Attributes:
        shapes: The model's array shapes, in order.
        max_norm: The largest L2 norm of an update (the clip under central DP), or None.
        max_examples: The largest example count a client may claim.
    """

    shapes: tuple[tuple[int, ...], ...]
    max_norm: float | None = None
    max_examples: int = MAX_EXAMPLES

    @classmethod
    def for_model(
        cls, weights: Sequence[np.ndarray], *, max_norm: float | None = None, max_examples: int = MAX_EXAMPLES
    ) -> UpdateRules:
        """The rules for updates of the model ``weights``."""
        return cls(tuple(tuple(np.shape(w)) for w in weights), max_norm, max_examples)


def _is_count(value: object, high: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(0 <= value <= high)


def metadata_rejection(report: TrainReport, max_examples: int) -> tuple[Rejected, str] | None:
    """Why a report's public metadata is invalid (example count, weight, metrics), or None.

    >>> from fedlab.core.update import Update
    >>> r = TrainReport("a", Update((), num_examples=-1), math.nan, math.inf, 0.0, 1.0, 0)
    >>> metadata_rejection(r, 100)
    (<Rejected.EXAMPLES: 'examples'>, 'example count -1 is not in [0, 100]')
    """
    update = report.update
    if not _is_count(update.num_examples, max_examples):
        return Rejected.EXAMPLES, f"example count {update.num_examples!r} is not in [0, {max_examples}]"
    if not (isinstance(update.weight, int | float) and math.isfinite(update.weight) and update.weight >= 0.0):
        return Rejected.EXAMPLES, f"weight {update.weight!r} is not finite and >= 0"
    problems = []
    if not (isinstance(report.epsilon, int | float) and report.epsilon >= 0.0):  # inf: not private
        problems.append(f"epsilon {report.epsilon!r}")
    if not (math.isfinite(report.noise_multiplier) and report.noise_multiplier >= 0.0):
        problems.append(f"noise multiplier {report.noise_multiplier!r}")
    if not 0.0 < report.sample_rate <= 1.0:
        problems.append(f"sample rate {report.sample_rate!r}")
    if not _is_count(report.steps, 1 << 40):
        problems.append(f"steps {report.steps!r}")
    if math.isinf(report.train_loss):  # NaN: not sent (under DP)
        problems.append(f"train loss {report.train_loss!r}")
    if problems:
        return Rejected.METRICS, "bad metrics: " + ", ".join(problems)
    return None


def rejection(report: TrainReport, rules: UpdateRules) -> tuple[Rejected, str] | None:
    """Why ``report`` must not be aggregated, or None if it is valid.

    >>> from fedlab.core.update import Update
    >>> rules = UpdateRules(shapes=((2,),), max_norm=1.0)
    >>> ok = TrainReport("a", Update((np.array([0.6, 0.8], np.float32),), 3), 0.1, math.inf, 0.0, 1.0, 2)
    >>> rejection(ok, rules) is None
    True
    >>> big = TrainReport("b", Update((np.array([3.0, 4.0], np.float32),), 3), 0.1, math.inf, 0.0, 1.0, 2)
    >>> rejection(big, rules)[0]
    <Rejected.NORM: 'norm'>
    """
    arrays = report.update.arrays
    if len(arrays) != len(rules.shapes):
        return Rejected.ARRAYS, f"{len(arrays)} arrays, the model has {len(rules.shapes)}"
    for i, (array, shape) in enumerate(zip(arrays, rules.shapes, strict=True)):
        if not isinstance(array, np.ndarray):
            return Rejected.DTYPE, f"array {i} is a {type(array).__name__}, not an ndarray"
        if array.shape != shape:
            return Rejected.SHAPE, f"array {i} has shape {array.shape}, the model {shape}"
        if not (np.issubdtype(array.dtype, np.floating) and array.dtype.itemsize <= 8):
            return Rejected.DTYPE, f"array {i} has dtype {array.dtype}, not a real float"
        if not np.isfinite(array).all():
            return Rejected.NON_FINITE, f"array {i} holds NaN or infinite values"
    if rules.max_norm is not None:
        norm = report.update.l2_norm()
        if norm > rules.max_norm * (1.0 + NORM_TOLERANCE):
            return Rejected.NORM, f"update norm {norm:.6g} exceeds the bound {rules.max_norm:g}"
    return metadata_rejection(report, rules.max_examples)


def screen(
    reports: Sequence[TrainReport], rules: UpdateRules, round_num: int
) -> tuple[list[TrainReport], dict[str, int]]:
    """Keep the valid reports; log each rejected one and count rejections by reason.

    Returns:
        The valid reports, in order, and ``{"rejected_<reason>": count}`` for each reason seen.
    """
    kept: list[TrainReport] = []
    counts: dict[str, int] = {}
    for report in reports:
        found = rejection(report, rules)
        if found is None:
            kept.append(report)
            continue
        reason, message = found
        LOG.warning("round %d: rejected client %s (%s): %s", round_num, report.client_id, reason, message)
        key = f"rejected_{reason}"
        counts[key] = counts.get(key, 0) + 1
    return kept, counts
