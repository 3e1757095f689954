"""The rows of the privacy ledger: one round's spends, and per-client and per-mechanism totals.

Spends validate themselves on construction (one-line ``ValueError``) and hold plain Python
numbers, so :class:`~fedlab.privacy.ledger.PrivacyLedger` can bind them to SQLite as they are.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TypeGuard


def _check_spend(
    owner: object, noise_multiplier: object, sample_rate: object, steps: object, epsilon: object
) -> None:
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"a spend needs a non-empty string client_id or mechanism; got {owner!r}")
    if not (_is_real(noise_multiplier) and math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise ValueError(f"{owner}: noise_multiplier must be finite and >= 0; got {noise_multiplier!r}")
    if not (_is_real(sample_rate) and 0.0 < sample_rate <= 1.0):
        raise ValueError(f"{owner}: sample_rate must be in (0, 1]; got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"{owner}: steps must be an integer >= 1; got {steps!r}")
    if not (_is_real(epsilon) and epsilon >= 0.0):
        raise ValueError(f"{owner}: epsilon must be >= 0 (inf for a noiseless release); got {epsilon!r}")


def _is_real(value: object) -> TypeGuard[float]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _normalise(record: ClientSpend | FederationSpend) -> None:
    """Stores numpy scalars as plain Python numbers (SQLite binds only those)."""
    for name in ("noise_multiplier", "sample_rate", "epsilon"):
        object.__setattr__(record, name, float(getattr(record, name)))
    object.__setattr__(record, "steps", int(record.steps))


@dataclass(frozen=True, kw_only=True)
class ClientSpend:
    """One client's spend in one round (sample-level DP on the client).

    Attributes:
        client_id: Stable client identifier.
        noise_multiplier: Noise multiplier of the client's DP-SGD this round.
        sample_rate: Poisson sampling rate of its batches.
        steps: DP-SGD steps taken this round.
        epsilon: The client's *cumulative* epsilon at the run's delta after this round.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from fedlab.privacy.ledger import PrivacyLedger
        >>> path = Path(tempfile.mkdtemp()) / "ledger.sqlite"
        >>> spend = ClientSpend(client_id="a", noise_multiplier=1.0, sample_rate=0.1, steps=10, epsilon=0.5)
        >>> with PrivacyLedger.create(path, run_name="demo", delta=1e-5, config_json="{}") as ledger:
        ...     ledger.commit_round(1, [spend])
        ...     totals = ledger.client_totals()
        >>> totals[0].epsilon, totals[0].total_steps
        (0.5, 10)
    """

    client_id: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float

    def __post_init__(self) -> None:
        _check_spend(self.client_id, self.noise_multiplier, self.sample_rate, self.steps, self.epsilon)
        _normalise(self)


@dataclass(frozen=True, kw_only=True)
class FederationSpend:
    """A server-side (user-level) release in one round, e.g. DP-FedAvg's noisy sum.

    Attributes:
        mechanism: Name of the release (unique within a round), e.g. ``"dp-fedavg"``.
        noise_multiplier: Noise multiplier of the release.
        sample_rate: Client sampling rate.
        steps: Compositions this round (usually 1).
        epsilon: Cumulative federation epsilon of this mechanism after this round.

    Example:
        >>> FederationSpend(mechanism="dp-fedavg", noise_multiplier=1, sample_rate=0.1, steps=1, epsilon=0.2)
        FederationSpend(mechanism='dp-fedavg', noise_multiplier=1.0, sample_rate=0.1, steps=1, epsilon=0.2)
    """

    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float

    def __post_init__(self) -> None:
        _check_spend(self.mechanism, self.noise_multiplier, self.sample_rate, self.steps, self.epsilon)
        _normalise(self)


@dataclass(frozen=True)
class RoundRecord:
    """One committed round.

    Attributes:
        round: Round number (1, 2, ...).
        committed_at: UTC ISO-8601 time of the commit.
        num_clients: Number of client rows.
        epsilon_max: Largest cumulative client epsilon this round (None without clients).
        epsilon_mean: Mean cumulative client epsilon this round (None without clients).

    Example:
        >>> RoundRecord(1, "2026-01-01T00:00:00+00:00", 0, None, None).num_clients
        0
    """

    round: int
    committed_at: str
    num_clients: int
    epsilon_max: float | None
    epsilon_mean: float | None


@dataclass(frozen=True)
class ClientTotal:
    """One client over the whole run.

    Attributes:
        client_id: The client.
        rounds: Number of rounds it took part in.
        total_steps: Sum of its steps.
        epsilon: Its cumulative epsilon: the maximum over its rounds (never under-counted).
        last_round: The last round it took part in.

    Example:
        >>> ClientTotal(client_id="a", rounds=2, total_steps=20, epsilon=0.9, last_round=3).epsilon
        0.9
    """

    client_id: str
    rounds: int
    total_steps: int
    epsilon: float
    last_round: int


@dataclass(frozen=True)
class FederationTotal:
    """One server-side mechanism over the whole run.

    Attributes:
        mechanism: The mechanism.
        rounds: Number of rounds with a release.
        total_steps: Sum of its steps.
        epsilon: Its cumulative epsilon: the maximum over its rounds.
        last_round: The last round with a release.

    Example:
        >>> FederationTotal(mechanism="dp-fedavg", rounds=2, total_steps=2, epsilon=0.4, last_round=2).rounds
        2
    """

    mechanism: str
    rounds: int
    total_steps: int
    epsilon: float
    last_round: int
