"""Run configuration: parsed once at the edge into frozen, validated dataclasses.

A config is a TOML file with one table per section (``[run]``, ``[data]``, ``[model]``, ``[train]``,
``[dp]``, ``[server]``, ``[simulation]``, ``[secagg]``). Every key is checked when read: unknown
keys, wrong types and out-of-range values raise :class:`~fedlab.core.errors.ConfigError` with a
one-line message naming the key. Below the edge nothing reads raw dicts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlab.core.choices import (
    BACKENDS,
    CLIENT_ACCOUNTANTS,
    CLIENT_RANDOMNESS,
    DEVICE_MODELS,
    DP_MODES,
    SECAGG_WEIGHTINGS,
    SERVER_ACCOUNTANTS,
    TRAINERS,
    AccountantKind,
    TrainerKind,
    check_choice,
    check_min,
    check_open_unit,
    check_type,
    config_error,
    path_exists,
)
from fedlab.core.learning_config import DataSection as DataSection
from fedlab.core.learning_config import ModelSection as ModelSection
from fedlab.core.learning_config import TrainSection as TrainSection
from fedlab.core.server_config import ServerSection, check_aggregation
from fedlab.core.toml_input import apply_overrides as apply_overrides
from fedlab.core.toml_input import read_toml as read_toml


@dataclass(frozen=True)
class RunSection:
    """Identity and length of a run; ``tensorboard``: also write TensorBoard event files."""

    name: str = "fedlab"
    seed: int = 0
    rounds: int = 10
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check_min("run.rounds", self.rounds, 1)
        check_min("run.seed", self.seed, 0)


@dataclass(frozen=True)
class DpSection:
    """Differential privacy: where the noise is added is a choice, not a code path.

    ``mode = "dpsgd"``: sample-level DP-SGD on each client (Opacus); epsilon is per
    client. ``mode = "central"``: user-level DP-FedAvg (McMahan et al. 2018): each
    client's delta is clipped to ``clip_norm``, the server adds Gaussian noise once to
    the sum and divides by the fixed expected cohort size; epsilon is per user, for
    the whole federation. With either mode exactly one of ``noise_multiplier`` and
    ``target_epsilon`` is set; a target is calibrated for the planned rounds.
    ``accountant = "auto"`` means ``rdp`` for DP-SGD (Opacus) and ``pld`` for central.
    Under user-level DP (``central``, ``distributed``) the run directory does not record who
    took part in which round (ledger rows, counts in ``metrics.jsonl``, the summary's client
    list) unless ``record_participation`` is true: the user-level epsilon does not cover them.
    """

    mode: str = "none"
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "auto"
    clip_norm: float = 1.0
    adaptive_clipping: bool = False
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None
    max_epsilon: float | None = None
    record_participation: bool = False

    def __post_init__(self) -> None:
        check_choice("dp.mode", self.mode, DP_MODES)
        if self.noise_multiplier is not None:
            check_min("dp.noise_multiplier", self.noise_multiplier, 0.0)
        if self.target_epsilon is not None:
            check_min("dp.target_epsilon", self.target_epsilon, 0.0, inclusive=False)
        check_min("dp.max_grad_norm", self.max_grad_norm, 0.0, inclusive=False)
        check_open_unit("dp.delta", self.delta)
        check_min("dp.clip_norm", self.clip_norm, 0.0, inclusive=False)
        check_open_unit("dp.target_quantile", self.target_quantile)
        check_min("dp.clip_learning_rate", self.clip_learning_rate, 0.0, inclusive=False)
        if self.clipped_count_stddev is not None:
            check_min("dp.clipped_count_stddev", self.clipped_count_stddev, 0.0, inclusive=False)
        if self.max_epsilon is not None:
            check_min("dp.max_epsilon", self.max_epsilon, 0.0, inclusive=False)
        self._check_accountant()
        if self.mode != "none":
            given = [self.noise_multiplier is not None, self.target_epsilon is not None]
            if sum(given) != 1:
                raise config_error(
                    "dp.noise_multiplier",
                    "set exactly one of dp.noise_multiplier and dp.target_epsilon "
                    f"with dp.mode = {self.mode!r}",
                )

    def _check_accountant(self) -> None:
        if self.accountant == "auto":
            return
        choices = CLIENT_ACCOUNTANTS if self.mode == "dpsgd" else SERVER_ACCOUNTANTS
        check_choice("dp.accountant", self.accountant, ("auto", *choices))

    @property
    def enabled(self) -> bool:
        """Whether any differential privacy is applied."""
        return self.mode != "none"

    @property
    def dpsgd(self) -> bool:
        """Whether this is sample-level DP-SGD on each client (``mode = "dpsgd"``)."""
        return self.mode == "dpsgd"

    @property
    def central(self) -> bool:
        """Whether the server adds the noise (DP-FedAvg, ``mode = "central"``)."""
        return self.mode == "central"

    @property
    def distributed(self) -> bool:
        """Whether the clients add the noise under secure aggregation (``mode = "distributed"``)."""
        return self.mode == "distributed"

    @property
    def user_level(self) -> bool:
        """Whether epsilon is user level (``central`` or ``distributed``): one client's whole data."""
        return self.mode in ("central", "distributed")

    @property
    def resolved_accountant(self) -> AccountantKind:
        """The accountant actually used: ``auto`` resolved for the mode."""
        if self.accountant != "auto":
            return AccountantKind(self.accountant)
        return AccountantKind.RDP if self.mode == "dpsgd" else AccountantKind.PLD


@dataclass(frozen=True)
class SimulationSection:
    """How the simulation engine runs the virtual clients.

    ``workers`` is the number of worker processes of the ``inline`` backend (unset:
    one per core; 0 or 1: train in this process). The device keys describe simulated
    devices (``devices = "distribution"``: speed and bandwidths lognormal around their
    medians with the given sigmas; ``"trace"``: read from the CSV ``device_trace``).
    A round ends at ``round_deadline`` simulated seconds (0: no deadline) or once
    ``target_updates`` updates arrived (0: wait for every sampled client).
    ``ray_address`` points the ``flower`` backend at a running Ray cluster. With
    ``client_randomness = "secret"`` (inline) clients draw a fresh secret per round, as deployed.
    ``trainer`` picks who trains a round's clients (inline): one after another, ``cohort``
    (vectorized, in groups of ``cohort_size``; 0: what fits in memory), or ``auto`` (cohort
    when the model allows, else sequential with a logged reason).
    """

    backend: str = "inline"
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.25
    workers: int | None = None
    devices: str = "distribution"
    device_trace: str = ""
    step_seconds: float = 0.01
    speed_sigma: float = 0.0
    upload_mbps: float = 10.0
    download_mbps: float = 50.0
    bandwidth_sigma: float = 0.0
    latency_seconds: float = 0.05
    availability: float = 1.0
    dropout: float = 0.0
    round_deadline: float = 0.0
    target_updates: int = 0
    ray_address: str = ""
    client_randomness: str = "seeded"
    trainer: TrainerKind = TrainerKind.SEQUENTIAL
    cohort_size: int = 0

    def __post_init__(self) -> None:
        check_choice("simulation.backend", self.backend, BACKENDS)
        check_choice("simulation.trainer", self.trainer, TRAINERS)
        object.__setattr__(self, "trainer", TrainerKind(self.trainer))  # the TOML string, resolved
        check_min("simulation.cohort_size", self.cohort_size, 0)
        if self.trainer == TrainerKind.COHORT and self.backend != "inline":
            raise config_error("simulation.trainer", "'cohort' needs simulation.backend = 'inline'")
        check_choice("simulation.client_randomness", self.client_randomness, CLIENT_RANDOMNESS)
        check_min("simulation.num_cpus_per_client", self.num_cpus_per_client, 0.0, inclusive=False)
        check_min("simulation.num_gpus_per_client", self.num_gpus_per_client, 0.0)
        if self.workers is not None:
            check_min("simulation.workers", self.workers, 0)
        self._check_devices()
        check_min("simulation.round_deadline", self.round_deadline, 0.0)
        check_min("simulation.target_updates", self.target_updates, 0)

    def _check_devices(self) -> None:
        check_choice("simulation.devices", self.devices, DEVICE_MODELS)
        if self.devices == "trace" and not self.device_trace:
            raise config_error("simulation.device_trace", "required when simulation.devices = 'trace'")
        if self.device_trace and self.devices != "trace":
            raise config_error("simulation.devices", "must be 'trace' when simulation.device_trace is set")
        if self.device_trace and not path_exists(self.device_trace, file=True):
            raise config_error("simulation.device_trace", f"file not found: {self.device_trace[:200]}")
        for key in ("step_seconds", "upload_mbps", "download_mbps"):
            check_min(f"simulation.{key}", getattr(self, key), 0.0, inclusive=False)
        for key in ("speed_sigma", "bandwidth_sigma", "latency_seconds"):
            check_min(f"simulation.{key}", getattr(self, key), 0.0)
        if not 0.0 < self.availability <= 1.0:
            raise config_error("simulation.availability", f"must be in (0, 1]; got {self.availability!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise config_error("simulation.dropout", f"must be in [0, 1); got {self.dropout!r}")


@dataclass(frozen=True)
class SecAggSection:
    """Secure aggregation (SecAgg+): the server learns only the sum of the updates.

    ``neighbours`` and ``threshold`` of 0 mean automatic (k = O(log n) neighbours, t
    just above k/2). A set ``threshold`` is at least 2 and, when ``neighbours`` is set
    too, at most ``neighbours`` and more than half of it (2t > k): clients refuse a
    roster of 2t or more neighbours, from which a server could collect t shares of
    both of a client's secrets. Updates are encoded to integers mod 2^``bits`` after
    clipping each coordinate to [-``clip_range``, ``clip_range``] (with ``dp.mode = "distributed"``
    the Skellam mechanism encodes instead, and ``clip_range`` is unused). A round
    aborts, releasing nothing, when fewer than ``min_survivors`` (a fraction of the
    sampled clients) reach unmasking; distributed DP calibrates its noise for that
    many survivors. ``simulate_dropout`` drops that fraction of sampled clients at
    random protocol stages (testing the dropout handling in simulation).

    ``weighting`` decides how plain secure FedAvg averages: ``examples`` (as FedAvg and
    Flower's SecAgg+ do) has each client scale its delta by min(examples, ``max_weight``)
    / ``max_weight`` before encoding, and the server divides the sum by the sum of those
    factors (the example counts are public metadata); ``uniform`` gives every included
    client the same weight; ``auto`` is ``examples`` except under distributed DP, whose
    noise is calibrated to one clipped update and which always averages uniformly. Pick
    ``max_weight`` near the largest client's example count: weights above it are capped,
    and a cap far above every client costs fixed-point precision.
    """

    enabled: bool = False
    neighbours: int = 0
    threshold: int = 0
    bits: int = 32
    clip_range: float = 1.0
    min_survivors: float = 0.7
    simulate_dropout: float = 0.0
    weighting: str = "auto"
    max_weight: int = 1000

    def __post_init__(self) -> None:
        check_choice("secagg.weighting", self.weighting, SECAGG_WEIGHTINGS)
        check_min("secagg.max_weight", self.max_weight, 1)
        check_min("secagg.neighbours", self.neighbours, 0)
        check_min("secagg.threshold", self.threshold, 0)
        if self.threshold == 1:
            raise config_error("secagg.threshold", "must be 0 (automatic) or at least 2; got 1")
        if self.threshold and self.neighbours and self.threshold > self.neighbours:
            raise config_error(
                "secagg.threshold",
                f"must be <= secagg.neighbours; got {self.threshold} > {self.neighbours}",
            )
        if self.threshold and self.neighbours and 2 * self.threshold <= self.neighbours:
            raise config_error(
                "secagg.threshold",
                f"must be more than half of secagg.neighbours (2t > k); got {self.threshold} "
                f"with {self.neighbours} neighbours",
            )
        if not 8 <= self.bits <= 62:
            raise config_error("secagg.bits", f"must be in [8, 62]; got {self.bits!r}")
        check_min("secagg.clip_range", self.clip_range, 0.0, inclusive=False)
        if not 0.0 < self.min_survivors <= 1.0:
            raise config_error("secagg.min_survivors", f"must be in (0, 1]; got {self.min_survivors!r}")
        if not 0.0 <= self.simulate_dropout < 1.0:
            raise config_error("secagg.simulate_dropout", f"must be in [0, 1); got {self.simulate_dropout!r}")


@dataclass(frozen=True)
class RunConfig:
    """A whole, validated run configuration."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    dp: DpSection = field(default_factory=DpSection)
    server: ServerSection = field(default_factory=ServerSection)
    simulation: SimulationSection = field(default_factory=SimulationSection)
    secagg: SecAggSection = field(default_factory=SecAggSection)

    def __post_init__(self) -> None:
        if self.dp.mode == "distributed" and not self.secagg.enabled:
            raise config_error(
                "dp.mode", "'distributed' adds the noise under secure aggregation: set secagg.enabled = true"
            )
        if self.dp.mode == "central" and self.secagg.enabled:
            raise config_error(
                "dp.mode", "'central' adds noise on the server; with secagg.enabled use 'distributed'"
            )
        self._check_user_level_accounting()
        check_aggregation(self.server, dp_mode=self.dp.mode, secure=self.secagg.enabled)
        if self.dp.mode == "distributed" and self.secagg.weighting == "examples":
            raise config_error(
                "secagg.weighting",
                "distributed DP averages with equal weights (its noise covers one clipped update); "
                "use 'auto' or 'uniform'",
            )

    def _check_user_level_accounting(self) -> None:
        """Refuse what breaks user-level DP's accounting (Poisson-sampled, sensitivity C per client)."""
        if not self.dp.user_level:
            return
        if self.simulation.target_updates > 0:
            raise config_error(
                "simulation.target_updates",
                f"with dp.mode = {self.dp.mode!r} one client's update can displace another's (the sum "
                "changes by up to 2C, the accountant assumes C); use 0 or simulation.round_deadline",
            )
        if self.client_sampling == "fraction" and self.server.fraction_train < 1.0:
            raise config_error(
                "server.sampling",
                f"dp.mode = {self.dp.mode!r} is accounted with Poisson sampling of clients; "
                "use 'poisson' or 'auto'",
            )

    @property
    def client_sampling(self) -> str:
        """``server.sampling`` with ``auto`` resolved: ``poisson`` under user-level DP, else ``fraction``."""
        if self.server.sampling != "auto":
            return self.server.sampling
        return "poisson" if self.dp.user_level else "fraction"

    def secure_weight_cap(self) -> int | None:
        """The example-weight cap of plain secure FedAvg, or None when it averages uniformly."""
        if self.dp.mode == "distributed" or self.secagg.weighting == "uniform":
            return None
        return self.secagg.max_weight

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the config as nested plain dicts, omitting unset optional values."""
        return {
            f.name: {k: v for k, v in dataclasses.asdict(getattr(self, f.name)).items() if v is not None}
            for f in dataclasses.fields(self)
        }

    def replace(self, **sections: Any) -> RunConfig:
        """Return a copy with whole sections replaced (each section is re-validated)."""
        return dataclasses.replace(self, **sections)


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in (f.name for f in dataclasses.fields(RunConfig))}


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise config_error(name, f"must be a table; got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise config_error(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        values[key] = check_type(f"{name}.{key}", value, hints[key])
    return cls(**values)


def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a nested dict (as read from TOML) into a :class:`RunConfig`.

    Raises:
        ConfigError: On an unknown section or key, a wrong type or a bad value.

    """
    sections = _section_types()
    built: dict[str, Any] = {}
    for name, table in raw.items():
        if name not in sections:
            raise config_error(name, f"unknown section (known: {', '.join(sections)})")
        built[name] = _build_section(name, sections[name], table)
    return RunConfig(**built)


def load_config(path: Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read, override and validate a TOML run configuration.

    Args:
        path: The TOML file.
        overrides: ``section.key=value`` strings applied after reading.

    Raises:
        ConfigError: If the file is missing or any key is invalid.

    """
    return config_from_dict(apply_overrides(read_toml(path), overrides))
