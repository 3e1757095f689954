"""A device's own privacy budget: its accountant history and ledger in one SQLite file.

An edge client keeps, in its state directory, every DP-SGD round it ever released
(noise multiplier, sample rate, steps, cumulative epsilon) and every round it refused.
The owner's guarantee that the device never exceeds its maximum epsilon rests on this
file, not on anything the server says.

Guarantees:

- **Whole rounds.** :meth:`ClientBudget.commit_spend` writes one round in one
  transaction (WAL, ``synchronous=FULL``): after a crash a round is present or absent,
  never half written. Commit *before* sending the update: then no released update is
  missing from the budget (a crash between commit and send over-counts, never under-counts).
- **Never twice.** A ``(run_id, server_round)`` pair is recorded at most once.
- **Persists across restarts and runs.** The history is the device's, not the run's:
  a new run starts from everything spent before.

Not guaranteed: protection against the device owner (or malware on the device)
editing or deleting the file; accounting across different deltas (epsilon is always
recomputed from the whole history at the delta the caller asks for).
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from fedlab.core.errors import LedgerError

_APPLICATION_ID = 0x46444342  # "FDCB": marks the file as a fedlab client budget

# Flower run ids are unsigned 64-bit and can exceed SQLite's signed INTEGER: stored as text.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps INTEGER NOT NULL CHECK (steps >= 1),
    epsilon REAL NOT NULL,
    committed_at TEXT NOT NULL,
    UNIQUE (run_id, server_round)
);
CREATE TABLE IF NOT EXISTS refusal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    planned_epsilon REAL NOT NULL,
    max_epsilon REAL NOT NULL,
    refused_at TEXT NOT NULL
);
"""


@dataclass(frozen=True, kw_only=True)
class SpendRow:
    """One released round of the device.

    Attributes:
        run_id: The Flower run it belonged to.
        server_round: The server's round number.
        noise_multiplier: DP-SGD noise multiplier of the round.
        sample_rate: Poisson sampling rate.
        steps: DP-SGD steps taken.
        epsilon: The device's cumulative epsilon after the round.
    """

    run_id: int
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float


@dataclass(frozen=True, kw_only=True)
class RefusalRow:
    """One round the device refused because it would exceed its maximum epsilon."""

    run_id: int
    server_round: int
    planned_epsilon: float
    max_epsilon: float


class ClientBudget:
    """The device's persistent budget file (see the module docstring for guarantees).

    Use :meth:`open` (creates the file if needed) as a context manager.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._conn = connection
        self._path = path

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open or create the budget file at ``path``.

        Raises:
            LedgerError: If the file exists but is not a fedlab client budget.
        """
        existed = path.exists() and path.stat().st_size > 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            if existed and app_id != _APPLICATION_ID:
                conn.close()
                raise LedgerError(f"{path}: not a fedlab client budget file")
            if not existed:
                conn.execute(f"PRAGMA application_id={_APPLICATION_ID}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot open the client budget: {exc}") from None
        return cls(conn, path)

    @property
    def path(self) -> Path:
        """The budget file."""
        return self._path

    def spends(self) -> list[SpendRow]:
        """Every released round, oldest first (the accountant history, in order)."""
        rows = self._conn.execute(
            "SELECT run_id, server_round, noise_multiplier, sample_rate, steps, epsilon "
            "FROM spend ORDER BY seq"
        ).fetchall()
        return [
            SpendRow(
                run_id=int(r[0]),
                server_round=int(r[1]),
                noise_multiplier=float(r[2]),
                sample_rate=float(r[3]),
                steps=int(r[4]),
                epsilon=float(r[5]),
            )
            for r in rows
        ]

    def refusals(self) -> list[RefusalRow]:
        """Every refused round, oldest first."""
        rows = self._conn.execute(
            "SELECT run_id, server_round, planned_epsilon, max_epsilon FROM refusal ORDER BY seq"
        ).fetchall()
        return [
            RefusalRow(
                run_id=int(r[0]), server_round=int(r[1]), planned_epsilon=float(r[2]), max_epsilon=float(r[3])
            )
            for r in rows
        ]

    def commit_spend(self, row: SpendRow) -> None:
        """Durably record one released round, before its update is sent.

        Raises:
            LedgerError: If this ``(run_id, server_round)`` is already recorded (the
                device never releases a round twice) or the write fails.
        """
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO spend (run_id, server_round, noise_multiplier, sample_rate, steps, "
                    "epsilon, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        str(row.run_id),
                        row.server_round,
                        row.noise_multiplier,
                        row.sample_rate,
                        row.steps,
                        row.epsilon,
                        _now(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise LedgerError(
                    f"{self._path}: round {row.server_round} of run {row.run_id} is already spent"
                ) from None

    def record_refusal(self, row: RefusalRow) -> None:
        """Record a refused round (for the device's own log)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO refusal (run_id, server_round, planned_epsilon, max_epsilon, refused_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (str(row.run_id), row.server_round, row.planned_epsilon, row.max_epsilon, _now()),
            )

    def close(self) -> None:
        """Close the file."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
