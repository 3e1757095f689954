#!/usr/bin/env python
"""Cohort DP-SGD vs Opacus one client after another: client-steps per second, same clients, same batches.

Two peers train the same cohort of clients (digits-shaped data, 1x8x8, 10 classes; ``--examples``
per client, expected batch 32, clip 1, noise 1, SGD) for ``--steps`` Poisson steps from the same
global model, in the same invocation, on the same device:

- ``sequential``: Opacus' ``GradSampleModule`` and ``DPOptimizer``, one client after another
  (what :class:`~fedlab.training.local.LocalTrainer` runs), through fedlab's ``train_step``;
- ``cohort``: :class:`~fedlab.training.cohort.CohortTrainer`, every client at once (ghost-norm
  clipping for logreg and the MLP, ``torch.func`` per-example gradients for the CNN).

``client_steps_per_s`` counts one optimizer step of one client; ``ratio_cohort_over_sequential``
above 1 means the cohort trainer is faster. Each figure is the best of ``--repeats`` runs after a
warm-up. Prints one JSON line per (model, cohort size). The end-to-end ``fedlab simulate`` W3
comparison waits for the simulator to use the cohort trainer (issue 14).

    python benchmarks/cohort.py [--device cpu|cuda] [--cohorts 16 64 256] [--quick]
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

from fedlab.training.cohort import CohortTrainer, cohort_step_from_batches  # noqa: E402
from fedlab.training.local import train_step  # noqa: E402
from fedlab.training.models import build_model  # noqa: E402
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
    kind: str, data: Sequence[tuple[torch.Tensor, torch.Tensor]], plan: list[list[torch.Tensor]]
) -> float:
    device = data[0][0].device
    model = build_model(kind, feature_shape=SHAPE, num_classes=10, seed=0).to(device)
    net = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=LR), noise_multiplier=NOISE, max_grad_norm=CLIP,
        expected_batch_size=BATCH, loss_reduction="mean",
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
    generators = [torch.Generator(device=device).manual_seed(i) for i in range(len(data))]
    steps = [_to(cohort_step_from_batches(row), device) for row in plan]
    started = time.perf_counter()
    CohortTrainer(model, optim, dp).train(start, data, steps, noise=generators)
    _sync(device)
    return time.perf_counter() - started


def _to(step: Any, device: torch.device) -> Any:
    return type(step)(step.indices.to(device), step.mask.to(device), step.active.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(run: Any, repeats: int) -> float:
    run()  # warm-up
    return min(run() for _ in range(repeats))


def measure(kind: str, clients: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    data = cohort_data(clients, args.examples, device)
    plan = poisson_plan(clients, args.examples, args.steps)
    sequential = best_of(lambda: run_sequential(kind, data, plan), args.repeats)
    cohort = best_of(lambda: run_cohort(kind, data, plan), args.repeats)
    steps = clients * args.steps
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
        "ratio_cohort_over_sequential": round(sequential / cohort, 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models", nargs="*", default=["logreg", "mlp", "cnn"])
    parser.add_argument("--cohorts", type=int, nargs="*", default=[16, 64, 256, 1024])
    parser.add_argument("--examples", type=int, default=160, help="examples per client")
    parser.add_argument("--steps", type=int, default=5, help="Poisson steps per client")
    parser.add_argument("--repeats", type=int, default=2)
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


if __name__ == "__main__":
    main()
