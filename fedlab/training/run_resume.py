"""Reopening a run directory to go on after its last committed round.

The ledger is the source of truth: the run goes on after its last committed round, from the
checkpoint committed with it (:mod:`fedlab.core.checkpoint`). What was written after that commit
(``model.npz``, the round's ``metrics.jsonl`` line) is written again from the checkpoint, and
anything past it (a torn line) is dropped, so no round is counted twice and none is lost. A
config that differs from the run's ``config.json`` is refused, naming what changed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedlab.core.checkpoint import Checkpoint
from fedlab.core.config import RunConfig, config_from_dict
from fedlab.core.errors import ConfigError, LedgerError
from fedlab.core.metrics import RoundMetrics, read_metrics
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.ledger import PrivacyLedger
from fedlab.training.accounting import history_after_steps

_FIELDS = ("round", "accuracy", "loss", "train_loss", "epsilon_max", "epsilon_mean", "clients", "seconds")


def _flatten(raw: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two config dicts, as ``key (old -> new)``.

    >>> config_changes({"dp": {"noise": 1.0, "delta": 1e-5}}, {"dp": {"noise": 1.2, "delta": 1e-5}})
    ['dp.noise (1.0 -> 1.2)']
    """
    old, new = _flatten(stored), _flatten(json.loads(json.dumps(now)))

    def shown(flat: Mapping[str, Any], key: str) -> str:
        return repr(flat[key]) if key in flat else "unset"

    return [
        f"{key} ({shown(old, key)} -> {shown(new, key)})"
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.json``.

    Raises:
        ConfigError: If the directory holds no readable run configuration.
    """
    path = run_dir / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume {run_dir}: no readable config.json ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"--resume {run_dir}: config.json is not a configuration")
    return raw


def as_read_now(raw: Mapping[str, Any], run_dir: Path, what: str) -> dict[str, Any]:
    """A stored configuration as this fedlab reads it: keys added since it was written take their defaults.

    Raises:
        ConfigError: If this fedlab cannot read it (a key it no longer knows, a bad value).
    """
    try:
        return config_from_dict(raw).to_dict()
    except ConfigError as exc:
        raise ConfigError(
            f"--resume {run_dir}: the run's {what} no longer reads as a configuration: {exc}"
        ) from None


def open_for_resume(
    run_dir: Path, config: RunConfig, ledger_file: str
) -> tuple[PrivacyLedger, Checkpoint | None]:
    """Open the run's ledger for writing and read its last checkpoint (None: no round committed).

    Raises:
        ConfigError: If ``config`` differs from the run's, naming each changed key.
        LedgerError: If the ledger is missing or inconsistent, or its last round has no readable checkpoint.
    """
    changes = config_changes(as_read_now(stored_config(run_dir), run_dir, "config.json"), config.to_dict())
    if changes:
        raise ConfigError(f"--resume {run_dir}: the config differs from the run's: {', '.join(changes)}")
    ledger = PrivacyLedger.open(run_dir / ledger_file)
    try:
        try:
            raw = json.loads(ledger.meta()["config_json"])
        except ValueError as exc:
            raise LedgerError(f"--resume {run_dir}: the ledger's configuration is not JSON ({exc})") from None
        recorded = as_read_now(raw, run_dir, "ledger configuration")
        if json.dumps(recorded, sort_keys=True) != json.dumps(config.to_dict(), sort_keys=True):
            raise LedgerError(f"--resume {run_dir}: config.json differs from the ledger's configuration")
        last = ledger.last_round()
        blob = ledger.checkpoint()
        if last and blob is None:
            raise LedgerError(
                f"--resume {run_dir}: round {last} has no checkpoint (recorded by a fedlab without resume)"
            )
        checkpoint = None
        if blob is not None:
            try:
                checkpoint = Checkpoint.from_bytes(blob)
            except ValueError as exc:
                raise LedgerError(f"--resume {run_dir}: {exc}") from None
            if checkpoint.round_num != last:
                got = checkpoint.round_num
                raise LedgerError(f"--resume {run_dir}: the checkpoint is of round {got}, not {last}")
    except BaseException:
        ledger.close()
        raise
    return ledger, checkpoint


def require_run_dir(run_dir: Path, ledger_file: str = "ledger.sqlite") -> None:
    """Refuse a directory that holds no run.

    Raises:
        ConfigError: If ``run_dir`` has no ledger.
    """
    if not (run_dir / ledger_file).is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no {ledger_file})")


def check_resumable(run_dir: Path, config: RunConfig, ledger_file: str = "ledger.sqlite") -> int:
    """Check that the run in ``run_dir`` can go on with ``config``; return its last committed round.

    Raises:
        ConfigError: If ``run_dir`` holds no run, or ``config`` differs from the run's.
        LedgerError: If the ledger or its checkpoint cannot be used.
    """
    require_run_dir(run_dir, ledger_file)
    ledger, checkpoint = open_for_resume(run_dir, config, ledger_file)
    ledger.close()
    return checkpoint.round_num if checkpoint else 0


def histories_from_rows(
    rows: Iterable[tuple[str, float, float, int]],
) -> dict[str, tuple[GaussianEvent, ...]]:
    """Each client's DP-SGD accountant history, rebuilt from its ledger rows in round order.

    Rows without noise (no DP-SGD) add nothing, as they add nothing to a client's history.

    >>> histories_from_rows([("a", 1.0, 0.1, 3), ("a", 1.0, 0.1, 2), ("b", 0.0, 1.0, 1)])
    {'a': (GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=5),)}
    """
    histories: dict[str, tuple[GaussianEvent, ...]] = {}
    for client_id, noise, rate, steps in rows:
        if noise > 0.0:
            histories[client_id] = history_after_steps(
                histories.get(client_id, ()), noise_multiplier=noise, sample_rate=rate, steps=steps
            )
    return histories


def metrics_from_row(row: Mapping[str, Any]) -> RoundMetrics:
    """A ``metrics.jsonl`` row as :class:`RoundMetrics` (null numbers read as NaN)."""

    def number(key: str) -> float:
        value = row.get(key)
        return math.nan if value is None else float(value)

    clients = row.get("clients")
    return RoundMetrics(
        round=int(row["round"]),
        accuracy=number("accuracy"),
        loss=number("loss"),
        train_loss=number("train_loss"),
        epsilon_max=number("epsilon_max"),
        epsilon_mean=number("epsilon_mean"),
        clients=None if clients is None else int(clients),
        seconds=number("seconds"),
        extra={k: v for k, v in row.items() if k not in _FIELDS},
    )


def repair_metrics(path: Path, checkpoint: Checkpoint | None) -> list[RoundMetrics]:
    """Keep the metrics lines of committed rounds, add the checkpoint's round if it is missing.

    The file is rewritten atomically. Returns the rounds' metrics, in order.

    Raises:
        LedgerError: If a committed round's line is missing other than the last one's.
    """
    last = checkpoint.round_num if checkpoint else 0
    rows = [row for row in read_metrics(path) if isinstance(row.get("round"), int) and row["round"] <= last]
    if checkpoint is not None and (not rows or rows[-1]["round"] != last):
        line = checkpoint.state.get("metrics")
        if not isinstance(line, dict):
            raise LedgerError("checkpoint: no metrics line for its round")
        rows.append(line)
    numbers = [row["round"] for row in rows]
    if numbers != list(range(1, last + 1)):
        raise LedgerError(f"{path}: metrics of committed rounds are missing or repeated")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)
    return [metrics_from_row(row) for row in rows]
