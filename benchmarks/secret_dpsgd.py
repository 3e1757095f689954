#!/usr/bin/env python
"""Cost of a client's secret randomness in a whole DP-SGD round: seeded (simulation) vs secret (deployment).

Two peers train the same client in the same invocation, on the same device, with fedlab's
``LocalTrainer`` (Opacus per-sample gradients, clipping, noise, Poisson batches):

- ``seeded``: the round's batches and noise come from torch generators seeded from the client and
  round seeds (``fedlab simulate``: reproducible, and replayable by whoever knows the seeds);
- ``secret``: they come from ChaCha20 streams keyed by a fresh 32-byte secret (every deployment
  path): the noise is drawn on the CPU in float64 with the four-draw floating-point mitigation and
  copied to the device.

Workload: the digits CNN (38,378 parameters) or logistic regression on one client of 600 digits
examples, batch 32 (18 Poisson steps per round), noise multiplier 1.0, clip 1.0. Each time is the
median over ``--rounds`` rounds after one warm-up round per peer; the peers take turns.
``ratio_secret_over_seeded`` above 1 means the secret round is slower.

It also checks, on that device, that a secret round's noise has the calibrated scale: with q = 1
(one batch of all examples) two rounds differ only by their noise, lr * (n1 - n2) / B per
coordinate, of standard deviation lr * sqrt(2) * z * C / B (``noise_std_ratio`` should be near 1).

Prints one JSON line per model. ``--quick``: logreg only, 2 rounds (CI keeps it working).

    python benchmarks/secret_dpsgd.py [--device cpu|cuda] [--rounds N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sklearn.datasets import load_digits  # noqa: E402

from fedlab.training.local import DpSgdSpec, LocalTrainer, OptimSpec  # noqa: E402
from fedlab.training.models import build_model, get_weights  # noqa: E402
from fedlab.training.randomness import fresh_secret  # noqa: E402

EXAMPLES, BATCH = 600, 32


def client_data() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data[:EXAMPLES] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return x, digits.target[:EXAMPLES].astype(np.int64)


def trainer(kind: str, device: torch.device, *, batch: int = BATCH, lr: float = 0.1) -> LocalTrainer:
    x, y = client_data()
    model = build_model(kind, feature_shape=(1, 8, 8), num_classes=10, seed=0)
    optim = OptimSpec(optimizer="sgd", lr=lr, momentum=0.0, local_epochs=1, batch_size=batch)
    dp = DpSgdSpec(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, accountant="rdp")
    return LocalTrainer(model=model, x=x, y=y, optim=optim, dp=dp, device=device, seed=1)


def timed_rounds(kind: str, device: torch.device, rounds: int) -> dict[str, Any]:
    t = trainer(kind, device)
    start = get_weights(t.model)
    peers = {
        "seeded": lambda r: t.train_round(start, round_seed=r),
        "secret": lambda _r: t.train_round(start, secret=fresh_secret()),
    }
    for run in peers.values():
        run(0)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in peers}
    for r in range(rounds):
        for name in ("seeded", "secret") if r % 2 == 0 else ("secret", "seeded"):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            peers[name](r + 1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - began)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    return {
        "parameters": sum(int(w.size) for w in start),
        "steps_per_round": t.steps_per_round,
        "seeded_round_s": round(seconds["seeded"], 5),
        "secret_round_s": round(seconds["secret"], 5),
        "ratio_secret_over_seeded": round(seconds["secret"] / seconds["seeded"], 3),
    }


def noise_check(kind: str, device: torch.device) -> float:
    """Measured over expected std of the difference of two secret q = 1 rounds (near 1)."""
    lr = 1.0
    t = trainer(kind, device, batch=EXAMPLES, lr=lr)
    start = get_weights(t.model)
    a, b = (t.train_round(start, secret=fresh_secret()).update.arrays for _ in range(2))
    gap = np.concatenate([(u - v).ravel() for u, v in zip(a, b, strict=True)])
    expected = lr * math.sqrt(2.0) * 1.0 * 1.0 / EXAMPLES
    return float(np.std(gap) / expected)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per peer")
    parser.add_argument("--quick", action="store_true", help="logreg only, 2 rounds (CI)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    kinds = ("logreg",) if args.quick else ("logreg", "cnn")
    rounds = 2 if args.quick else args.rounds
    for kind in kinds:
        record: dict[str, Any] = {"benchmark": "secret_dpsgd", "model": kind, "device": str(device)}
        record.update(timed_rounds(kind, device, rounds))
        record["noise_std_ratio"] = round(noise_check(kind, device), 4)
        record["workload"] = {
            "examples": EXAMPLES, "batch": BATCH, "noise_multiplier": 1.0, "rounds": rounds,
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        }  # fmt: skip
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
