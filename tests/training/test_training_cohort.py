"""The cohort trainer takes Opacus' DP-SGD step (and plain SGD/Adam) for many clients at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlab.training.cohort import ClientNoise, CohortTrainer, cohort_step_from_batches
from fedlab.training.local import train_step
from fedlab.training.models import build_model
from fedlab.training.randomness import RoundStreams
from fedlab.training.specs import DpSgdSpec, OptimSpec

SHAPES = {"logreg": (1, 8, 8), "mlp": (1, 8, 8), "cnn": (1, 8, 8)}
CLIENT_SIZES = (12, 20, 7)


def client_data(seed: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    return [
        (
            torch.tensor(rng.normal(size=(n, 1, 8, 8)), dtype=dtype),
            torch.tensor(rng.integers(0, 10, n), dtype=torch.long),
        )
        for n in CLIENT_SIZES
    ]


def batches_of(seed: int, steps: int, rate: float) -> list[list[torch.Tensor | None]]:
    """Per step, per client: a Poisson batch (sometimes empty); the last client stops early."""
    rng = np.random.default_rng(seed + 1)
    plan: list[list[torch.Tensor | None]] = []
    for step in range(steps):
        row: list[torch.Tensor | None] = []
        for client, n in enumerate(CLIENT_SIZES):
            if client == 2 and step >= steps - 2:
                row.append(None)  # fewer local steps than the others
            else:
                row.append(torch.tensor(np.flatnonzero(rng.random(n) < rate), dtype=torch.long))
        plan.append(row)
    return plan


def sequential(
    kind: str, optim: OptimSpec, dp: DpSgdSpec | None, data: list[tuple[torch.Tensor, torch.Tensor]], plan
) -> list[list[np.ndarray]]:
    """Each client alone through Opacus (GradSampleModule + DPOptimizer), as LocalTrainer builds it."""
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    finals = []
    for client, (x, y) in enumerate(data):
        model = build_model(kind, feature_shape=SHAPES[kind], num_classes=10, hidden=16, seed=3).double()
        net: torch.nn.Module = model
        if optim.optimizer == "sgd":
            base: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(), lr=optim.lr, momentum=optim.momentum
            )
        else:
            base = torch.optim.Adam(model.parameters(), lr=optim.lr)
        opt = base
        if dp is not None:
            net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
            opt = DPOptimizer(
                base, noise_multiplier=0.0, max_grad_norm=dp.max_grad_norm,
                expected_batch_size=optim.batch_size, loss_reduction="mean",
            )  # fmt: skip
        for row in plan:
            batch = row[client]
            if batch is None:
                continue
            train_step(net, opt, x, y, batch)
        finals.append([p.detach().numpy().copy() for p in model.parameters()])
    return finals


@pytest.mark.parametrize("kind", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize(
    "optim",
    [
        OptimSpec(optimizer="sgd", lr=0.1, momentum=0.9, local_epochs=1, batch_size=4),
        OptimSpec(optimizer="adam", lr=0.01, momentum=0.0, local_epochs=1, batch_size=4),
    ],
    ids=["sgd-momentum", "adam"],
)
@pytest.mark.parametrize("private", [True, False], ids=["dpsgd", "plain"])
@pytest.mark.parametrize("pass_bytes", [None, 1], ids=["one-pass", "client-by-client"])
def test_noiseless_cohort_updates_equal_the_sequential_opacus_updates(
    kind: str, optim: OptimSpec, private: bool, pass_bytes: int | None
):
    dp = DpSgdSpec(noise_multiplier=0.0, max_grad_norm=0.5, delta=1e-5, accountant="rdp") if private else None
    data = client_data(0, torch.float64)  # float64: the comparison sees the step, not rounding
    plan = batches_of(0, steps=6, rate=0.3)
    expected = sequential(kind, optim, dp, data, plan)

    model = build_model(kind, feature_shape=SHAPES[kind], num_classes=10, hidden=16, seed=3).double()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    trained = (
        CohortTrainer(model, optim, dp, pass_bytes=pass_bytes)
        .train(start, data, [cohort_step_from_batches(r) for r in plan])
        .params
    )
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == len(expected[0])
    for client, weights in enumerate(expected):  # the client's update, within 1e-5 relative (L2)
        want = np.concatenate([(w - start[n].numpy()).ravel() for n, w in zip(names, weights, strict=True)])
        got = np.concatenate([(trained[n][client] - start[n]).numpy().ravel() for n in names])
        assert np.linalg.norm(got - want) <= 1e-9 * np.linalg.norm(want)
    assert all(t.dtype == torch.float64 for t in trained.values())
    # The clients really trained apart: their final weights differ.
    first = names[0]
    assert not torch.allclose(trained[first][0], trained[first][1])


def test_each_clients_noise_has_std_z_c_over_b_and_clients_are_independent():
    z, clip, batch = 1.3, 0.5, 4
    optim = OptimSpec(optimizer="sgd", lr=1.0, momentum=0.0, local_epochs=1, batch_size=batch)
    dp = DpSgdSpec(noise_multiplier=z, max_grad_norm=clip, delta=1e-5, accountant="rdp")
    model = build_model("logreg", feature_shape=(1, 8, 8), num_classes=10, seed=0)
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = client_data(1)
    empty = cohort_step_from_batches([torch.tensor([], dtype=torch.long)] * len(data))  # noise only
    noise = []
    for seed in (11, 12, 13):
        streams = RoundStreams(torch.device("cpu"))
        streams.start_seeded(seed=seed, round_seed=0)
        noise.append(ClientNoise(z, streams))
    trained = CohortTrainer(model, optim, dp).train(start, data, [empty], noise=noise).params
    assert all(t.dtype == torch.float32 for t in trained.values())
    moves = [torch.cat([(start[n] - trained[n][c]).flatten() for n in start]) for c in range(len(data))]
    for move in moves:  # lr 1: the step is the noise over B
        assert abs(float(move.mean())) < 4 * z * clip / batch / move.numel() ** 0.5
        assert float(move.std()) == pytest.approx(z * clip / batch, rel=0.1)
    correlation = np.corrcoef(moves[0].numpy(), moves[1].numpy())[0, 1]
    assert abs(correlation) < 4 / moves[0].numel() ** 0.5
