"""Fixtures for deployment tests: certificates, device data, processes stopped by PID."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from fedlab.flower.deploy import flower_env

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_fedlab(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlab", *args],
        cwd=REPO,
        env=flower_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Managed:
    """A started ``fedlab`` process whose output is collected in a background thread."""

    def __init__(self, args: list[str], home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedlab", *args],
            cwd=REPO,
            env=flower_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.tracked: dict[int, psutil.Process] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def track(self) -> None:
        """Remember every descendant seen so far (so a finalizer can kill them after the root died)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self.tracked[p.pid] = p

    def kill(self) -> None:
        """SIGKILL the process and every descendant, by PID."""
        self.track()
        for proc in self.tracked.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(list(self.tracked.values()), timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._thread.join(timeout=5)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.track()
            time.sleep(0.5)
        code = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        self._thread.join(timeout=5)
        return code


def wait_for_line(managed: Managed, text: str, *, timeout: float) -> bool:
    """Wait until ``text`` appears in the output (False if the process exits or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in managed.output:
            return True
        if managed.proc.poll() is not None:
            time.sleep(0.5)
            return text in managed.output
        time.sleep(0.2)
    return False


@pytest.fixture
def processes():
    """Start fedlab processes; all of them (and their children) are SIGKILLed by PID at the end."""
    started: list[Managed] = []

    def start(args: list[str], home: Path) -> Managed:
        managed = Managed(args, home)
        started.append(managed)
        return managed

    def tracker() -> None:
        while not stop.is_set():
            for m in started:
                m.track()
            stop.wait(0.5)

    stop = threading.Event()
    thread = threading.Thread(target=tracker, daemon=True)
    thread.start()
    yield start
    stop.set()
    thread.join(timeout=5)
    for managed in started:
        managed.kill()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    result = run_fedlab("certs", "init", str(out), "--devices", "4", home=out / "flwr-home")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def write_partitions(out: Path, num: int, *, seed: int = 0) -> list[Path]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(y))
    paths = []
    for i, idx in enumerate(np.array_split(order, num)):
        frame = pd.DataFrame(x[idx], columns=[f"p{j}" for j in range(x.shape[1])])
        frame["label"] = y[idx]
        path = out / f"device-{i + 1}.csv"
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths


FEDERATION = """
[deployment]
host = "127.0.0.1"
port = {port}
ca_cert = "{certs}/ca.pem"
server_cert = "{certs}/server.pem"
server_key = "{certs}/server.key"
device_keys = [{keys}]
state_dir = "{state}"
min_clients = {min_clients}

[run]
name = "edge-test"
seed = 0
rounds = {rounds}

[data]
dataset = "digits"
test_fraction = 0.2

[model]
kind = "mlp"
hidden = 32

[train]
local_epochs = 1
batch_size = 32
lr = 0.5
device = "cpu"

[dp]
mode = "dpsgd"
noise_multiplier = 1.0
max_grad_norm = 2.0
delta = 1e-5
accountant = "rdp"

[server]
timeout = {timeout}

[simulation]
num_cpus_per_client = 1
"""


def write_federation(
    path: Path,
    *,
    certs: Path,
    state: Path,
    port: int,
    devices: list[int],
    rounds: int = 3,
    timeout: float = 30.0,
    min_clients: int | None = None,
    extra: str = "",
) -> Path:
    keys = ", ".join(f'"{certs}/devices/device-{i}.pub"' for i in devices)
    path.write_text(
        FEDERATION.format(
            port=port,
            certs=certs,
            keys=keys,
            state=state,
            rounds=rounds,
            timeout=timeout,
            min_clients=min_clients or len(devices),
        )
        + extra
    )
    return path


def spends(state: Path) -> list[tuple[int, float]]:
    """(server round, epsilon) of every charge a device's own budget file holds, oldest first."""
    path = state / "budget.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return [
                (int(r), float(e))
                for r, e in conn.execute("SELECT server_round, epsilon FROM charge ORDER BY seq")
            ]
    except sqlite3.OperationalError:
        return []


def per_round_epsilons(num_examples: int, rounds: int) -> list[float]:
    """A device's epsilon after each round under the FEDERATION template's DP-SGD settings."""
    from fedlab.privacy.events import GaussianEvent
    from fedlab.training.accounting import epsilon_from_history
    from fedlab.training.local import OptimSpec, poisson_plan

    optim = OptimSpec(optimizer="sgd", lr=0.5, momentum=0.0, local_epochs=1, batch_size=32)
    q, steps = poisson_plan(num_examples, optim)
    step = GaussianEvent(noise_multiplier=1.0, sample_rate=q, steps=steps)
    return [epsilon_from_history([step] * r, delta=1e-5, accountant="rdp") for r in range(1, rounds + 1)]


def device_client(
    processes, tmp_path: Path, certs: Path, port: int, data: list[Path], i: int, *extra: str
) -> Managed:
    """Start ``fedlab client`` for device ``i`` (state in ``tmp_path/device-i``)."""
    return processes(
        [
            "client",
            "--server",
            f"127.0.0.1:{port}",
            "--root-cert",
            str(certs / "ca.pem"),
            "--key",
            str(certs / "devices" / f"device-{i}.key"),
            "--data",
            str(data[i - 1]),
            "--state-dir",
            str(tmp_path / f"device-{i}"),
            "--device-id",
            f"device-{i}",
            "--max-wait-time",
            "60",
            *extra,
        ],
        tmp_path / f"home-{i}",
    )
