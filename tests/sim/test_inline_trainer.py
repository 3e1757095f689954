"""The swap trainer trains every client exactly as its own LocalTrainer (ClientRuntime) would."""

import numpy as np
import pytest

from fedlab.core.config import DataSection, DpSection, ModelSection, RunConfig, TrainSection
from fedlab.data.federated import build_federated_data
from fedlab.sim.trainer import SwapTrainer, local_steps
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.models import build_model, get_weights

DP = DpSection(mode="dpsgd", noise_multiplier=1.1, max_grad_norm=1.0)
TARGET = DpSection(mode="dpsgd", target_epsilon=5.0, max_grad_norm=1.0)


def config_with(dp: DpSection, optimizer: str = "sgd") -> RunConfig:
    return RunConfig(
        data=DataSection(dataset="digits", num_clients=6),
        model=ModelSection(kind="mlp", hidden=16),
        train=TrainSection(batch_size=8, local_epochs=2, lr=0.1, momentum=0.9, optimizer=optimizer),
        dp=dp,
    )


@pytest.mark.parametrize(("dp", "optimizer"), [(DpSection(), "sgd"), (DP, "sgd"), (TARGET, "adam")])
def test_swap_trainer_matches_client_runtime_bit_for_bit(dp, optimizer):
    config = config_with(dp, optimizer)
    data = build_federated_data(config.data, seed=0)
    model = build_model("mlp", feature_shape=data.feature_shape, num_classes=data.num_classes, hidden=16)
    weights = get_weights(model)
    runtime, swap = ClientRuntime(), SwapTrainer(config, feature_shape=data.feature_shape, num_classes=10)
    histories_a, histories_b = {}, {}
    for round_seed in (11, 12):  # two rounds: histories carried over, clients interleaved
        for cid in ("3", "0", "5"):
            part = data.client(int(cid))
            report_a, hist_a = runtime.train(
                config,
                ClientData(cid, part, data.num_classes, data.feature_shape),
                weights,
                history=histories_a.get(cid, ()),
                round_seed=round_seed,
            )
            got = swap.train(cid, part, weights, history=histories_b.get(cid, ()), round_seed=round_seed)
            histories_a[cid], histories_b[cid] = hist_a, got.history
            assert got.history == hist_a
            assert got.report.epsilon == report_a.epsilon
            assert got.report.steps == report_a.steps == local_steps(len(part), config)
            assert got.report.train_loss == pytest.approx(report_a.train_loss, nan_ok=True)
            for a, b in zip(report_a.update.arrays, got.report.update.arrays, strict=True):
                np.testing.assert_array_equal(a, b)
