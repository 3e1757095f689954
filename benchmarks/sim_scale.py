#!/usr/bin/env python
"""Large-deployment simulator benchmark (issue 5): fedlab inline vs Flower vs a bare PyTorch loop.

Prints one JSON line per measurement, peers side by side in the same run, as ratios:

* ``W1``: MLP on digits, 1000 clients, 20 per round, 10 rounds, no DP: ``fedlab
  simulate`` with the inline backend, with ``--backend flower`` (Ray), and the bare
  sequential loop of ``sim_baseline.py`` (total wall, steady round, peak memory of
  the whole process tree, start-up).
* ``W2``: population sweep 10^3 .. 10^6 clients of Synthetic(1, 1), MLP, 100 per
  round: inline time per round and peak memory per population, then one summary
  line with the bare loop at the largest population for the memory ratio.
* ``W3``: W1 with DP-SGD (noise 1.0, clip 1.0): inline vs a bare loop running the
  same Opacus DP-SGD (one GradSampleModule and DPOptimizer, Poisson batches,
  accountant hook).

``startup_s`` is the wall time outside the rounds (imports, set-up, recording,
plots, shutdown); ``import_s`` is the time the peer's process spent importing (fedlab
runs through a wrapper that times its imports, then calls ``fedlab simulate``), and
``startup_excl_imports_s`` runs from the end of the imports to the start of the
first round (the inline backend stamps each round's start in ``metrics.jsonl``; for
Flower it is ``startup_s - import_s``, an upper bound). ``--quick`` runs a tiny
version of W1 (no Flower), W2 (10^3, 10^4) and W3 so CI keeps the script working; it
never judges speed.

    python benchmarks/sim_scale.py [--quick] [--only W1,W2,W3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_baseline import (
    CONFIG,
    Workload,
    accuracy,
    bare_round,
    build_mlp,
    child_env,
    ratio,
    rounded,
    run_measured,
    scratch_dir,
    steady,
)

DP_OVERRIDES = ['dp.mode="dpsgd"', "dp.noise_multiplier=1.0", "dp.max_grad_norm=1.0"]


@dataclass(frozen=True)
class Spec:
    """One workload: ``--set`` overrides of ``simulations/digits.toml`` and its shape."""

    name: str
    num_clients: int
    per_round: int
    rounds: int
    overrides: list[str] = field(default_factory=list)

    @property
    def dp(self) -> bool:
        """Whether the workload runs DP-SGD."""
        return 'dp.mode="dpsgd"' in self.overrides


def digits_spec(name: str, num_clients: int, per_round: int, rounds: int, *, dp: bool) -> Spec:
    """W1/W3: sim_baseline's digits workload (MLP, batch 1, 1 local epoch), optionally with DP-SGD."""
    base = Workload(num_clients=num_clients, clients_per_round=per_round, rounds=rounds).overrides()
    extra = DP_OVERRIDES if dp else []
    return Spec(name, num_clients, per_round, rounds, [*base, *extra])


def synthetic_spec(num_clients: int, per_round: int, rounds: int) -> Spec:
    """W2: Synthetic(1, 1) with natural non-IID clients, MLP, ``per_round`` clients a round."""
    overrides = [
        'data.dataset="synthetic"',
        'data.partitioner="dirichlet"',
        "data.synthetic_alpha=1.0",
        "data.synthetic_beta=1.0",
        f"data.num_clients={num_clients}",
        f"server.fraction_train={per_round / num_clients!r}",
        'model.kind="mlp"',
        'dp.mode="none"',
        f"run.rounds={rounds}",
        "train.local_epochs=1",
        "data.min_partition_size=16",
    ]
    return Spec(f"W2-{num_clients}", num_clients, per_round, rounds, overrides)


def load_spec_config(spec: Spec) -> Any:
    """The fedlab ``RunConfig`` of a spec (imported lazily)."""
    from fedlab.core.config import load_config

    return load_config(CONFIG, spec.overrides)


# --------------------------------------------------------------------------- peers


def peer_record(wall: float, peak_mb: float, seconds: Sequence[float], imports: float) -> dict[str, Any]:
    """The common per-peer measurements."""
    startup = wall - sum(seconds)
    return {
        "total_s": wall,
        "startup_s": startup,
        "import_s": imports,
        "startup_excl_imports_s": startup - imports,
        "first_round_s": seconds[0],
        "steady_round_s": steady(seconds),
        "peak_rss_mb": peak_mb,
        "rounds_completed": len(seconds),
    }


def run_fedlab(spec: Spec, backend: str, workdir: Path) -> dict[str, Any]:
    """``fedlab simulate`` with ``backend``, measured over its whole process tree."""
    workdir.mkdir(parents=True)
    ray_tmp = workdir / "r"
    ray_tmp.mkdir()
    out = workdir / "run"
    sets = [a for item in [*spec.overrides, f'simulation.backend="{backend}"'] for a in ("--set", item)]
    stamps = workdir / "stamps.json"
    cli = ["simulate", str(CONFIG), *sets, "--quiet", "--out", str(out)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cli", str(stamps), backend, "--", *cli]
    env = child_env(RAY_TMPDIR=str(ray_tmp))
    measured = run_measured(cmd, env=env, cwd=workdir, workdir=workdir, marker=str(ray_tmp))
    if measured.returncode != 0:
        tail = "\n".join(measured.stderr.strip().splitlines()[-20:])
        sys.exit(f"sim_scale: fedlab ({backend}) exited with {measured.returncode}:\n{tail}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    record = peer_record(measured.wall_s, measured.peak_rss_mb, [float(r["seconds"]) for r in rows], math.nan)
    times = json.loads(stamps.read_text())
    record["import_s"] = times["imports_done"] - times["process_start"]
    if "started_at" in rows[0]:  # the inline backend stamps each round's start
        record["startup_excl_imports_s"] = float(rows[0]["started_at"]) - times["imports_done"]
    else:
        record["startup_excl_imports_s"] = record["startup_s"] - record["import_s"]
    summary = json.loads((out / "summary.json").read_text())
    record["final_accuracy"] = summary["accuracy"]
    record["epsilon_max"] = summary.get("epsilon_max")
    record["workers_used_max"] = max(int(r.get("workers", 0)) for r in rows)
    record["leftover_processes"] = measured.leftover_processes
    return record


def run_cli(stamps: Path, backend: str, args: Sequence[str]) -> None:
    """Time the imports of ``fedlab simulate``, write the stamps, then run the command."""
    process_start = time.time()
    import fedlab.cli.main
    import fedlab.cli.plots
    import fedlab.sim.inline
    import fedlab.training.recorder

    if backend == "flower":
        import fedlab.flower.simulation
    stamps.write_text(json.dumps({"process_start": process_start, "imports_done": time.time()}))
    sys.argv = ["fedlab", *args]
    fedlab.cli.main.main()


def run_bare(spec: Spec, workdir: Path) -> dict[str, Any]:
    """The bare loop (with Opacus DP-SGD when the spec has DP) in a measured subprocess."""
    workdir.mkdir(parents=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", json.dumps(asdict(spec))]
    measured = run_measured(cmd, env=child_env(), cwd=workdir, workdir=workdir)
    if measured.returncode != 0:
        tail = "\n".join(measured.stderr.strip().splitlines()[-20:])
        sys.exit(f"sim_scale: bare loop exited with {measured.returncode}:\n{tail}")
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    record = peer_record(measured.wall_s, measured.peak_rss_mb, result["round_seconds"], result["import_s"])
    record["startup_excl_imports_s"] = result["startup_excl_imports_s"]
    record["final_accuracy"] = result["final_accuracy"]
    record["leftover_processes"] = measured.leftover_processes
    return record


# --------------------------------------------------------------------------- bare loops


def bare_dp_client(parts: Any, x: Any, y: Any, train: Any, generator: Any) -> None:
    """One client's DP-SGD on the shared wrapped model: Poisson batches of rate b/n, n//b steps."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    model, optimizer, accountant = parts
    n = len(y)
    rate = train.batch_size / n
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
    optimizer.state.clear()
    for _ in range(train.local_epochs):
        sampler = UniformWithReplacementSampler(
            num_samples=n, sample_rate=rate, generator=generator, steps=n // train.batch_size
        )
        for chosen in sampler:
            idx = torch.tensor(chosen, dtype=torch.long)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx], reduction="sum") / max(len(idx), 1)
            torch.autograd.backward(loss)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_dp_parts(model: Any, config: Any) -> tuple[Any, Any, Any]:
    """Wrap the model once for per-sample gradients; one DPOptimizer and accountant."""
    import torch
    from opacus.accountants import RDPAccountant
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    base = torch.optim.SGD(wrapped.parameters(), lr=config.train.lr, momentum=config.train.momentum)
    optimizer = DPOptimizer(
        base,
        noise_multiplier=config.dp.noise_multiplier,
        max_grad_norm=config.dp.max_grad_norm,
        expected_batch_size=config.train.batch_size,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(config.run.seed),
    )
    return wrapped, optimizer, RDPAccountant()


def bare_dp_round(
    parts: Any, weights: list[Any], data: Any, clients: Sequence[int], config: Any, gen: Any
) -> None:
    """One FedAvg round of DP-SGD clients on the shared wrapped model."""
    import torch

    model = parts[0]
    sums = [torch.zeros_like(w) for w in weights]
    total = 0
    for cid in clients:
        part = data.client(int(cid))
        x, y = torch.from_numpy(part.x), torch.from_numpy(part.y)
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights, strict=True):
                p.copy_(w)
        bare_dp_client(parts, x, y, config.train, gen)
        with torch.no_grad():
            for s, p, w in zip(sums, model.parameters(), weights, strict=True):
                s.add_(p - w, alpha=len(y))
        total += len(y)
    with torch.no_grad():
        for w, s in zip(weights, sums, strict=True):
            w.add_(s, alpha=1.0 / total)


def run_bare_loop(spec: Spec) -> dict[str, Any]:
    """The bare sequential loop of a spec (runs inside the ``--bare`` subprocess)."""
    process_start = time.time()
    import numpy as np
    import opacus  # noqa: F401
    import torch

    from fedlab.data.federated import build_federated_data

    imports_done = time.time()

    torch.set_num_threads(1)
    config = load_spec_config(spec)
    seed = config.run.seed
    data = build_federated_data(config.data, seed=seed)
    model = build_mlp(data.feature_shape, data.num_classes, config.model.hidden, seed)
    weights = [p.detach().clone() for p in model.parameters()]
    parts = bare_dp_parts(model, config) if spec.dp else None
    rng, gen = np.random.default_rng([seed, 1]), torch.Generator().manual_seed(seed)
    round_seconds: list[float] = []
    first_round_at = time.time()
    for _ in range(config.run.rounds):
        started = time.perf_counter()
        clients = np.sort(rng.choice(data.num_clients, size=spec.per_round, replace=False)).tolist()
        if parts is None:
            bare_round(model, weights, data, clients, config.train, gen)
        else:
            bare_dp_round(parts, weights, data, clients, config, gen)
        round_seconds.append(time.perf_counter() - started)
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    test_x, test_y = torch.from_numpy(data.test.x), torch.from_numpy(data.test.y)
    return {
        "round_seconds": round_seconds,
        "final_accuracy": accuracy(model, test_x, test_y),
        "import_s": imports_done - process_start,
        "startup_excl_imports_s": first_round_at - imports_done,
    }


# --------------------------------------------------------------------------- measurements


def context(quick: bool) -> dict[str, Any]:
    """Machine context recorded in every line."""
    return {
        "mode": "quick" if quick else "full",
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line."""
    print(json.dumps(record), flush=True)


def measure_w1(spec: Spec, quick: bool, with_flower: bool) -> None:
    """W1 (or W3 with DP): inline vs Flower vs the bare loop."""
    with scratch_dir() as tmp:
        inline = run_fedlab(spec, "inline", tmp / "inline")
        bare = run_bare(spec, tmp / "bare")
        flower = run_fedlab(spec, "flower", tmp / "flower") if with_flower else None
    record: dict[str, Any] = {
        "benchmark": "sim_scale",
        "measurement": spec.name,
        "workload": {
            "clients": spec.num_clients,
            "per_round": spec.per_round,
            "rounds": spec.rounds,
            "dataset": "digits",
            "model": "mlp",
            "dp": "dpsgd" if spec.dp else "none",
        },
        **context(quick),
        "fedlab_inline": rounded(inline),
        "bare_loop": rounded(bare, 6),
        "ratio_inline_vs_bare_total": ratio(inline["total_s"], bare["total_s"]),
        "ratio_inline_vs_bare_steady_round": ratio(inline["steady_round_s"], bare["steady_round_s"]),
        "ratio_inline_vs_bare_peak_rss": ratio(inline["peak_rss_mb"], bare["peak_rss_mb"]),
    }
    if flower is not None:
        record["fedlab_flower"] = rounded(flower)
        record["speedup_steady_round_inline_vs_flower"] = ratio(
            flower["steady_round_s"], inline["steady_round_s"]
        )
        record["ratio_flower_vs_bare_total"] = ratio(flower["total_s"], bare["total_s"])
    emit(record)


def measure_w2(populations: Sequence[int], per_round: int, rounds: int, quick: bool) -> None:
    """W2: inline time per round and peak memory per population; bare loop at the largest."""
    results: dict[int, dict[str, Any]] = {}
    with scratch_dir() as tmp:
        for n in populations:
            results[n] = run_fedlab(synthetic_spec(n, per_round, rounds), "inline", tmp / f"inline-{n}")
            emit(
                {
                    "benchmark": "sim_scale",
                    "measurement": "W2",
                    "clients": n,
                    "per_round": per_round,
                    **context(quick),
                    "fedlab_inline": rounded(results[n]),
                }
            )
        largest, smallest = max(populations), min(populations)
        bare = run_bare(synthetic_spec(largest, per_round, rounds), tmp / "bare")
    emit(
        {
            "benchmark": "sim_scale",
            "measurement": "W2-summary",
            **context(quick),
            "steady_round_s": {str(n): round(r["steady_round_s"], 4) for n, r in results.items()},
            "peak_rss_mb": {str(n): round(r["peak_rss_mb"], 1) for n, r in results.items()},
            f"bare_loop_{largest}": rounded(bare, 6),
            "ratio_round_largest_vs_smallest": ratio(
                results[largest]["steady_round_s"], results[smallest]["steady_round_s"]
            ),
            "ratio_peak_rss_inline_vs_bare_largest": ratio(
                results[largest]["peak_rss_mb"], bare["peak_rss_mb"]
            ),
        }
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads (CI keeps the script working)")
    parser.add_argument("--only", default="W1,W2,W3", help="comma-separated subset of W1,W2,W3")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower peer in W1")
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: the bare peer, given a JSON spec
    parser.add_argument("--cli", nargs=2, help=argparse.SUPPRESS)  # internal: timed `fedlab simulate`
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chosen measurements (or, with ``--bare``, one bare peer)."""
    args = parse_args(argv)
    if args.cli:
        run_cli(Path(args.cli[0]), args.cli[1], args.rest)
        return
    if args.bare:
        print(json.dumps(run_bare_loop(Spec(**json.loads(args.bare)))))
        return
    chosen = set(args.only.split(","))
    if args.quick:
        w1, w3 = digits_spec("W1", 50, 5, 2, dp=False), digits_spec("W3", 50, 5, 2, dp=True)
        populations, per_round, rounds = [1000, 10_000], 10, 2
    else:
        w1, w3 = digits_spec("W1", 1000, 20, 10, dp=False), digits_spec("W3", 1000, 20, 10, dp=True)
        populations, per_round, rounds = [1000, 10_000, 100_000, 1_000_000], 100, 10
    if "W1" in chosen:
        measure_w1(w1, args.quick, with_flower=not (args.quick or args.no_flower))
    if "W2" in chosen:
        measure_w2(populations, per_round, rounds, args.quick)
    if "W3" in chosen:
        measure_w1(w3, args.quick, with_flower=False)


if __name__ == "__main__":
    main()
