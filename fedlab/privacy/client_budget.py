"""A device's own privacy budget: every round it released, what each charged, every refusal.

An edge client keeps one SQLite file in its state directory with three tables:

- ``released_round``: every round the device released anything for (run id, round, mechanism):
  the record behind "never twice";
- ``charge``: what a release costs, as the mechanism's name and its parameters (JSON), with the
  device's cumulative epsilon after it (informational; the rule recomputes epsilon from the
  charges at the device's own delta). A release may carry no charge: under central DP the
  device charges a whole run at its first round, and its later rounds are released uncharged;
- ``refusal``: every round the device refused under its budget rule, with the planned epsilon,
  the maximum and the reason.

The owner's guarantee that the device never exceeds its maximum epsilon rests on this file,
not on anything the server says. Which mechanisms exist, what they charge and how charges
compose is :mod:`fedlab.training.device_budget`'s business; this module only keeps the rows.

Guarantees:

- **Whole rounds.** :meth:`ClientBudget.commit_release` writes a round's release record and
  its charge in one transaction (WAL, ``synchronous=FULL``): after a crash both are present
  or both absent. Commit *before* sending the update: then no released update is missing from
  the budget (a crash between commit and send over-counts, never under-counts).
- **Never twice.** A ``(run_id, server_round)`` pair is released at most once.
- **Persists across restarts and runs.** The history is the device's, not the run's: a new
  run starts from everything spent before.
- **Old files keep working.** A file written by the first schema (one ``spend`` row per
  DP-SGD round) is migrated in place, in one transaction, when opened: each row becomes a
  ``dpsgd`` release and its charge (a negative stored epsilon is clamped to 0).

Not guaranteed: protection against the device owner (or malware on the device) editing or
deleting the file.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fedlab.core.errors import LedgerError

_APPLICATION_ID = 0x46444342  # "FDCB": marks the file as a fedlab client budget
_SCHEMA_VERSION = 2  # 0/1: the first schema (table ``spend``); 2: releases and charges

# Flower run ids are unsigned 64-bit and can exceed SQLite's signed INTEGER: stored as text.
_TABLES = (
    """CREATE TABLE IF NOT EXISTS released_round (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    released_at TEXT NOT NULL,
    UNIQUE (run_id, server_round)
)""",
    """CREATE TABLE IF NOT EXISTS charge (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    mechanism TEXT NOT NULL,
    params TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    committed_at TEXT NOT NULL,
    UNIQUE (run_id, server_round),
    FOREIGN KEY (run_id, server_round) REFERENCES released_round (run_id, server_round)
)""",
    """CREATE TABLE IF NOT EXISTS refusal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    planned_epsilon REAL NOT NULL,
    max_epsilon REAL NOT NULL,
    refused_at TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
)""",
)


@dataclass(frozen=True, kw_only=True)
class ReleaseRow:
    """One round the device released an update (or masked input) for.

    Attributes:
        run_id: The Flower run it belonged to.
        server_round: The server's round number.
        mechanism: How the release was protected (``dpsgd``, ``dp-fedavg``, ``skellam-ddp``, ``none``).
    """

    run_id: int
    server_round: int
    mechanism: str


@dataclass(frozen=True, kw_only=True)
class ChargeRow:
    """What one release cost the device.

    Attributes:
        run_id: The Flower run of the release.
        server_round: The round of the release.
        mechanism: The mechanism's name (as in :class:`ReleaseRow`).
        params: Its parameters, a JSON object (e.g. noise multiplier, sample rate, steps).
        epsilon: The device's cumulative epsilon after the release, >= 0 (``inf`` after a
            noiseless one).
    """

    run_id: int
    server_round: int
    mechanism: str
    params: Mapping[str, Any] = field(default_factory=dict)
    epsilon: float


@dataclass(frozen=True, kw_only=True)
class RefusalRow:
    """One round the device refused under its budget rule.

    Attributes:
        run_id: The Flower run.
        server_round: The refused round.
        planned_epsilon: The device's epsilon had it released the round (``inf``: noiseless).
        max_epsilon: Its maximum.
        reason: The one-line reason it gave.
    """

    run_id: int
    server_round: int
    planned_epsilon: float
    max_epsilon: float
    reason: str = ""


class ClientBudget:
    """The device's persistent budget file (see the module docstring for guarantees).

    Use :meth:`open` (creates or migrates the file) as a context manager.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp, ClientBudget.open(Path(tmp) / "b.sqlite") as b:
        ...     b.commit_release(ReleaseRow(run_id=1, server_round=1, mechanism="dpsgd"),
        ...                      ChargeRow(run_id=1, server_round=1, mechanism="dpsgd",
        ...                                params={"noise_multiplier": 1.0}, epsilon=0.5))
        ...     b.released(1, 1), b.released(1, 2), [c.epsilon for c in b.charges()]
        (True, False, [0.5])
    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._conn = connection
        self._path = path

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open or create the budget file at ``path``; migrate a file of the first schema.

        Raises:
            LedgerError: If the file exists but is not a fedlab client budget, or was written
                by a newer schema.
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
            budget = cls(conn, path)
            budget._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot open the client budget: {exc}") from None
        return budget

    @property
    def path(self) -> Path:
        """The budget file."""
        return self._path

    def releases(self) -> list[ReleaseRow]:
        """Every released round, oldest first."""
        rows = self._conn.execute(
            "SELECT run_id, server_round, mechanism FROM released_round ORDER BY seq"
        ).fetchall()
        return [ReleaseRow(run_id=int(r[0]), server_round=int(r[1]), mechanism=str(r[2])) for r in rows]

    def charges(self) -> list[ChargeRow]:
        """Every charge, oldest first (the device's privacy history, in order)."""
        rows = self._conn.execute(
            "SELECT run_id, server_round, mechanism, params, epsilon FROM charge ORDER BY seq"
        ).fetchall()
        return [
            ChargeRow(
                run_id=int(r[0]),
                server_round=int(r[1]),
                mechanism=str(r[2]),
                params=json.loads(r[3]),
                epsilon=float(r[4]),
            )
            for r in rows
        ]

    def released(self, run_id: int, server_round: int) -> bool:
        """Whether this round of this run was already released."""
        row = self._conn.execute(
            "SELECT 1 FROM released_round WHERE run_id = ? AND server_round = ?", (str(run_id), server_round)
        ).fetchone()
        return row is not None

    def refusals(self) -> list[RefusalRow]:
        """Every refused round, oldest first."""
        rows = self._conn.execute(
            "SELECT run_id, server_round, planned_epsilon, max_epsilon, reason FROM refusal ORDER BY seq"
        ).fetchall()
        return [
            RefusalRow(
                run_id=int(r[0]),
                server_round=int(r[1]),
                planned_epsilon=float(r[2]),
                max_epsilon=float(r[3]),
                reason=str(r[4]),
            )
            for r in rows
        ]

    def commit_release(self, release: ReleaseRow, charge: ChargeRow | None = None) -> None:
        """Durably record a released round and its charge (if any) in one transaction, before it is sent.

        Raises:
            LedgerError: If this ``(run_id, server_round)`` is already released (the device never
                releases a round twice), the charge belongs to another round, its epsilon is
                negative or NaN, or the write fails.
        """
        if charge is not None:
            if (charge.run_id, charge.server_round) != (release.run_id, release.server_round):
                raise LedgerError(f"{self._path}: a charge must belong to the round it is released with")
            if not charge.epsilon >= 0.0:
                raise LedgerError(f"{self._path}: epsilon must be >= 0; got {charge.epsilon!r}")
        with self._write() as conn:
            try:
                conn.execute(
                    "INSERT INTO released_round (run_id, server_round, mechanism, released_at) "
                    "VALUES (?, ?, ?, ?)",
                    (str(release.run_id), release.server_round, release.mechanism, _now()),
                )
            except sqlite3.IntegrityError:
                raise LedgerError(
                    f"{self._path}: round {release.server_round} of run {release.run_id} is already released"
                ) from None
            if charge is not None:
                conn.execute(
                    "INSERT INTO charge (run_id, server_round, mechanism, params, epsilon, committed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        str(charge.run_id),
                        charge.server_round,
                        charge.mechanism,
                        json.dumps(dict(charge.params), sort_keys=True),
                        charge.epsilon,
                        _now(),
                    ),
                )

    def record_refusal(self, row: RefusalRow) -> None:
        """Record a refused round (for the device's own log)."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO refusal (run_id, server_round, planned_epsilon, max_epsilon, refused_at, "
                "reason) VALUES (?, ?, ?, ?, ?, ?)",
                (str(row.run_id), row.server_round, row.planned_epsilon, row.max_epsilon, _now(), row.reason),
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

    def _migrate(self) -> None:
        """Create the tables, or bring a file of the first schema to this one, in one transaction."""
        if self._version() == _SCHEMA_VERSION:
            return
        with self._write() as conn:
            version = self._version()  # another process may have migrated it meanwhile
            if version > _SCHEMA_VERSION:
                raise LedgerError(f"{self._path}: written by a newer fedlab (schema {version})")
            if version == _SCHEMA_VERSION:
                return
            for table in _TABLES:
                conn.execute(table)
            if _columns(conn, "spend"):
                _migrate_spends(conn)
            if "reason" not in _columns(conn, "refusal"):
                conn.execute("ALTER TABLE refusal ADD COLUMN reason TEXT NOT NULL DEFAULT ''")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def _version(self) -> int:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise LedgerError(f"{self._path}: written by a newer fedlab (schema {version})")
        return version

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


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}


def _migrate_spends(conn: sqlite3.Connection) -> None:
    """First schema: each ``spend`` row was one DP-SGD round, released and charged."""
    rows = conn.execute(
        "SELECT run_id, server_round, noise_multiplier, sample_rate, steps, epsilon, committed_at "
        "FROM spend ORDER BY seq"
    ).fetchall()
    for run_id, server_round, z, q, steps, epsilon, at in rows:
        params = {"noise_multiplier": float(z), "sample_rate": float(q), "steps": int(steps)}
        eps = float(epsilon)
        conn.execute(
            "INSERT INTO released_round (run_id, server_round, mechanism, released_at) "
            "VALUES (?, ?, 'dpsgd', ?)",
            (run_id, server_round, at),
        )
        conn.execute(
            "INSERT INTO charge (run_id, server_round, mechanism, params, epsilon, committed_at) "
            "VALUES (?, ?, 'dpsgd', ?, ?, ?)",
            (run_id, server_round, json.dumps(params, sort_keys=True), eps if eps >= 0.0 else 0.0, at),
        )
    conn.execute("DROP TABLE spend")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
