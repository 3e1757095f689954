#!/usr/bin/env python
"""Server optimizers on digits: rounds to reach the non-private reference accuracy, per optimizer.

``simulations/digits.toml`` (10 IID clients, every client every round, small CNN, no DP) runs
inline for ``--rounds`` rounds with each ``server.optimizer`` and server learning rate given,
over ``--seeds``. One JSON line per (optimizer, lr, seed): the accuracy after each round, the first
round whose accuracy reaches ``--target`` (null if none) and the final accuracy; then one summary
line per (optimizer, lr) with the mean rounds to target (a run that never reaches it counts
``rounds + 1``) and the mean final accuracy.

    python benchmarks/server_optimizers.py [--rounds 10] [--seeds 0 1] [--target 0.95]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = ("fedavg:1.0", "fedavgm:0.3", "fedadam:0.01", "fedyogi:0.01", "fedadagrad:0.01")


def accuracies(optimizer: str, lr: float, seed: int, rounds: int) -> list[float]:
    """Per-round central accuracy of one inline digits run."""
    overrides = [
        'simulation.backend="inline"',
        "simulation.workers=0",
        f"run.rounds={rounds}",
        f"run.seed={seed}",
        f'server.optimizer="{optimizer}"',
        f"server.lr={lr}",
    ]
    config = load_config(REPO / "simulations" / "digits.toml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        simulate_inline(config, Path(tmp) / "run", SilentObserver())
        lines = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
    return [float(json.loads(line)["accuracy"]) for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), help="optimizer:lr pairs")
    args = parser.parse_args()
    for run in args.runs:
        optimizer, lr_text = run.split(":")
        lr = float(lr_text)
        reached, finals = [], []
        for seed in args.seeds:
            acc = accuracies(optimizer, lr, seed, args.rounds)
            first = next((i + 1 for i, a in enumerate(acc) if a >= args.target), None)
            reached.append(first if first is not None else args.rounds + 1)
            finals.append(acc[-1])
            row = {"optimizer": optimizer, "lr": lr, "seed": seed, "accuracy": [round(a, 4) for a in acc],
                   "rounds_to_target": first, "final_accuracy": acc[-1]}  # fmt: skip
            print(json.dumps(row), flush=True)
        summary = {
            "optimizer": optimizer, "lr": lr, "target": args.target, "seeds": args.seeds,
            "mean_rounds_to_target": statistics.fmean(reached),
            "mean_final_accuracy": statistics.fmean(finals),
        }  # fmt: skip
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
