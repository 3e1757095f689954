"""The cohort trainer trains each client of a round as the sequential (Opacus) trainer does.

Same clients, same round seeds (or the same client secrets): the same Poisson batches and the
same DP noise, so the updates agree up to floating-point summation order, with noise on; the
accountant histories, epsilons and everything else a client reports are identical.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from torch import nn

from fedlab.core.config import (
    DataSection,
    DpSection,
    ModelSection,
    RunConfig,
    SimulationSection,
    TrainSection,
)
from fedlab.core.errors import ConfigError
from fedlab.data.federated import build_federated_data
from fedlab.sim.cohort_trainer import ClientJob, CohortClients, client_bytes
from fedlab.sim.trainer import SwapTrainer, resolve_trainer
from fedlab.training.models import build_model, get_weights
from fedlab.training.randomness import fresh_secret

DPSGD = DpSection(mode="dpsgd", noise_multiplier=1.1, max_grad_norm=1.0)
TARGET = DpSection(mode="dpsgd", target_epsilon=5.0, max_grad_norm=0.7)
CENTRAL = DpSection(mode="central", noise_multiplier=1.0, clip_norm=0.5, adaptive_clipping=True)


def config_with(kind: str, dp: DpSection, optimizer: str = "sgd", **simulation) -> RunConfig:
    return RunConfig(
        data=DataSection(dataset="digits", num_clients=24, partitioner="dirichlet", dirichlet_alpha=1.0),
        model=ModelSection(kind=kind, hidden=16),
        train=TrainSection(batch_size=8, local_epochs=1, lr=0.05, momentum=0.9, optimizer=optimizer),
        dp=dp,
        simulation=SimulationSection(**simulation),
    )


def relative_gap(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    flat_a = np.concatenate([x.ravel() for x in a]).astype(np.float64)
    flat_b = np.concatenate([x.ravel() for x in b]).astype(np.float64)
    return float(np.linalg.norm(flat_a - flat_b) / np.linalg.norm(flat_b))


def both_trainers(config: RunConfig, client_ids, rounds=(11, 12), secrets=False, **cohort_kwargs):
    """Train the clients for two rounds on each trainer; yield their outcomes round by round."""
    data = build_federated_data(config.data, seed=0)
    shape = data.feature_shape
    model = build_model(config.model.kind, feature_shape=shape, num_classes=10, hidden=16)
    weights = get_weights(model)
    swap = SwapTrainer(config, feature_shape=shape, num_classes=10)
    cohort = CohortClients(
        config, build_model(config.model.kind, feature_shape=shape, num_classes=10, hidden=16),
        feature_shape=shape, **cohort_kwargs,
    )  # fmt: skip
    hist_s: dict[str, tuple] = {}
    hist_c: dict[str, tuple] = {}
    for round_seed in rounds:
        keys = {cid: fresh_secret() if secrets else None for cid in client_ids}
        seq = [
            swap.train(
                cid, data.client(int(cid)), weights, history=hist_s.get(cid, ()), round_seed=round_seed,
                secret=keys[cid],
            )
            for cid in client_ids
        ]  # fmt: skip
        jobs = [ClientJob(cid, data.client(int(cid)), hist_c.get(cid, ()), keys[cid]) for cid in client_ids]
        coh = cohort.train(jobs, weights, round_seed=round_seed)
        for cid, a, b in zip(client_ids, seq, coh, strict=True):
            hist_s[cid], hist_c[cid] = a.history, b.history
        yield seq, coh, cohort


CASES = [
    ("logreg", DPSGD, "sgd"),
    ("mlp", DPSGD, "sgd"),
    ("mlp", TARGET, "adam"),
    ("cnn", DPSGD, "sgd"),
    ("cnn", TARGET, "adam"),
    ("mlp", DpSection(), "sgd"),
    ("cnn", DpSection(), "adam"),
    ("logreg", CENTRAL, "sgd"),
]


@pytest.mark.parametrize(("kind", "dp", "optimizer"), CASES)
def test_noisy_cohort_updates_equal_the_sequential_trainers(kind, dp, optimizer):
    config = config_with(kind, dp, optimizer)
    # Float32 rounding apart (the two trainers compute convolutions with different kernels). Adam
    # divides each step by the gradient's own running scale, which magnifies that rounding where a
    # gradient is tiny: the noiseless CNN's 7 Adam steps end 1.35e-5 apart on an AMD EPYC (AVX-512)
    # host and within 1e-5 elsewhere; SGD stays within 1e-5.
    tolerance = 5e-5 if optimizer == "adam" else 1e-5
    for seq, coh, _ in both_trainers(config, ["3", "0", "5", "6"]):
        for a, b in zip(seq, coh, strict=True):
            assert b.report.client_id == a.report.client_id
            assert relative_gap(b.report.update.arrays, a.report.update.arrays) < tolerance
            assert b.history == a.history  # the accountant's events, exactly
            assert b.report.epsilon == a.report.epsilon
            assert b.report.steps == a.report.steps
            assert b.report.noise_multiplier == a.report.noise_multiplier
            assert b.report.sample_rate == a.report.sample_rate
            assert b.report.update.num_examples == a.report.update.num_examples
            assert b.report.update.weight == a.report.update.weight
            assert b.report.clip_indicator == a.report.clip_indicator
            assert b.report.train_loss == pytest.approx(a.report.train_loss, rel=1e-4, nan_ok=True)
    if dp.dpsgd:  # the noise was on: two clients' updates are not the same noise
        assert relative_gap(coh[0].report.update.arrays, coh[1].report.update.arrays) > 0.1


def test_secret_clients_draw_the_same_noise_in_both_trainers():
    config = config_with("mlp", DPSGD, client_randomness="secret")
    for seq, coh, _ in both_trainers(config, ["1", "2"], secrets=True):
        for a, b in zip(seq, coh, strict=True):
            assert relative_gap(b.report.update.arrays, a.report.update.arrays) < 1e-5
            assert b.history == a.history


def test_a_cohort_that_does_not_fit_is_split_and_trains_the_same():
    config = config_with("cnn", DPSGD)
    ids = ["0", "1", "2", "3", "4"]
    data = build_federated_data(config.data, seed=0)
    model = build_model("cnn", feature_shape=(1, 8, 8), num_classes=10, hidden=16)
    largest = max(len(data.client(int(c))) for c in ids)
    two = 2 * client_bytes(model, (1, 8, 8), largest, 8) + 1  # room for two clients
    whole = next(both_trainers(config, ids, rounds=(5,)))
    split = next(both_trainers(config, ids, rounds=(5,), memory_bytes=two))
    assert whole[2].cohort_sizes == [5]
    assert split[2].cohort_sizes == [2, 2, 1]
    for a, b in zip(whole[1], split[1], strict=True):
        assert relative_gap(b.report.update.arrays, a.report.update.arrays) < 1e-6
        assert b.history == a.history


def test_cohort_size_setting_is_kept():
    config = config_with("logreg", DPSGD, trainer="cohort", cohort_size=3)
    outcome = next(both_trainers(config, ["0", "1", "2", "3", "4", "5", "6"], rounds=(1,)))
    assert outcome[2].cohort_sizes == [3, 3, 1]


def test_auto_falls_back_with_one_log_line_and_explicit_cohort_is_a_config_error(caplog):
    odd = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    auto = config_with("mlp", DPSGD, trainer="auto")
    with caplog.at_level(logging.WARNING, logger="fedlab.sim.trainer"):
        decided = resolve_trainer(auto, odd)
    assert decided.simulation.trainer == "sequential"
    lines = [r.getMessage() for r in caplog.records if r.name == "fedlab.sim.trainer"]
    assert len(lines) == 1 and "layer 2 is a Tanh" in lines[0]
    fine = build_model("cnn", feature_shape=(1, 8, 8), num_classes=10)
    assert resolve_trainer(auto, fine).simulation.trainer == "cohort"
    with pytest.raises(ConfigError, match=r"simulation\.trainer: the cohort trainer cannot train this run"):
        resolve_trainer(config_with("mlp", DPSGD, trainer="cohort"), odd)
    sequential = config_with("mlp", DPSGD, trainer="sequential")
    assert resolve_trainer(sequential, odd) is sequential


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (runs on the device machine)")
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_on_cuda_the_cohort_trainer_equals_the_sequential_one(kind):
    config = dataclasses.replace(config_with(kind, DPSGD), train=TrainSection(
        batch_size=8, local_epochs=2, lr=0.05, momentum=0.9, optimizer="sgd", device="cuda"
    ))  # fmt: skip
    for seq, coh, _ in both_trainers(config, ["3", "0", "5"]):
        for a, b in zip(seq, coh, strict=True):
            assert relative_gap(b.report.update.arrays, a.report.update.arrays) < 1e-5
            assert b.history == a.history
