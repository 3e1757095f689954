#!/usr/bin/env python
"""Cohort DP-SGD vs Opacus one client after another: client-steps per second, same clients, same batches.

Two peers train the same cohort of clients (digits-shaped data, 1x8x8, 10 classes; ``--examples``
per client, expected batch 32, clip 1, noise 1, SGD) for ``--steps`` Poisson steps from the same
global model, in the same invocation, on the same device:

- ``sequential``: Opacus' ``GradSampleModule`` and ``DPOptimizer``, one client after another
  (what :class:`~fedlab.training.local.LocalTrainer` runs), through fedlab's ``train_step``;
- ``cohort``: :class:`~fedlab.training.cohort.CohortTrainer`, every client at once (per-layer
  batched per-example gradients; ghost-norm clipping for linear layers);
- ``plain_sequential``: the same steps without DP (plain PyTorch SGD), one client after another.

``client_steps_per_s`` counts one optimizer step of one client; ``ratio_cohort_over_sequential``
above 1 means the cohort trainer is faster. Each figure is the best of ``--repeats`` runs after a
warm-up. Prints one JSON line per (model, cohort size), with the cohort's planned memory
(:func:`~fedlab.sim.cohort_trainer.client_bytes` times the clients) and, on CUDA, its measured peak.

``--e2e`` adds ``fedlab simulate`` W3 (``benchmarks/sim_scale.py``'s digits workload with DP-SGD:
MLP, 1,000 clients, ``--per-round`` of them a round) with ``simulation.trainer = "sequential"``
and ``"cohort"``: total and steady-round time and the peak memory of the whole process tree, one
JSON line each, then one line of ratios.

    python benchmarks/cohort.py [--device cpu|cuda] [--cohorts 16 64 256] [--e2e] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from opacus.grad_sample import GradSampleModule  # noqa: E402
from opacus.optimizers import DPOptimizer  # noqa: E402

from fedlab.sim.cohort_trainer import client_bytes  # noqa: E402
from fedlab.training.cohort import ClientNoise, CohortTrainer, cohort_step_from_batches  # noqa: E402
from fedlab.training.local import train_step  # noqa: E402
from fedlab.training.models import build_model  # noqa: E402
from fedlab.training.randomness import RoundStreams  # noqa: E402
from fedlab.training.specs import DpSgdSpec, OptimSpec  # noqa: E402

BATCH, NOISE, CLIP, LR = 32, 1.0, 1.0, 0.05
SHAPE = (1, 8, 8)


def cohort_data(clients: int, examples: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(clients)
    return [
        (
            torch.tensor(rng.normal(size=(examples, *SHAPE)), dtype=torch.float32, device=device),
            torch.tensor(rng.integers(0, 10, examples), device=device),
        )
        for _ in range(clients)
    ]


def poisson_plan(clients: int, examples: int, steps: int) -> list[list[torch.Tensor]]:
    rng = np.random.default_rng(clients + 1)
    rate = BATCH / examples
    return [
        [torch.tensor(np.flatnonzero(rng.random(examples) < rate), dtype=torch.long) for _ in range(clients)]
        for _ in range(steps)
    ]


def run_sequential(
    kind: str,
    data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    plan: list[list[torch.Tensor]],
    private: bool = True,
) -> float:
    device = data[0][0].device
    model = build_model(kind, feature_shape=SHAPE, num_classes=10, seed=0).to(device)
    net: torch.nn.Module = model
    optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    if private:
        net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
        optimizer = DPOptimizer(
            optimizer, noise_multiplier=NOISE, max_grad_norm=CLIP, expected_batch_size=BATCH,
            loss_reduction="mean",
        )  # fmt: skip
    started = time.perf_counter()
    for client, (x, y) in enumerate(data):
        for row in plan:
            train_step(net, optimizer, x, y, row[client].to(device))
    _sync(device)
    return time.perf_counter() - started


def run_cohort(
    kind: str, data: Sequence[tuple[torch.Tensor, torch.Tensor]], plan: list[list[torch.Tensor]]
) -> float:
    device = data[0][0].device
    model = build_model(kind, feature_shape=SHAPE, num_classes=10, seed=0).to(device)
    optim = OptimSpec(optimizer="sgd", lr=LR, momentum=0.0, local_epochs=1, batch_size=BATCH)
    dp = DpSgdSpec(noise_multiplier=NOISE, max_grad_norm=CLIP, delta=1e-5, accountant="rdp")
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    noise = []
    for i in range(len(data)):
        streams = RoundStreams(device)
        streams.start_seeded(seed=0, round_seed=i)
        noise.append(ClientNoise(NOISE, streams))
    steps = [_to(cohort_step_from_batches(row), device) for row in plan]
    started = time.perf_counter()
    CohortTrainer(model, optim, dp).train(start, data, steps, noise=noise)
    _sync(device)
    return time.perf_counter() - started


def _to(step: Any, device: torch.device) -> Any:
    return type(step)(step.indices.to(device), step.mask.to(device), step.active.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(run: Any, repeats: int) -> float:
    run()  # warm-up
    return float(min(run() for _ in range(repeats)))


def measure(kind: str, clients: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    data = cohort_data(clients, args.examples, device)
    plan = poisson_plan(clients, args.examples, args.steps)
    sequential = best_of(lambda: run_sequential(kind, data, plan), args.repeats)
    plain = best_of(lambda: run_sequential(kind, data, plan, private=False), args.repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cohort = best_of(lambda: run_cohort(kind, data, plan), args.repeats)
    steps = clients * args.steps
    model = build_model(kind, feature_shape=SHAPE, num_classes=10, seed=0)
    assert isinstance(model, torch.nn.Sequential)
    planned = clients * client_bytes(model, SHAPE, args.examples, BATCH) / 2**20
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "benchmark": "cohort",
        "model": kind,
        "device": device.type,
        "cohort": clients,
        "steps_per_client": args.steps,
        "examples_per_client": args.examples,
        "expected_batch": BATCH,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "sequential_client_steps_per_s": round(steps / sequential, 1),
        "cohort_client_steps_per_s": round(steps / cohort, 1),
        "plain_sequential_client_steps_per_s": round(steps / plain, 1),
        "ratio_cohort_over_sequential": round(sequential / cohort, 3),
        "ratio_cohort_over_plain_sequential": round(plain / cohort, 3),
        "cohort_planned_mb": round(planned, 1),
        "cohort_cuda_peak_mb": None if peak is None else round(peak, 1),
    }


def measure_e2e(args: argparse.Namespace) -> None:
    """``fedlab simulate`` W3 with each trainer, measured as ``sim_scale.py`` measures it."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sim_scale

    clients, per_round, rounds = (50, 10, 2) if args.quick else (1000, args.per_round, args.rounds)
    spec = sim_scale.digits_spec("W3", clients, per_round, rounds, dp=True)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trainer in ("sequential", "cohort"):
            overrides = [*spec.overrides, f'simulation.trainer="{trainer}"', f'train.device="{args.device}"']
            run = sim_scale.Spec(spec.name, spec.num_clients, spec.per_round, spec.rounds, overrides)
            record = sim_scale.run_fedlab(run, "inline", Path(tmp) / trainer)
            record.update(benchmark="cohort-e2e", workload="W3", trainer=trainer, device=args.device,
                          clients=clients, per_round=per_round, rounds=rounds)  # fmt: skip
            records[trainer] = record
            print(json.dumps(record), flush=True)
    seq, coh = records["sequential"], records["cohort"]
    print(json.dumps({
        "benchmark": "cohort-e2e", "workload": "W3", "peer": "sequential", "device": args.device,
        "ratio_total_sequential_over_cohort": round(seq["total_s"] / coh["total_s"], 3),
        "ratio_steady_round_sequential_over_cohort": round(seq["steady_round_s"] / coh["steady_round_s"], 3),
        "ratio_peak_rss_cohort_over_sequential": round(coh["peak_rss_mb"] / seq["peak_rss_mb"], 3),
        "same_epsilon": seq["epsilon_max"] == coh["epsilon_max"],
    }), flush=True)  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="*", default=["logreg", "mlp", "cnn"])
    parser.add_argument("--cohorts", type=int, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--examples", type=int, default=160, help="examples per client")
    parser.add_argument("--steps", type=int, default=5, help="Poisson steps per client")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--e2e", action="store_true", help="also fedlab simulate W3 with each trainer")
    parser.add_argument("--per-round", type=int, default=100, help="W3 clients per round")
    parser.add_argument("--rounds", type=int, default=5, help="W3 rounds")
    parser.add_argument("--quick", action="store_true", help="logreg, a cohort of 8, 2 steps (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.cohorts, args.steps, args.repeats = ["logreg"], [8], 2, 1
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")  # Opacus' per-step hook warnings
    device = torch.device(args.device)
    for kind in args.models:
        for clients in args.cohorts:
            print(json.dumps(measure(kind, clients, args, device)), flush=True)
    if args.e2e:
        measure_e2e(args)


if __name__ == "__main__":
    main()
