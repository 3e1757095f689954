"""Start ``fedlab`` in its own session and stop it, with every process it spawned, by PID."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil


def start_fedlab(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedlab", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(pid: int, tracked: list[psutil.Process] | None = None) -> None:
    """SIGKILL ``pid``, all its descendants and any earlier-tracked processes, then reap them."""
    victims = {p.pid: p for p in (tracked or [])}
    victims.update({p.pid: p for p in process_tree(pid)})
    for proc in victims.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(list(victims.values()), timeout=10)


def wait_until(predicate, *, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def run_to_end(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``fedlab ARGS`` to completion, tracking its process tree, and kill whatever it leaves."""
    proc = start_fedlab(*args, cwd=cwd)
    tracked: list[psutil.Process] = []
    try:
        while proc.poll() is None:
            tracked = process_tree(proc.pid) or tracked
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
        output = proc.stdout.read() if proc.stdout else ""
    finally:
        kill_tree(proc.pid, tracked)
    return proc.returncode, output


def committed_rounds(run: Path) -> list[int]:
    """The rounds the run's ledger holds (read-only; [] if there is no readable ledger yet)."""
    try:
        with sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True, timeout=1) as conn:
            return [r for (r,) in conn.execute("SELECT round FROM rounds ORDER BY round")]
    except sqlite3.Error:
        return []
