"""The privacy ledger: every round's privacy spend, in an SQLite file in the run directory.

Guarantees (tested, including by SIGKILL-ing a writer mid-transaction):

- **Atomic rounds.** :meth:`PrivacyLedger.commit_round` writes the round row and
  all its client and federation rows in one transaction: after a crash a round is
  either entirely present or entirely absent.
- **Durable on return.** The file runs in WAL mode with ``synchronous=FULL``, so a
  round that ``commit_round`` returned for survives a process kill or power loss
  (on storage that honours fsync). Commit *before* releasing the round's result:
  then no released result is ever missing from the ledger.
- **Contiguous and never twice.** Rounds are 1, 2, 3, ...; committing a round
  that exists or is not ``last_round() + 1`` is refused and changes nothing. The
  check runs inside the write transaction, so concurrent writers cannot both win.
- **Never overwritten.** :meth:`PrivacyLedger.create` refuses an existing path.
- **Resumable.** A round may carry a checkpoint (:class:`~fedlab.core.checkpoint.Checkpoint`
  bytes), written in the round's transaction; only the latest round's is kept.
- **Checked on open.** :meth:`PrivacyLedger.open` refuses files that are not
  fedlab ledgers, and ledgers whose rounds are not contiguous or whose row counts
  disagree with what each round recorded.

Not guaranteed: protection against someone editing the file on purpose (there is
no signature), or storage that acknowledges writes it has not made.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fedlab.core.errors import LedgerError
from fedlab.privacy.ledger_rows import ClientSpend, ClientTotal, FederationSpend, FederationTotal, RoundRecord

__all__ = [
    "ClientSpend",
    "ClientTotal",
    "FederationSpend",
    "FederationTotal",
    "PrivacyLedger",
    "RoundRecord",
    "read_ledger_summary",
]

_APPLICATION_ID = 0x46444C47  # "FDLG": marks the SQLite file as a fedlab privacy ledger
_SCHEMA_VERSION = 2
_CHECKPOINT_TABLE = """
CREATE TABLE checkpoint (
    round INTEGER PRIMARY KEY REFERENCES rounds(round),
    state BLOB NOT NULL
)"""

_SCHEMA = (
    """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY CHECK (round >= 1),
    committed_at TEXT NOT NULL,
    num_clients INTEGER NOT NULL CHECK (num_clients >= 0),
    num_federation INTEGER NOT NULL CHECK (num_federation >= 0)
);
CREATE TABLE client_spend (
    round INTEGER NOT NULL REFERENCES rounds(round),
    client_id TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    epsilon REAL NOT NULL,
    PRIMARY KEY (round, client_id)
);
CREATE INDEX client_spend_by_client ON client_spend (client_id);
CREATE TABLE federation_spend (
    round INTEGER NOT NULL REFERENCES rounds(round),
    mechanism TEXT NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    epsilon REAL NOT NULL,
    PRIMARY KEY (round, mechanism)
);
"""
    + _CHECKPOINT_TABLE
)


class PrivacyLedger:
    """An open privacy ledger. Build with :meth:`create` or :meth:`open`; close after use.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "privacy.sqlite"
        >>> with PrivacyLedger.create(path, run_name="demo", delta=1e-5, config_json="{}") as ledger:
        ...     spend = ClientSpend(client_id="c1", noise_multiplier=1.1, sample_rate=0.01,
        ...                         steps=10, epsilon=0.4)
        ...     ledger.commit_round(1, [spend])
        ...     ledger.last_round()
        1

    """

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wraps an open connection; use :meth:`create` or :meth:`open` instead."""
        self._conn = connection
        self._path = path

    @classmethod
    def create(cls, path: Path, *, run_name: str, delta: float, config_json: str) -> Self:
        """Creates a new ledger file.

        Args:
            path: Where to create it; must not exist.
            run_name: Name of the run.
            delta: The run's delta, in (0, 1); every epsilon in the ledger is at it.
            config_json: The run configuration, as JSON text.

        Returns:
            The open ledger.

        Raises:
            LedgerError: If ``path`` exists or cannot be created.
            ValueError: If ``delta`` is not in (0, 1).

        """
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1); got {delta!r}")
        path = Path(path)
        _claim(path)
        conn = _connect(path, mode="rw")
        try:
            _init_schema(conn, run_name=run_name, delta=delta, config_json=config_json)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @classmethod
    def open(cls, path: Path) -> Self:
        """Opens an existing ledger and checks its consistency.

        Args:
            path: The ledger file.

        Returns:
            The open ledger.

        Raises:
            LedgerError: If the file is missing, not a fedlab ledger, corrupt or inconsistent.

        """
        path = Path(path)
        if not path.is_file():
            raise LedgerError(f"privacy ledger not found: {path}")
        conn = _connect(path, mode="rw")
        try:
            _check_ledger(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    def commit_round(
        self,
        round_num: int,
        clients: Sequence[ClientSpend],
        federation: Sequence[FederationSpend] = (),
        *,
        checkpoint: bytes | None = None,
    ) -> None:
        """Records one round atomically and durably.

        The round row and all its client and federation rows are written in one
        transaction that is on disk when this returns. Call it *before* releasing
        the round's result.

        Args:
            round_num: Must be ``last_round() + 1``.
            clients: Each participating client's spend (distinct client ids).
            federation: Server-side releases this round (distinct mechanisms).
            checkpoint: The run's state after this round; it replaces the previous round's.

        Raises:
            LedgerError: If the round is already committed or not the next one,
                ids repeat, or the write fails. Nothing is written then.

        """
        _check_round_args(round_num, clients, federation)
        with self._write() as conn:
            last = _last_round(conn)
            if round_num != last + 1:
                raise LedgerError(_round_refusal(round_num, last, self._path))
            conn.execute(
                "INSERT INTO rounds (round, committed_at, num_clients, num_federation) VALUES (?, ?, ?, ?)",
                (round_num, _now(), len(clients), len(federation)),
            )
            conn.executemany(
                "INSERT INTO client_spend VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (round_num, c.client_id, c.noise_multiplier, c.sample_rate, c.steps, c.epsilon)
                    for c in clients
                ],
            )
            conn.executemany(
                "INSERT INTO federation_spend VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (round_num, f.mechanism, f.noise_multiplier, f.sample_rate, f.steps, f.epsilon)
                    for f in federation
                ],
            )
            conn.execute("DELETE FROM checkpoint")
            if checkpoint is not None:
                conn.execute("INSERT INTO checkpoint VALUES (?, ?)", (round_num, checkpoint))

    def last_round(self) -> int:
        """Returns the last committed round, 0 if none."""
        return _last_round(self._conn)

    def checkpoint(self) -> bytes | None:
        """Returns the checkpoint committed with the last round, or None if that round has none."""
        row = self._conn.execute("SELECT round, state FROM checkpoint").fetchone()
        return None if row is None or row[0] != self.last_round() else bytes(row[1])

    def client_rows(self) -> Iterator[tuple[str, float, float, int]]:
        """Yields every client row as ``(client_id, noise_multiplier, sample_rate, steps)``, by round."""
        yield from self._conn.execute(
            "SELECT client_id, noise_multiplier, sample_rate, steps FROM client_spend"
            " ORDER BY round, client_id"
        )

    def rounds(self) -> list[RoundRecord]:
        """Returns every committed round, in order."""
        rows = self._conn.execute(
            "SELECT r.round, r.committed_at, r.num_clients, MAX(c.epsilon), AVG(c.epsilon)"
            " FROM rounds r LEFT JOIN client_spend c ON c.round = r.round"
            " GROUP BY r.round ORDER BY r.round"
        ).fetchall()
        return [RoundRecord(*row) for row in rows]

    def client_totals(self) -> list[ClientTotal]:
        """Returns each client's totals over the run, ordered by client id."""
        rows = self._conn.execute(
            "SELECT client_id, COUNT(*), SUM(steps), MAX(epsilon), MAX(round)"
            " FROM client_spend GROUP BY client_id ORDER BY client_id"
        ).fetchall()
        return [ClientTotal(*row) for row in rows]

    def federation_totals(self) -> list[FederationTotal]:
        """Returns each server-side mechanism's totals over the run (empty if none)."""
        rows = self._conn.execute(
            "SELECT mechanism, COUNT(*), SUM(steps), MAX(epsilon), MAX(round)"
            " FROM federation_spend GROUP BY mechanism ORDER BY mechanism"
        ).fetchall()
        return [FederationTotal(*row) for row in rows]

    def meta(self) -> dict[str, Any]:
        """Returns ``run_name``, ``delta``, ``created_at`` and ``config_json``."""
        values = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        return {
            "run_name": values["run_name"],
            "delta": float(values["delta"]),
            "created_at": values["created_at"],
            "config_json": values["config_json"],
        }

    def close(self) -> None:
        """Closes the file (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back on any error."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise LedgerError(f"cannot write privacy ledger {self._path}: {err}") from err
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            _rollback(conn)
            if isinstance(err, sqlite3.Error):
                raise LedgerError(f"cannot write privacy ledger {self._path}: {err}") from err
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    # If the transaction is already gone (e.g. the disk failed) there is nothing to undo.
    with suppress(sqlite3.Error):
        conn.execute("ROLLBACK")


def read_ledger_summary(path: Path) -> dict[str, Any]:
    """Returns a JSON-serializable summary of a ledger (for ``fedlab privacy ledger --json``).

    Args:
        path: The ledger file.

    Returns:
        ``run_name``, ``delta``, ``created_at``, ``rounds_committed``, ``epsilon_max``
        and ``epsilon_mean`` (over clients' cumulative epsilons; None without
        clients), and the lists ``clients``, ``federation`` and ``rounds``.

    Raises:
        LedgerError: If the file is missing, not a ledger or inconsistent.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ledger.sqlite"
        >>> PrivacyLedger.create(path, run_name="demo", delta=1e-5, config_json="{}").close()
        >>> summary = read_ledger_summary(path)
        >>> summary["run_name"], summary["rounds_committed"], summary["epsilon_max"]
        ('demo', 0, None)
    """
    with PrivacyLedger.open(path) as ledger:
        meta = ledger.meta()
        clients = ledger.client_totals()
        epsilons = [c.epsilon for c in clients]
        return {
            "run_name": meta["run_name"],
            "delta": meta["delta"],
            "created_at": meta["created_at"],
            "rounds_committed": ledger.last_round(),
            "epsilon_max": max(epsilons) if epsilons else None,
            "epsilon_mean": sum(epsilons) / len(epsilons) if epsilons else None,
            "clients": [asdict(c) for c in clients],
            "federation": [asdict(f) for f in ledger.federation_totals()],
            "rounds": [asdict(r) for r in ledger.rounds()],
        }


def _claim(path: Path) -> None:
    """Creates ``path`` exclusively (an empty file is a valid new SQLite database)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise LedgerError(f"privacy ledger already exists, refusing to overwrite: {path}") from None
    except OSError as err:
        raise LedgerError(f"cannot create privacy ledger {path}: {err.strerror}") from None
    os.close(fd)


def _connect(path: Path, *, mode: str) -> sqlite3.Connection:
    """Connects without ever creating the file; autocommit mode, transactions explicit."""
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as err:
        raise LedgerError(f"cannot open privacy ledger {path}: {err}") from None
    return conn


def _init_schema(conn: sqlite3.Connection, *, run_name: str, delta: float, config_json: str) -> None:
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        meta = {
            "run_name": run_name,
            "delta": repr(float(delta)),
            "created_at": _now(),
            "config_json": config_json,
        }
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        conn.execute("COMMIT")
    except sqlite3.Error as err:
        raise LedgerError(f"cannot initialise privacy ledger: {err}") from None


def _check_ledger(conn: sqlite3.Connection, path: Path) -> None:
    """Raises LedgerError unless ``conn`` is a consistent fedlab ledger."""
    try:
        (app_id,) = conn.execute("PRAGMA application_id").fetchone()
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if app_id != _APPLICATION_ID:
            raise LedgerError(f"not a fedlab privacy ledger: {path}")
        if version == 1:  # before checkpoints: add the (empty) table
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_CHECKPOINT_TABLE)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        elif version != _SCHEMA_VERSION:
            raise LedgerError(f"unsupported privacy ledger version {version} in {path}")
        problem = _inconsistency(conn)
        if problem is None:
            conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as err:
        raise LedgerError(f"unreadable privacy ledger {path}: {err}") from None
    if problem:
        raise LedgerError(f"inconsistent privacy ledger {path}: {problem}")


def _inconsistency(conn: sqlite3.Connection) -> str | None:
    """Describes the first inconsistency found, or None."""
    keys = {row[0] for row in conn.execute("SELECT key FROM meta")}
    if not {"run_name", "delta", "created_at", "config_json"} <= keys:
        return "meta table incomplete"
    count, last = conn.execute("SELECT COUNT(*), COALESCE(MAX(round), 0) FROM rounds").fetchone()
    if count != last:
        return f"{count} rounds recorded but the last is round {last}: rounds are not contiguous"
    bad = conn.execute(
        "SELECT r.round FROM rounds r"
        " LEFT JOIN (SELECT round, COUNT(*) AS n FROM client_spend GROUP BY round) c ON c.round = r.round"
        " LEFT JOIN (SELECT round, COUNT(*) AS n FROM federation_spend GROUP BY round) f ON f.round = r.round"
        " WHERE r.num_clients != COALESCE(c.n, 0) OR r.num_federation != COALESCE(f.n, 0)"
        " ORDER BY r.round LIMIT 1"
    ).fetchone()
    if bad is not None:
        return f"round {bad[0]} has a different number of rows than it recorded"
    orphan = conn.execute(
        "SELECT round FROM client_spend WHERE round NOT IN (SELECT round FROM rounds)"
        " UNION SELECT round FROM federation_spend WHERE round NOT IN (SELECT round FROM rounds) LIMIT 1"
    ).fetchone()
    if orphan is not None:
        return f"rows for round {orphan[0]}, which was never committed"
    return None


def _check_round_args(
    round_num: int, clients: Sequence[ClientSpend], federation: Sequence[FederationSpend]
) -> None:
    if isinstance(round_num, bool) or not isinstance(round_num, int) or round_num < 1:
        raise LedgerError(f"round number must be an integer >= 1; got {round_num!r}")
    if not all(isinstance(c, ClientSpend) for c in clients):
        raise LedgerError("clients must be ClientSpend records")
    if not all(isinstance(f, FederationSpend) for f in federation):
        raise LedgerError("federation must be FederationSpend records")
    if len({c.client_id for c in clients}) != len(clients):
        raise LedgerError(f"round {round_num}: a client id appears twice")
    if len({f.mechanism for f in federation}) != len(federation):
        raise LedgerError(f"round {round_num}: a federation mechanism appears twice")


def _round_refusal(round_num: int, last: int, path: Path) -> str:
    if round_num <= last:
        return f"round {round_num} is already committed in {path} (last round {last})"
    return f"round {round_num} is not the next round in {path}: expected {last + 1}"


def _last_round(conn: sqlite3.Connection) -> int:
    (last,) = conn.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()
    return int(last)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
