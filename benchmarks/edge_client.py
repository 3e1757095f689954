#!/usr/bin/env python
"""Footprint of one edge client: peak memory, CPU time and bytes per round.

For each model (the digits CNN, and an MLP of about 10^6 parameters) a fresh
subprocess plays one device: it loads a digits partition (~600 examples), then runs
``--rounds`` rounds of DP-SGD through the same :class:`~fedlab.flower.edge.EdgeClient`
the deployed ClientApp uses (budget file, refusal check, commit before reply), fed
Flower ``Message`` objects built like the server's. Bytes are the serialized
(protobuf) size of the received train message content and of the reply content,
i.e. the payload on the wire before HTTP/TLS framing. The peer, in the same
subprocess, is a bare PyTorch loop (same model, plain SGD, no DP, no Flower):
``ratio_cpu`` is fedlab's CPU time per round over the bare loop's.

Prints ONE JSON line per model. CPU only; Linux/macOS (``resource``).

    python benchmarks/edge_client.py [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {"digits-cnn": ("cnn", 64), "mlp-1M": ("mlp", 960)}


def child(name: str, rounds: int) -> dict[str, object]:
    import numpy as np
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.common.serde import recorddict_to_proto
    from flwr.supercore.task_identity import TaskIdentity
    from sklearn.datasets import load_digits

    from fedlab.core.config import config_from_dict
    from fedlab.flower.edge import EdgeClient, EdgeDataSource
    from fedlab.training.models import build_model, get_weights

    # A Message outside a running app needs the task identity Flower sets in its apps.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    kind, hidden = MODELS[name]
    torch.set_num_threads(1)
    config = config_from_dict(
        {
            "model": {"kind": kind, "hidden": hidden},
            "train": {"batch_size": 32, "local_epochs": 1, "lr": 0.1, "device": "cpu"},
            "dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0},
            "run": {"rounds": rounds},
        }
    )
    digits = load_digits()
    tmp = Path(tempfile.mkdtemp())
    idx = np.random.default_rng(0).permutation(len(digits.target))[:600]
    table = tmp / "device.csv"
    with table.open("w") as f:
        f.write(",".join(f"p{j}" for j in range(64)) + ",label\n")
        for i in idx:
            f.write(",".join(f"{v / 16:.4f}" for v in digits.data[i]) + f",{digits.target[i]}\n")
    node_config = {
        "data-path": str(table),
        "state-dir": str(tmp / "state"),
        "device-id": "bench",
        "max-epsilon": 0.0,
        "feature-shape": "1,8,8",
        "label-column": "label",
    }
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    client = EdgeClient(EdgeDataSource(lambda _: config))
    model = build_model(kind, feature_shape=(1, 8, 8), num_classes=10, hidden=hidden, seed=0)
    weights = get_weights(model)
    params = sum(int(w.size) for w in weights)
    cpu, received, sent = [], [], []
    for r in range(1, rounds + 1):
        content = RecordDict(
            {"arrays": ArrayRecord(weights), "config": ConfigRecord({"round-seed": r, "server-round": r})}
        )
        msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
        start = time.process_time()
        reply = client.train(msg, context)
        cpu.append(time.process_time() - start)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
        received.append(recorddict_to_proto(content).ByteSize())
        sent.append(recorddict_to_proto(reply.content).ByteSize())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    bare = bare_loop_cpu(kind, hidden, digits.data[idx] / 16, digits.target[idx], rounds)
    steady = cpu[1:] or cpu
    return {
        "model": name,
        "parameters": params,
        "rounds": rounds,
        "peak_rss_mb": round(peak_mb, 1),
        "cpu_s_first_round": round(cpu[0], 3),
        "cpu_s_per_round": round(sum(steady) / len(steady), 3),
        "bytes_received_per_round": int(sum(received) / len(received)),
        "bytes_sent_per_round": int(sum(sent) / len(sent)),
        "bare_loop_cpu_s_per_round": round(bare, 3),
        "ratio_cpu": round((sum(steady) / len(steady)) / bare, 2) if bare > 0 else None,
    }


def bare_loop_cpu(kind: str, hidden: int, x: object, y: object, rounds: int) -> float:
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812

    from fedlab.training.models import build_model

    model = build_model(kind, feature_shape=(1, 8, 8), num_classes=10, hidden=hidden, seed=0)
    xt = torch.tensor(np.asarray(x), dtype=torch.float32).reshape(-1, 1, 8, 8)
    yt = torch.tensor(np.asarray(y), dtype=torch.long)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times = []
    for _ in range(rounds):
        start = time.process_time()
        for batch in torch.split(torch.randperm(len(yt)), 32):
            opt.zero_grad()
            F.cross_entropy(model(xt[batch]), yt[batch]).backward()
            opt.step()
        times.append(time.process_time() - start)
    steady = times[1:] or times
    return sum(steady) / len(steady)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 rounds (CI keeps the script working)")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    if args.child:
        print(json.dumps(child(args.child, rounds)))
        return
    for name in MODELS:
        result = subprocess.run(
            [sys.executable, __file__, "--child", name, "--rounds", str(rounds)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise SystemExit(f"{name}: {result.stderr.strip().splitlines()[-1]}")
        print(result.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
