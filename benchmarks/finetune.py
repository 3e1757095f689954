#!/usr/bin/env python
"""Private fine-tuning from pre-training vs private training from scratch, per epsilon.

``simulations/stdlib-finetune.toml`` (next-byte prediction, 10 standard library modules, a small
Transformer, DP-SGD on each client) runs inline from scratch, fully fine-tuned from a checkpoint
and LoRA fine-tuned from it, at each ``--epsilons`` (``inf``: no DP). The checkpoint is pre-trained
first without DP on the corpus' other modules (``fedlab pretrain``'s public split), unless
``--init`` names one. One JSON line per run: epsilon, start, final next-byte accuracy and
perplexity, and the bytes of one client's update per round.

    python benchmarks/finetune.py [--epsilons 1 4 8 inf] [--rounds 10] [--init PATH.npz]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.data.federated import build_federated_data
from fedlab.data.text import public_text
from fedlab.sim.inline import simulate_inline
from fedlab.training.pretrain import pretrain
from fedlab.training.recorder import save_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "simulations" / "stdlib-finetune.toml"


def run(epsilon: float, start: str, init: Path, rounds: int) -> dict[str, object]:
    """One inline run; ``start`` is ``scratch``, ``full`` or ``lora``."""
    overrides = [f"run.rounds={rounds}", "simulation.workers=0"]
    overrides += ['dp.mode="none"'] if math.isinf(epsilon) else [f"dp.target_epsilon={epsilon}"]
    if start != "scratch":
        overrides += [f'model.init="{init}"', f'train.finetune="{start}"']
    with tempfile.TemporaryDirectory() as tmp:
        summary = simulate_inline(load_config(CONFIG, overrides), Path(tmp) / "run", SilentObserver())
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "start": start,
        "rounds": rounds,
        "accuracy": summary["accuracy"],
        "perplexity": rows[-1]["perplexity"],
        "epsilon_max": summary["epsilon_max"],
        "update_bytes": rows[-1]["update_bytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0, 8.0, math.inf])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--init", type=Path, default=None, help="a pre-trained model.npz (default: pre-train now)"
    )
    parser.add_argument("--pretrain-epochs", type=int, default=1)
    args = parser.parse_args()
    config = load_config(CONFIG)
    init = args.init
    if init is None:
        public, clients = public_text(config.data)
        test = build_federated_data(config.data, seed=config.run.seed).test
        result = pretrain(config, public, test, epochs=args.pretrain_epochs)
        init = Path(tempfile.mkdtemp()) / "public.npz"
        save_model(init, result.weights)
        print(
            json.dumps(
                {
                    "pretrain": {
                        "examples": len(public),
                        "clients": clients,
                        "test_accuracy": result.test_accuracy,
                    }
                }
            ),
            flush=True,
        )
    for epsilon in args.epsilons:
        for start in ("scratch", "full", "lora"):
            print(json.dumps(run(epsilon, start, init, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
