"""Simulated devices and the virtual clock (FedScale's model of a deployment round).

Every client has a device profile: compute speed (1 = the reference device, whose
local step takes ``simulation.step_seconds``), upload and download bandwidth,
latency, the probability of being available in a round and the probability of
dropping out mid-round. Profiles are drawn once from the run seed (speed and
bandwidths lognormal around their medians) or read from a trace CSV. A value that
is the same for every client is kept as one number, so an ideal population of 10^6
clients costs nothing.

A sampled client's simulated time is download + compute + upload::

    latency + model_bytes / download + steps * step_seconds / speed + update_bytes / upload + latency

A round ends at the deadline or once the target number of updates has arrived;
clients that finish later are stragglers, clients that dropped out never arrive.

Trace CSV (``simulation.device_trace``), one row per client (a ``client`` column
holding ids ``0 .. N-1``) or per device class (a ``class`` column and an optional
``weight`` column: clients are assigned to classes in proportion to the weights,
from the run seed). Optional columns: ``speed``, ``upload_mbps``, ``download_mbps``,
``latency_s``, ``availability``, ``dropout``; a missing column takes the
``[simulation]`` value.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedlab.core.config import SimulationSection
from fedlab.core.errors import ConfigError

PerClient = float | NDArray[np.float64]
TRACE_KEY = "simulation.device_trace"
_COLUMNS = ("speed", "upload_mbps", "download_mbps", "latency_s", "availability", "dropout")
_BITS_PER_BYTE = 8.0
_MEGA = 1e6

# Purposes of the random streams derived from the run seed.
_SPEED, _UPLOAD, _DOWNLOAD, _CLASSES, _AVAILABLE, _DROPOUT = range(6)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5D, *key)))


def _take(values: PerClient, index: NDArray[np.int64]) -> NDArray[np.float64]:
    if isinstance(values, np.ndarray):
        return values[index]
    return np.full(index.shape, values, dtype=np.float64)


@dataclass(frozen=True)
class DeviceProfiles:
    """Per-client device parameters: a number (same for all) or one value per client.

    Attributes:
        speed: Compute speed relative to the reference device (> 0).
        upload_mbps: Upload bandwidth in megabits per second (> 0).
        download_mbps: Download bandwidth in megabits per second (> 0).
        latency_s: One-way latency in seconds (>= 0).
        availability: Probability of being available in a round, in (0, 1].
        dropout: Probability of dropping out mid-round, in [0, 1).
        step_seconds: Seconds one local step takes on the reference device.
    """

    speed: PerClient
    upload_mbps: PerClient
    download_mbps: PerClient
    latency_s: PerClient
    availability: PerClient
    dropout: PerClient
    step_seconds: float

    @property
    def always_available(self) -> bool:
        """Whether every client is available in every round."""
        return not isinstance(self.availability, np.ndarray) and self.availability >= 1.0

    def available(self, num_clients: int, *, seed: int, round_num: int) -> NDArray[np.int64] | None:
        """The indices of the clients available in ``round_num`` (None: all of them)."""
        if self.always_available:
            return None
        draws = _rng(seed, _AVAILABLE, round_num).random(num_clients)
        return np.flatnonzero(draws < self.availability)

    def drops_out(self, index: NDArray[np.int64], *, seed: int, round_num: int) -> NDArray[np.bool_]:
        """Whether each of the clients ``index`` (in plan order) drops out mid-round."""
        draws = _rng(seed, _DROPOUT, round_num).random(len(index))
        return draws < _take(self.dropout, index)

    def round_times(
        self, index: NDArray[np.int64], steps: NDArray[np.int64], *, model_bytes: int
    ) -> NDArray[np.float64]:
        """Simulated seconds each client needs: download, local steps, upload."""
        latency = _take(self.latency_s, index)
        down = model_bytes * _BITS_PER_BYTE / (_take(self.download_mbps, index) * _MEGA)
        up = model_bytes * _BITS_PER_BYTE / (_take(self.upload_mbps, index) * _MEGA)
        compute = steps * self.step_seconds / _take(self.speed, index)
        return np.asarray(2 * latency + down + compute + up, dtype=np.float64)


def _lognormal(median: float, sigma: float, num_clients: int, rng: np.random.Generator) -> PerClient:
    if sigma == 0.0:
        return median
    return np.asarray(median * rng.lognormal(0.0, sigma, num_clients), dtype=np.float64)


def profiles_from_config(section: SimulationSection, *, num_clients: int, seed: int) -> DeviceProfiles:
    """Draw (or read) every client's device profile.

    Raises:
        ConfigError: If the trace file is malformed (the message names the key and row).
    """
    if section.devices == "trace":
        return read_trace(Path(section.device_trace), section, num_clients=num_clients, seed=seed)
    return DeviceProfiles(
        speed=_lognormal(1.0, section.speed_sigma, num_clients, _rng(seed, _SPEED)),
        upload_mbps=_lognormal(
            section.upload_mbps, section.bandwidth_sigma, num_clients, _rng(seed, _UPLOAD)
        ),
        download_mbps=_lognormal(
            section.download_mbps, section.bandwidth_sigma, num_clients, _rng(seed, _DOWNLOAD)
        ),
        latency_s=section.latency_seconds,
        availability=section.availability,
        dropout=section.dropout,
        step_seconds=section.step_seconds,
    )


def _defaults(section: SimulationSection) -> dict[str, float]:
    return {
        "speed": 1.0,
        "upload_mbps": section.upload_mbps,
        "download_mbps": section.download_mbps,
        "latency_s": section.latency_seconds,
        "availability": section.availability,
        "dropout": section.dropout,
    }


def _number(row: Mapping[str, str], column: str, line: int) -> float:
    try:
        value = float(row[column])
    except ValueError:
        raise ConfigError(f"{TRACE_KEY}: row {line}: {column} is not a number: {row[column]!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{TRACE_KEY}: row {line}: {column} must be finite; got {value!r}")
    return value


def _check_value(column: str, value: float, line: int) -> None:
    ok = {
        "speed": value > 0.0,
        "upload_mbps": value > 0.0,
        "download_mbps": value > 0.0,
        "latency_s": value >= 0.0,
        "availability": 0.0 < value <= 1.0,
        "dropout": 0.0 <= value < 1.0,
        "weight": value > 0.0,
    }[column]
    if not ok:
        raise ConfigError(f"{TRACE_KEY}: row {line}: {column} out of range: {value!r}")


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = [dict(r) for r in reader]
            header = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{TRACE_KEY}: cannot read {path}: {exc}") from None
    if not rows:
        raise ConfigError(f"{TRACE_KEY}: {path} has no rows")
    unknown = set(header) - {"client", "class", "weight", *_COLUMNS}
    if unknown:
        raise ConfigError(f"{TRACE_KEY}: unknown columns {', '.join(sorted(unknown))}")
    if ("client" in header) == ("class" in header):
        raise ConfigError(f"{TRACE_KEY}: needs exactly one of the columns 'client' and 'class'")
    return header, rows


def _table(
    header: list[str], rows: list[dict[str, str]], defaults: Mapping[str, float]
) -> dict[str, NDArray[np.float64]]:
    table: dict[str, NDArray[np.float64]] = {}
    for column in (*_COLUMNS, "weight"):
        values = []
        for line, row in enumerate(rows, start=2):
            value = _number(row, column, line) if column in header else defaults.get(column, 1.0)
            _check_value(column, value, line)
            values.append(value)
        table[column] = np.asarray(values, dtype=np.float64)
    return table


def _client_rows(rows: list[dict[str, str]], num_clients: int) -> NDArray[np.int64]:
    """Row of each client, for a per-client trace."""
    row_of = np.full(num_clients, -1, dtype=np.int64)
    for position, row in enumerate(rows):
        text = row["client"].strip()
        if not text.isdigit() or int(text) >= num_clients:
            raise ConfigError(f"{TRACE_KEY}: row {position + 2}: client must be in 0..{num_clients - 1}")
        row_of[int(text)] = position
    missing = np.flatnonzero(row_of < 0)
    if missing.size:
        raise ConfigError(f"{TRACE_KEY}: no row for client {int(missing[0])} ({missing.size} missing)")
    return row_of


def read_trace(path: Path, section: SimulationSection, *, num_clients: int, seed: int) -> DeviceProfiles:
    """Read a device trace (per client or per device class); see the module docstring.

    Raises:
        ConfigError: On an unreadable file, unknown columns, bad values or missing clients.
    """
    header, rows = _read_rows(path)
    table = _table(header, rows, _defaults(section))
    if "client" in header:
        row_of = _client_rows(rows, num_clients)
    else:
        weights = table["weight"] / table["weight"].sum()
        row_of = _rng(seed, _CLASSES).choice(len(rows), size=num_clients, p=weights)
    per_client = {column: table[column][row_of] for column in _COLUMNS}
    return DeviceProfiles(**per_client, step_seconds=section.step_seconds)


@dataclass(frozen=True)
class RoundOutcome:
    """Who of a round's sampled clients arrived, who was dropped and why, and when it ended.

    Attributes:
        arrived: Positions (into the plan) of the clients whose updates count, in plan order.
        stragglers: Positions of clients that would finish after the deadline.
        dropouts: Positions of clients that dropped out mid-round.
        over_target: Positions of clients that finished in time but after the target was met.
        seconds: Simulated length of the round.
    """

    arrived: NDArray[np.int64]
    stragglers: NDArray[np.int64]
    dropouts: NDArray[np.int64]
    over_target: NDArray[np.int64]
    seconds: float


def settle_round(
    times: NDArray[np.float64], dropped: NDArray[np.bool_], *, deadline: float, target: int
) -> RoundOutcome:
    """Decide which clients arrive, given their simulated times and dropouts.

    Args:
        times: Each sampled client's simulated time, in plan order.
        dropped: Whether each sampled client drops out.
        deadline: Simulated seconds after which updates are refused (0: none).
        target: Updates after which the round closes (0: every sampled client).

    >>> o = settle_round(np.array([1.0, 5.0, 2.0, 3.0]), np.array([False, False, False, True]),
    ...                  deadline=4.0, target=0)
    >>> o.arrived.tolist(), o.stragglers.tolist(), o.dropouts.tolist(), o.seconds
    ([0, 2], [1], [3], 4.0)
    """
    positions = np.arange(len(times))
    dropouts = positions[dropped]
    late = (times > deadline) & ~dropped if deadline > 0 else np.zeros(len(times), dtype=bool)
    on_time = positions[~dropped & ~late]
    by_arrival = on_time[np.argsort(times[on_time], kind="stable")]
    over_target = by_arrival[target:] if target > 0 else by_arrival[:0]
    arrived = np.sort(by_arrival[:target] if target > 0 else by_arrival)
    if target > 0 and len(by_arrival) >= target:
        seconds = float(times[by_arrival[target - 1]])
    elif deadline > 0 and (late.any() or dropouts.size):
        seconds = deadline
    else:
        seconds = float(times[arrived].max()) if arrived.size else 0.0
    return RoundOutcome(arrived, positions[late], dropouts, np.sort(over_target), seconds)
