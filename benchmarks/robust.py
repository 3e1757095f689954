#!/usr/bin/env python
"""Robust aggregation against a minority of hostile clients: final accuracy on digits.

``simulations/digits.toml`` (10 IID clients, every client every round, no DP) runs inline with
``server.aggregation`` = ``fedavg``, ``median`` and ``trimmed_mean`` (``--trim`` of the updates
dropped at each end), once clean and once per attack, where ``--attackers`` of the clients send
their honest update multiplied by ``--scale`` (``scaled``) or by ``-(--flip)`` (``sign_flip``)
every round. The attack rewrites the replies the server receives (``InlineHooks.replies``); the
clients train as usual. One JSON line per (aggregation, attack): ``final_accuracy`` and
``accuracy_drop`` (clean minus attacked, in points, for that aggregation).

    python benchmarks/robust.py [--rounds 10] [--attackers 0.2] [--scale 50] [--flip 4] [--aggregations ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedlab.algorithms.federation import RoundPlan
from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.core.reports import RoundReplies
from fedlab.core.update import Update
from fedlab.sim.hooks import InlineHooks
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[1]
AGGREGATIONS = ("fedavg", "median", "trimmed_mean")


def scaled(update: Update, factor: float) -> Update:
    """``update`` with every array multiplied by ``factor``."""
    arrays = tuple(np.asarray(a) * factor for a in update.arrays)
    return Update(arrays, update.num_examples, update.weight)


def attack(hostile: set[str], factor: float) -> Callable[[RoundPlan, RoundReplies], RoundReplies]:
    """Replies where each hostile client's update is multiplied by ``factor``."""

    def rewrite(plan: RoundPlan, replies: RoundReplies) -> RoundReplies:
        reports = tuple(
            dataclasses.replace(r, update=scaled(r.update, factor)) if r.client_id in hostile else r
            for r in replies.reports
        )
        return dataclasses.replace(replies, reports=reports)

    return rewrite


def accuracy(aggregation: str, rounds: int, trim: float, hooks: InlineHooks) -> float:
    config = load_config(
        REPO / "simulations" / "digits.toml",
        [
            'simulation.backend="inline"', "simulation.workers=0", f"run.rounds={rounds}",
            f'server.aggregation="{aggregation}"', f"server.trim_fraction={trim}",
        ],
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        summary = simulate_inline(config, Path(tmp) / "run", SilentObserver(), hooks=hooks)
    return float(summary["accuracy"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--attackers", type=float, default=0.2)
    parser.add_argument("--scale", type=float, default=50.0)
    parser.add_argument("--flip", type=float, default=4.0)
    parser.add_argument("--trim", type=float, default=0.2)
    parser.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS), choices=AGGREGATIONS)
    args = parser.parse_args(argv)
    clients = int(load_config(REPO / "simulations" / "digits.toml").data.num_clients)
    hostile = {str(i) for i in range(round(args.attackers * clients))}
    attacks = {"scaled": args.scale, "sign_flip": -args.flip}
    for aggregation in args.aggregations:
        clean = accuracy(aggregation, args.rounds, args.trim, InlineHooks())
        row = {"benchmark": "robust", "aggregation": aggregation, "attack": "none", "attackers": len(hostile),
               "clients": clients, "final_accuracy": clean, "accuracy_drop": 0.0}  # fmt: skip
        print(json.dumps(row), flush=True)
        for name, factor in attacks.items():
            attacked = accuracy(
                aggregation, args.rounds, args.trim, InlineHooks(replies=attack(hostile, factor))
            )
            row = {**row, "attack": name, "factor": factor, "final_accuracy": attacked,
                   "accuracy_drop": round(100 * (clean - attacked), 2)}  # fmt: skip
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
