#!/usr/bin/env python
"""Baseline: ``fedlab simulate`` (Flower's simulation engine on Ray) against a bare PyTorch loop.

Both peers run the same workload in the same invocation: an MLP on digits, IID
partitions, ``clients_per_round`` of ``num_clients`` clients sampled each round, each
doing plain minibatch SGD (no DP) for ``local_epochs`` from the global model, then an
example-weighted average of the deltas. Each peer runs in its own subprocess; the
summed resident memory of its whole process tree (for fedlab: the CLI process plus
Ray's gcs_server, raylet, agents and workers) is sampled every 0.2 s for the peak.

Prints ONE JSON line: both peers' times, peak memory, final accuracy, and the ratios
fedlab / bare. A benchmark, not a test: ``--quick`` only keeps it working in CI.

    python benchmarks/sim_baseline.py [--quick]

Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "simulations" / "digits.toml"
SAMPLE_INTERVAL_S = 0.2
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """What both peers run: digits, MLP, no DP, the settings of ``simulations/digits.toml`` otherwise."""

    num_clients: int
    clients_per_round: int
    rounds: int
    local_epochs: int = 1
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.clients_per_round <= self.num_clients:
            raise ValueError("need 1 <= clients_per_round <= num_clients")
        if round(self.fraction * self.num_clients) != self.clients_per_round:
            raise ValueError("clients_per_round / num_clients does not round-trip as a fraction")

    @property
    def fraction(self) -> float:
        """``server.fraction_train`` that samples ``clients_per_round`` clients."""
        return self.clients_per_round / self.num_clients

    def overrides(self) -> list[str]:
        """The ``--set`` overrides turning ``digits.toml`` into this workload."""
        return [
            f"data.num_clients={self.num_clients}",
            "data.min_partition_size=1",
            f"server.fraction_train={self.fraction!r}",
            'model.kind="mlp"',
            'dp.mode="none"',
            f"run.rounds={self.rounds}",
            f"train.batch_size={self.batch_size}",
            f"train.local_epochs={self.local_epochs}",
        ]


FULL = Workload(num_clients=1000, clients_per_round=20, rounds=10)
QUICK = Workload(num_clients=50, clients_per_round=5, rounds=2)


def load_run_config(workload: Workload) -> Any:
    """The fedlab ``RunConfig`` both peers use (imported lazily: the parent never loads torch)."""
    from fedlab.core.config import load_config

    return load_config(CONFIG, workload.overrides())


# --------------------------------------------------------------------------- process trees


@dataclass(frozen=True)
class ProcInfo:
    """The fields of ``/proc/PID/stat`` the sampler needs."""

    ppid: int
    pgid: int
    start: int  # clock ticks since boot: (pid, start) identifies a process across PID reuse


def read_proc(pid: int) -> ProcInfo | None:
    """Parse ``/proc/PID/stat``; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    return ProcInfo(ppid=int(fields[1]), pgid=int(fields[2]), start=int(fields[19]))


def read_rss_bytes(pid: int) -> int:
    """Resident set size of a process in bytes (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def read_cmdline(pid: int) -> str:
    """A process's command line, arguments joined by spaces ('' if unreadable)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_table() -> dict[int, ProcInfo]:
    """Every live process, by PID."""
    table: dict[int, ProcInfo] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                table[int(entry)] = info
    return table


class ProcessTree:
    """Tracks every process a subprocess started, even after it is re-parented.

    A process belongs to the tree if it is the root, a descendant of a member, in the
    root's process group, or its command line contains ``marker`` (this run's Ray temp
    directory, which every Ray process of the run names). Members are keyed by
    ``(pid, start time)``, so a reused PID is never mistaken for one of ours.
    """

    def __init__(self, root: int, marker: str | None = None) -> None:
        info = read_proc(root)
        self._root = root
        self._marker = marker
        self._members: dict[int, int] = {} if info is None else {root: info.start}
        self._cmdline_checked: set[tuple[int, int]] = set()
        self.peak_bytes = 0

    def _belongs(self, pid: int, info: ProcInfo) -> bool:
        if info.ppid in self._members or info.pgid == self._root:
            return True
        if self._marker is None or (pid, info.start) in self._cmdline_checked:
            return False
        self._cmdline_checked.add((pid, info.start))
        return self._marker in read_cmdline(pid)

    def refresh(self) -> dict[int, int]:
        """Add newly started members; return the live ones (pid -> start time)."""
        table = process_table()
        live = {p: s for p, s in self._members.items() if p in table and table[p].start == s}
        grew = True
        while grew:
            grew = False
            for pid, info in table.items():
                if pid not in live and self._belongs(pid, info):
                    live[pid] = info.start
                    self._members[pid] = info.start
                    grew = True
        return live

    def sample(self) -> int:
        """Sum the RSS of the live members, update the peak, return the sum in bytes."""
        total = sum(read_rss_bytes(pid) for pid in self.refresh())
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def signal_all(self, sig: signal.Signals) -> int:
        """Send ``sig`` to the root's process group and every live member; return how many live."""
        live = self.refresh()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self._root, sig)
        for pid in live:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return len(live)

    def terminate(self, grace_s: float = 5.0) -> int:
        """End every member (SIGTERM, then SIGKILL after ``grace_s``); return how many survived."""
        if self.signal_all(signal.SIGTERM) == 0:
            return 0
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.refresh():
            time.sleep(0.1)
        if self.refresh():
            self.signal_all(signal.SIGKILL)
            time.sleep(0.5)
        return len(self.refresh())


@dataclass(frozen=True)
class Measured:
    """A finished subprocess: wall time, peak tree RSS, output, exit code, survivors."""

    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    leftover_processes: int


def run_measured(
    cmd: Sequence[str], *, env: dict[str, str], cwd: Path, workdir: Path, marker: str | None = None
) -> Measured:
    """Run ``cmd`` in a new session, sampling its tree's RSS; end every process it left behind."""
    out_path, err_path = workdir / "stdout.txt", workdir / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        tree = ProcessTree(proc.pid, marker)
        try:
            while proc.poll() is None:
                tree.sample()
                time.sleep(SAMPLE_INTERVAL_S)
            wall = time.perf_counter() - started
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            leftover = tree.terminate()
    return Measured(
        wall_s=wall,
        peak_rss_mb=tree.peak_bytes / MB,
        returncode=proc.returncode,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        leftover_processes=leftover,
    )


def child_env(**extra: str) -> dict[str, str]:
    """The environment of both peers: no Flower telemetry or runtime installs, one-line logs."""
    env = dict(os.environ)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.update(extra)
    return env


def fail(peer: str, measured: Measured) -> None:
    """Stop the benchmark with the tail of a failed peer's stderr."""
    tail = "\n".join(measured.stderr.strip().splitlines()[-20:])
    sys.exit(f"sim_baseline: {peer} exited with {measured.returncode}:\n{tail}")


# --------------------------------------------------------------------------- fedlab side


def fedlab_command() -> list[str]:
    """The ``fedlab`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "fedlab"
    if script.exists():
        return [str(script)]
    found = shutil.which("fedlab")
    if found is None:
        sys.exit("sim_baseline: no `fedlab` command found (install the project first)")
    return [found]


def steady(seconds: Sequence[float]) -> float:
    """Median round time, excluding round 1 (worker start-up) when there are later rounds."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def run_fedlab(workload: Workload, workdir: Path) -> dict[str, Any]:
    """Run ``fedlab simulate`` on the workload and measure it."""
    ray_tmp = workdir / "r"  # every Ray process of this run names this path in its command line
    ray_tmp.mkdir()
    out = workdir / "run"
    sets = [arg for item in workload.overrides() for arg in ("--set", item)]
    cmd = [*fedlab_command(), "simulate", str(CONFIG), *sets, "--quiet", "--out", str(out)]
    measured = run_measured(
        cmd, env=child_env(RAY_TMPDIR=str(ray_tmp)), cwd=workdir, workdir=workdir, marker=str(ray_tmp)
    )
    if measured.returncode != 0:
        fail("fedlab simulate", measured)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    seconds = [float(r["seconds"]) for r in rounds]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "total_s": measured.wall_s,
        "startup_s": measured.wall_s - sum(seconds),
        "first_round_s": seconds[0],
        "steady_round_s": steady(seconds),
        "peak_rss_mb": measured.peak_rss_mb,
        "final_accuracy": summary["accuracy"],
        "rounds_completed": len(rounds),
        "leftover_processes": measured.leftover_processes,
    }


# --------------------------------------------------------------------------- bare side


@dataclass(frozen=True)
class BareResult:
    """What the bare loop reports back to the parent (one JSON line on stdout)."""

    round_seconds: list[float]
    loop_s: float
    final_accuracy: float


def build_mlp(feature_shape: tuple[int, ...], num_classes: int, hidden: int, seed: int) -> Any:
    """fedlab's ``mlp`` in plain torch, initialised the same way (PyTorch's default, seeded)."""
    import torch
    from torch import nn

    inputs = math.prod(feature_shape)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(layer.weight[0].numel())
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return model


def local_sgd(model: Any, x: Any, y: Any, train: Any, generator: Any) -> None:
    """What a fedlab client does without DP: shuffled minibatches, ``local_epochs`` passes, SGD."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum)
    for _ in range(train.local_epochs):
        for idx in torch.split(torch.randperm(len(y), generator=generator), train.batch_size):
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(F.cross_entropy(model(x[idx]), y[idx]))
            optimizer.step()


def accuracy(model: Any, x: Any, y: Any) -> float:
    """Test accuracy of ``model``."""
    import torch

    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def bare_round(
    model: Any, weights: list[Any], data: Any, clients: Sequence[int], train: Any, gen: Any
) -> None:
    """One FedAvg round: each client trains from ``weights``; ``weights`` += weighted mean delta."""
    import torch

    sums = [torch.zeros_like(w) for w in weights]
    total = 0
    for cid in clients:
        part = data.client(int(cid))
        x, y = torch.from_numpy(part.x), torch.from_numpy(part.y)
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights, strict=True):
                p.copy_(w)
        local_sgd(model, x, y, train, gen)
        with torch.no_grad():
            for s, p, w in zip(sums, model.parameters(), weights, strict=True):
                s.add_(p - w, alpha=len(y))
        total += len(y)
    with torch.no_grad():
        for w, s in zip(weights, sums, strict=True):
            w.add_(s, alpha=1.0 / total)


def run_bare_loop(workload: Workload) -> BareResult:
    """The bare sequential loop (runs inside the ``--bare`` subprocess)."""
    import numpy as np
    import torch

    from fedlab.data.federated import build_federated_data

    torch.set_num_threads(1)  # as each fedlab client (simulation.num_cpus_per_client = 1)
    config = load_run_config(workload)
    seed = config.run.seed
    data = build_federated_data(config.data, seed=seed)
    model = build_mlp(data.feature_shape, data.num_classes, config.model.hidden, seed)
    weights = [p.detach().clone() for p in model.parameters()]
    rng, gen = np.random.default_rng([seed, 1]), torch.Generator().manual_seed(seed)
    round_seconds: list[float] = []
    loop_started = time.perf_counter()
    for _ in range(config.run.rounds):
        started = time.perf_counter()
        clients = np.sort(rng.choice(data.num_clients, size=workload.clients_per_round, replace=False))
        bare_round(model, weights, data, clients.tolist(), config.train, gen)
        round_seconds.append(time.perf_counter() - started)
    loop_s = time.perf_counter() - loop_started
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    test_x, test_y = torch.from_numpy(data.test.x), torch.from_numpy(data.test.y)
    return BareResult(round_seconds, loop_s, accuracy(model, test_x, test_y))


def run_bare(workload: Workload, workdir: Path) -> dict[str, Any]:
    """Run the bare loop in a subprocess (this script with ``--bare``) and measure it."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare", *workload_args(workload)]
    measured = run_measured(cmd, env=child_env(), cwd=workdir, workdir=workdir)
    if measured.returncode != 0:
        fail("bare loop", measured)
    result = BareResult(**json.loads(measured.stdout.strip().splitlines()[-1]))
    return {
        "total_s": measured.wall_s,
        "startup_s": measured.wall_s - sum(result.round_seconds),
        "first_round_s": result.round_seconds[0],
        "steady_round_s": steady(result.round_seconds),
        "peak_rss_mb": measured.peak_rss_mb,
        "final_accuracy": result.final_accuracy,
        "rounds_completed": len(result.round_seconds),
        "leftover_processes": measured.leftover_processes,
    }


# --------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is zero."""
    return round(a / b, 3) if b > 0 else None


def rounded(values: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """Round the float values of a flat dict for a readable JSON line."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def workload_description(workload: Workload, quick: bool) -> dict[str, Any]:
    """The workload as it appears in the JSON line."""
    train = load_run_config(workload).train
    return {
        "mode": "quick" if quick else "full",
        "dataset": "digits",
        "model": "mlp",
        "dp": "none",
        **asdict(workload),
        "lr": train.lr,
        "momentum": train.momentum,
        "torch_threads_per_client": 1,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A short-lived temporary directory (short path: Ray's socket paths must stay < 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="simb-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(workload: Workload, quick: bool) -> dict[str, Any]:
    """Run both peers and build the JSON record."""
    description = workload_description(workload, quick)
    with scratch_dir() as tmp:
        (tmp / "fedlab").mkdir()
        (tmp / "bare").mkdir()
        fedlab = run_fedlab(workload, tmp / "fedlab")
        bare = run_bare(workload, tmp / "bare")
    return {
        "benchmark": "sim_baseline",
        "workload": description,
        "fedlab_flower": rounded(fedlab),
        "bare_loop": rounded(bare, 6),
        "ratio_total": ratio(fedlab["total_s"], bare["total_s"]),
        "ratio_steady_round": ratio(fedlab["steady_round_s"], bare["steady_round_s"]),
        "ratio_peak_rss": ratio(fedlab["peak_rss_mb"], bare["peak_rss_mb"]),
    }


def workload_args(workload: Workload) -> list[str]:
    """Command-line flags reproducing ``workload``."""
    return [
        f"--clients={workload.num_clients}",
        f"--per-round={workload.clients_per_round}",
        f"--rounds={workload.rounds}",
        f"--local-epochs={workload.local_epochs}",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workload (CI keeps the script working)")
    parser.add_argument("--clients", type=int, help="override the number of clients")
    parser.add_argument("--per-round", type=int, help="override the clients sampled per round")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--local-epochs", type=int, help="override the local epochs")
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # internal: the bare peer
    return parser.parse_args(argv)


def chosen_workload(args: argparse.Namespace) -> Workload:
    """The base workload (full or quick) with any command-line overrides."""
    base = QUICK if args.quick else FULL
    return Workload(
        num_clients=args.clients or base.num_clients,
        clients_per_round=args.per_round or base.clients_per_round,
        rounds=args.rounds or base.rounds,
        local_epochs=args.local_epochs or base.local_epochs,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print one JSON line (or, with ``--bare``, run the bare peer and print its result)."""
    args = parse_args(argv)
    workload = chosen_workload(args)
    if args.bare:
        print(json.dumps(asdict(run_bare_loop(workload))))
        return
    print(json.dumps(measure(workload, args.quick)), flush=True)


if __name__ == "__main__":
    main()
