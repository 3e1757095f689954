"""Long-lived worker processes, started in the background, one exchange per round.

Workers come from the ``forkserver`` context (``spawn`` where there is none): the
fork server imports torch, Opacus and fedlab once and forks every worker from that
state, so a pool of ``n`` workers costs one import, not ``n``. Starting happens on a
background thread, so the simulator keeps training in its own process until the
workers are ready (:meth:`WorkerPool.ready`) and never waits for them to boot.
Each worker gets one :class:`~fedlab.sim.worker.WorkerTask` per round and sends one
list of outcomes back.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess

from fedlab.core.config import RunConfig
from fedlab.core.errors import FedlabError
from fedlab.data.types import FederatedData
from fedlab.sim.trainer import ClientOutcome
from fedlab.sim.worker import WorkerTask, worker_main

_PRELOAD = ["fedlab.sim.worker"]
_JOIN_SECONDS = 5.0


class WorkerError(FedlabError):
    """A simulator worker failed to start or to train its clients."""


_BOOT_WAIT_SECONDS = 60.0
"""How long closing waits for workers that are still starting."""


def _context() -> ForkServerContext | SpawnContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


class WorkerPool:
    """``size`` worker processes serving :class:`~fedlab.sim.worker.WorkerTask` s.

    Args:
        config: The run configuration every worker builds its trainer from.
        data: The federated data, sent once to each worker.
        size: Number of worker processes (>= 1).
    """

    def __init__(self, config: RunConfig, data: FederatedData, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1; got {size}")
        self._config = config
        self._data = data
        self._size = size
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        self._booted = threading.Event()
        self._closing = threading.Event()
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Number of worker processes."""
        return self._size

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread is not None

    def start(self) -> None:
        """Start the workers on a background thread; return at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._boot, name="fedlab-sim-pool", daemon=True)
            self._thread.start()

    def _boot(self) -> None:
        try:
            ctx = _context()
            for _ in range(self._size):
                if self._closing.is_set():
                    break  # start no more, but let those already starting finish
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(child, self._config, self._data), daemon=True)
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            for conn in self._conns:
                kind, payload = conn.recv()
                if kind != "ready":
                    self._error = _last_line(str(payload))
        except (OSError, EOFError) as exc:
            self._error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._booted.set()
                if self._closing.is_set():
                    self._stop()

    def ready(self) -> bool:
        """Whether every worker is up (never blocks).

        Raises:
            WorkerError: If a worker failed to start.
        """
        if not self._booted.is_set():
            return False
        if self._error is not None:
            raise WorkerError(f"simulation.workers: a worker failed to start: {self._error}")
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the workers are up (or ``timeout`` passed); return :meth:`ready`."""
        self._booted.wait(timeout)
        return self.ready()

    def run(self, tasks: Sequence[WorkerTask]) -> list[list[ClientOutcome]]:
        """Send task ``i`` to worker ``i`` and collect the outcomes in task order.

        Raises:
            WorkerError: If a worker failed or died.
        """
        if len(tasks) > self._size:
            raise ValueError(f"{len(tasks)} tasks for {self._size} workers")
        for conn, task in zip(self._conns, tasks, strict=False):
            conn.send(task)
        answers = []
        for conn in self._conns[: len(tasks)]:
            try:
                kind, payload = conn.recv()
            except EOFError:
                raise WorkerError("a simulator worker died mid-round") from None
            if kind != "ok":
                raise WorkerError(f"a simulator worker failed: {_last_line(str(payload))}")
            answers.append(payload)
        return answers

    def close(self) -> None:
        """Stop the workers; wait for any still booting, so none is killed mid-start.

        A worker killed while it unpickles its start-up arguments prints a traceback;
        letting the boot finish (it stops no later than ``_BOOT_WAIT_SECONDS``) keeps
        the end of a run quiet.
        """
        self._closing.set()
        if self._thread is not None:
            self._booted.wait(_BOOT_WAIT_SECONDS)
        with self._lock:
            if self._booted.is_set():
                self._stop()

    def _stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(_JOIN_SECONDS)
            if proc.is_alive():
                proc.terminate()
        for conn in self._conns:
            conn.close()
