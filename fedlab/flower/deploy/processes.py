"""Process control for Flower's executables: environment, start, output lines, stop by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from fedlab.flower.deploy.errors import DeploymentError

LineSink = Callable[[str], None]


def flower_bin(name: str) -> str:
    """The Flower executable next to this Python (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found: install flwr 1.41 (pip install 'flwr==1.41.0')")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry, no runtime installs."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process(proc: subprocess.Popen[str], *, grace: float = 10.0) -> None:
    """Stop ``proc`` and its descendants by PID: SIGTERM, then SIGKILL after ``grace`` s."""
    tree = [proc.pid, *_children(proc.pid)]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if proc.poll() is None:
        proc.wait(timeout=grace)


def start_process(
    command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, *, pass_fds: Sequence[int] = ()
) -> subprocess.Popen[str]:
    """Start ``command`` in its own session, stdout and stderr merged into one text pipe, no stdin."""
    return subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
        pass_fds=tuple(pass_fds),
    )


PARENT_PIPE_ENV = "FEDLAB_PARENT_PIPE"
"""Names the read end of a pipe whose write end only the parent holds (see :func:`die_with_parent`)."""


def die_with_parent() -> None:
    """If started with :data:`PARENT_PIPE_ENV`, SIGKILL this process group as soon as the parent is gone.

    The parent holds the pipe's only write end; when it exits, however it dies (SIGKILL
    included), the read returns end-of-file and this whole process group (this process and
    every child it started, e.g. a SuperNode's ClientApp processes) is killed at once, so
    nothing of it trains or commits anything afterwards.
    """
    fd = os.environ.get(PARENT_PIPE_ENV)
    if fd is None:
        return

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(int(fd), 1):
                continue
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="fedlab-parent-watch", daemon=True).start()


def pump_lines(stream: IO[str], sinks: Sequence[LineSink]) -> threading.Thread:
    """Pass every line of ``stream`` (newline stripped) to each sink, on a started daemon thread."""

    def run() -> None:
        for line in stream:
            for sink in sinks:
                sink(line.rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def file_sink(path: Path) -> LineSink:
    """A sink appending each line to ``path`` (line-buffered; parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", buffering=1)

    def write(line: str) -> None:
        handle.write(line + "\n")

    return write


def free_port() -> int:
    """A free TCP port on loopback (for a SuperNode's local Runtime API)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def last_line(text: str) -> str:
    r"""The last non-blank line of ``text``, stripped, or ``"(no output)"``.

    Example:
        >>> last_line("starting\nfailed: port in use\n\n")
        'failed: port in use'
        >>> last_line("")
        '(no output)'
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def last_error(log: Path) -> str:
    """The last line of ``log`` that names an error (else its last line; 'no log' without one).

    >>> last_error(Path("/nonexistent/run.log"))
    'no log'
    """
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["empty log"])[-1][:300]
