"""The wrapper a Flower user imports and fedlab's own round loop are one DP-FedAvg mechanism.

Two routes to one answer: :class:`FedlabDpFedAvg` around Flower's ``FedAvg`` on a fake Grid (nodes
behind fedlab's ``clipping_mod``), and :func:`run_dp_fedavg` (what fedlab's ServerApp and every
simulator run) over a transport whose clients clip the same deltas. With the same seeded streams
for sampling and noise they must ask the same clients, release the same models, move the adaptive
clip norm the same way, announce the same public settings and report the same epsilon.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedlab.algorithms.dp_fedavg import DpFedAvgSettings, run_dp_fedavg
from fedlab.algorithms.federation import RoundPlan
from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.update import Update
from fedlab.flower.client_privacy import clipping_mod
from fedlab.flower.dp_strategy import FedlabDpFedAvg
from fedlab.privacy.adaptive_clipping import AdaptiveClipState, norm_indicator
from fedlab.privacy.mechanisms import GaussianMechanism
from tests.algorithms.secure_local_transport import MemoryRecorder

from .fake_grid import FakeGrid, install_clock
from .test_dp_strategy import SHAPES, model, node_with_delta

pytestmark = pytest.mark.usefixtures("server_process")

NODES = range(1, 9)
ROUNDS = 5
SCALE = {1: 0.02, 2: 0.05, 3: -0.08, 4: 0.12, 5: 0.2, 6: -0.3, 7: 0.45, 8: 0.6}
"""Node k's delta is SCALE[k] in every coordinate: norms 0.08 to 2.3 around C = 1 (15 coordinates)."""


def delta_of(node: int) -> list[np.ndarray]:
    return [np.full(shape, SCALE[node], np.float32) for shape in SHAPES]


def adaptive() -> AdaptiveClipState:
    return AdaptiveClipState(clip_norm=1.0, target_quantile=0.5, learning_rate=0.3, count_noise_std=1.0)


class ClippingClients:
    """fedlab clients under central DP: each clips its delta to the announced C and sends its bit."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []
        self.announced: list[dict[str, float]] = []

    def available_clients(self) -> list[str]:
        return [str(n) for n in NODES]

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        self.asked.append(plan.client_ids)
        self.announced.append(dict(plan.instructions))
        clip = GaussianMechanism(clip_norm=plan.instructions["clipping_norm"], noise_multiplier=0.0)
        reports = []
        for cid in plan.client_ids:
            clipped = clip.clip(Update(tuple(np.float64(d) for d in delta_of(int(cid))), 10))
            bit = norm_indicator(update_norm=clipped.norm, clip_norm=clip.clip_norm)
            reports.append(TrainReport(cid, clipped.update, np.nan, np.inf, 0.0, 1.0, 1, clip_indicator=bit))
        return RoundReplies(tuple(reports))


def behind_clipping_mod(node: int):
    answer = node_with_delta(lambda: delta_of(node))
    context = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
    return lambda msg: clipping_mod(msg, context, lambda m, _: answer(m))


@pytest.mark.parametrize("adaptive_clipping", [False, True], ids=["fixed-clip", "adaptive-clip"])
def test_the_wrapper_and_fedlabs_round_loop_release_the_same_models(monkeypatch, adaptive_clipping) -> None:
    clock = install_clock(monkeypatch)
    grid = FakeGrid({n: behind_clipping_mod(n) for n in NODES}, clock=clock)
    common = {"noise_multiplier": 0.8, "sample_rate": 0.6, "delta": 1e-5, "accountant": "pld"}
    wrapper = FedlabDpFedAvg(
        FedAvg(min_available_nodes=1),
        clipping_norm=1.0,
        population_size=len(NODES),
        adaptive=adaptive() if adaptive_clipping else None,
        client_clipping=True,
        noise_rng=np.random.default_rng(11),
        sample_rng=np.random.default_rng(12),
        **common,  # type: ignore[arg-type]
    )
    wrapper.num_rounds = ROUNDS  # what start() announces
    clients, recorder = ClippingClients(), MemoryRecorder()
    outcome = run_dp_fedavg(
        transport=clients,
        recorder=recorder,
        initial_weights=[w.astype(np.float64) for w in model()],
        settings=DpFedAvgSettings(
            rounds=ROUNDS,
            num_clients=len(NODES),
            clip_norm=1.0,
            seed=0,
            adaptive=adaptive() if adaptive_clipping else None,
            **common,  # type: ignore[arg-type]
        ),
        noise_rng=np.random.default_rng(11),
        sample_rng=np.random.default_rng(12),
    )
    weights = model()
    for r in range(1, ROUNDS + 1):
        clip_before = wrapper.clip_norm
        messages = list(wrapper.configure_train(r, ArrayRecord(weights), ConfigRecord(), grid))
        asked = tuple(sorted(str(m.metadata.dst_node_id) for m in messages))
        assert asked == clients.asked[r - 1], r
        config = messages[0].content.config_records["config"]
        assert {k: config[k] for k in clients.announced[r - 1]} == clients.announced[r - 1]
        arrays, metrics = wrapper.aggregate_train(r, grid.send_and_receive(messages, timeout=10.0))
        weights = arrays.to_numpy_ndarrays()
        round_num, released, _, extra, spend = recorder.released[r - 1]
        assert round_num == r and extra["clip_norm"] == clip_before == metrics["clip-norm"]
        for got, want in zip(weights, released, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)
        assert metrics["epsilon"] == pytest.approx(spend[0].epsilon, rel=1e-12)
    assert len({len(a) for a in clients.asked}) > 1  # Poisson: the cohorts differ in size
    if adaptive_clipping:
        assert len({e["clip_norm"] for *_, e, _ in recorder.released}) == ROUNDS  # C moved every round
    assert wrapper.epsilon == pytest.approx(outcome.epsilon, rel=1e-12)
