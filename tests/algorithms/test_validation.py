"""Every kind of bad update is rejected with its reason, on each path, and the round goes on."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from fedlab.algorithms.dp_fedavg import DpFedAvgSettings, run_dp_fedavg
from fedlab.algorithms.federation import FedAvgSettings, RoundPlan, run_fedavg
from fedlab.algorithms.runs import secure_settings
from fedlab.algorithms.secure_fedavg import secure_round
from fedlab.algorithms.secure_messages import MaskedReply, StageReplies, StageRequest
from fedlab.algorithms.validation import Rejected, UpdateRules, rejection
from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.update import Update
from fedlab.secagg.crypto import seeded_source
from fedlab.secagg.errors import Stage

from .secure_local_transport import LocalSecureTransport, MemoryRecorder
from .test_secure_fedavg_rounds import NUM_CLIENTS, initial_weights, make_config

SHAPES = ((2, 3), (3,))


def good(cid: str = "a", scale: float = 0.1) -> TrainReport:
    arrays = (np.full((2, 3), scale, np.float32), np.full(3, scale, np.float32))
    return TrainReport(cid, Update(arrays, num_examples=10, weight=10.0), 0.5, math.inf, 0.0, 1.0, 3)


def with_update(r: TrainReport, **kw: object) -> TrainReport:
    return dataclasses.replace(r, update=dataclasses.replace(r.update, **kw))


def first(array: np.ndarray):
    return lambda r: with_update(r, arrays=(array, r.update.arrays[1]))


BAD: dict[str, tuple[Rejected, Callable[[TrainReport], TrainReport]]] = {
    "missing array": (Rejected.ARRAYS, lambda r: with_update(r, arrays=r.update.arrays[:1])),
    "wrong shape": (Rejected.SHAPE, first(np.zeros((3, 2), np.float32))),
    "integer dtype": (Rejected.DTYPE, first(np.zeros((2, 3), np.int64))),
    "complex dtype": (Rejected.DTYPE, first(np.zeros((2, 3), np.complex64))),
    "nan": (Rejected.NON_FINITE, first(np.full((2, 3), np.nan, np.float32))),
    "inf": (Rejected.NON_FINITE, first(np.array([[np.inf, 0, 0], [0, 0, 0]], np.float32))),
    "over the norm bound": (Rejected.NORM, first(np.full((2, 3), 10.0, np.float32))),
    "negative examples": (Rejected.EXAMPLES, lambda r: with_update(r, num_examples=-1)),
    "absurd examples": (Rejected.EXAMPLES, lambda r: with_update(r, num_examples=10**12, weight=1e12)),
    "nan weight": (Rejected.EXAMPLES, lambda r: with_update(r, weight=math.nan)),
    "nan epsilon": (Rejected.METRICS, lambda r: dataclasses.replace(r, epsilon=math.nan)),
    "negative noise": (Rejected.METRICS, lambda r: dataclasses.replace(r, noise_multiplier=-1.0)),
    "rate over 1": (Rejected.METRICS, lambda r: dataclasses.replace(r, sample_rate=2.0)),
    "infinite loss": (Rejected.METRICS, lambda r: dataclasses.replace(r, train_loss=math.inf)),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_update_is_named_by_its_reason(kind: str) -> None:
    reason, spoil = BAD[kind]
    rules = UpdateRules(shapes=SHAPES, max_norm=1.0, max_examples=1000)
    assert rejection(good(), rules) is None
    found = rejection(spoil(good()), rules)
    assert found is not None and found[0] is reason, found


class HostileTransport:
    """Three honest clients and one that sends ``spoil``'s update every round."""

    def __init__(self, spoil: Callable[[TrainReport], TrainReport]) -> None:
        self.spoil = spoil

    def available_clients(self) -> list[str]:
        return ["0", "1", "2", "bad"]

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        reports = [good(c, scale=0.1 * (i + 1)) for i, c in enumerate(plan.client_ids) if c != "bad"]
        if "bad" in plan.client_ids:
            reports.append(self.spoil(good("bad", scale=0.1)))
        return RoundReplies(reports=tuple(reports))


def zeros() -> list[np.ndarray]:
    return [np.zeros(s, np.float32) for s in SHAPES]


@pytest.mark.parametrize("kind", list(BAD))
def test_plain_fedavg_rejects_it_and_averages_the_rest(kind: str) -> None:
    reason, spoil = BAD[kind]
    recorder = MemoryRecorder()
    settings = FedAvgSettings(rounds=2, fraction_train=1.0, seed=0, max_update_norm=1.0, max_examples=1000)
    final = run_fedavg(
        transport=HostileTransport(spoil), recorder=recorder, initial_weights=zeros(), settings=settings
    )
    for _, _, reports, extra, _ in recorder.released:
        assert sorted(r.client_id for r in reports) == ["0", "1", "2"]
        assert extra[f"rejected_{reason}"] == 1 and extra["rejected"] == 1
    assert final[1].tolist() == pytest.approx([0.4] * 3)  # 2 rounds of the honest mean 0.2


@pytest.mark.parametrize("kind", list(BAD))
def test_dp_fedavg_rejects_it_and_noises_the_rest(kind: str) -> None:
    reason, spoil = BAD[kind]
    recorder = MemoryRecorder()
    settings = DpFedAvgSettings(
        rounds=1, sample_rate=1.0, num_clients=4, noise_multiplier=1.0, clip_norm=1.0, delta=1e-5,
        accountant="rdp", seed=0, max_examples=1000,
    )  # fmt: skip
    run_dp_fedavg(
        transport=HostileTransport(spoil), recorder=recorder, initial_weights=zeros(), settings=settings,
        noise_rng=np.random.default_rng(0), sample_rng=np.random.default_rng(1),
    )  # fmt: skip
    [(_, _, reports, extra, federation)] = recorder.released
    assert sorted(r.client_id for r in reports) == ["0", "1", "2"]
    assert extra[f"rejected_{reason}"] == 1 and len(federation) == 1, "the round released (noise) and counted"


class LyingMetadata(LocalSecureTransport):
    """Real SecAgg+ clients; client 0 claims an absurd example count with its masked input."""

    def stage(self, request: StageRequest) -> StageReplies:
        replies = super().stage(request)
        if request.stage == Stage.MASKED_INPUT and isinstance(replies.replies.get("0"), MaskedReply):
            lying = dataclasses.replace(replies.replies["0"], num_examples=10**12)
            replies = dataclasses.replace(replies, replies={**replies.replies, "0": lying})
        return replies


def test_secure_fedavg_drops_a_masked_input_with_bad_public_metadata_before_unmasking() -> None:
    config = make_config(server={"max_examples": 100_000})
    transport = LyingMetadata(config)
    settings = secure_settings(config, num_clients=NUM_CLIENTS, dim=650)
    outcome = secure_round(
        transport, settings, round_num=1, sampled=transport.available_clients(),
        weights=initial_weights(transport), source=seeded_source(b"server"),
    )  # fmt: skip
    assert outcome.mean_delta is not None, outcome.extra  # the round went on without it
    assert outcome.extra["rejected_examples"] == 1
    assert outcome.extra["included"] == NUM_CLIENTS - 1
    assert "0" not in {r.client_id for r in outcome.reports}
