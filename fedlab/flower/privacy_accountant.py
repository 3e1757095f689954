"""fedlab's accountants (PLD, PRV, RDP) as Flower's ``PrivacyAccountant``.

Flower's DP strategies (``DifferentialPrivacyServerSideFixedClipping`` and its kin) take an
``accountant`` implementing ``flwr.supercore.privacy_accounting.PrivacyAccountant``; Flower ships
an RDP one. :class:`FlowerAccountant` gives them fedlab's tight PLD accountant (or its PRV or RDP
ones) with the same interface, events and state format, so a Flower app's epsilon is the number
``fedlab privacy epsilon`` prints for the same mechanism.

Adjacency and sampling, as Flower's ``PrivacyConfig`` states them: Poisson sampling of clients
with add-or-remove-one neighbours (a Flower event of ``sample_size`` clients out of
``population_size`` is one release at rate ``sample_size / population_size``), or no
amplification (rate 1). Sampling without replacement (replace-one) is not what fedlab's
accountants compose, and is refused.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    SamplingMethod,
)

from fedlab.core.choices import AccountantKind
from fedlab.privacy.accountants import Accountant, make_accountant
from fedlab.privacy.events import GaussianEvent

STATE_VERSION = 1


def _config_state(config: PrivacyConfig) -> dict[str, object]:
    return {
        "target_delta": config.target_delta,
        "population_size": config.population_size,
        "neighboring_relation": config.neighboring_relation.value,
        "sampling_method": config.sampling_method.value,
        "max_epsilon": config.max_epsilon,
    }


def _positive_count(count: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ValueError(f"count must be a positive integer; got {count!r}")
    return count


class FlowerAccountant:
    """A fedlab accountant behind Flower's ``PrivacyAccountant`` protocol.

    Args:
        config: Flower's privacy configuration (delta, population, sampling, budget).
        accountant: ``"pld"`` (tight; the default), ``"prv"`` or ``"rdp"``.

    Raises:
        ValueError: For sampling without replacement, or an unknown accountant.

    Example:
        >>> config = PrivacyConfig(target_delta=1e-5, population_size=100,
        ...     neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        ...     sampling_method=SamplingMethod.POISSON)
        >>> acc = FlowerAccountant(config)
        >>> acc.compose(GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=10, population_size=100), 20)
        >>> spent = acc.get_privacy_spent()
        >>> spent.num_releases, spent.accounting_method, round(spent.epsilon, 2)
        (20, 'fedlab-pld', 3.59)
    """

    def __init__(self, config: PrivacyConfig, accountant: AccountantKind | str = AccountantKind.PLD) -> None:
        if config.sampling_method is SamplingMethod.WITHOUT_REPLACEMENT:
            raise ValueError(
                "fedlab's accountants compose Poisson-sampled (or unsampled) releases under "
                "add-or-remove-one adjacency; use sampling_method='poisson' or 'no-amplification'"
            )
        self._config = config
        self._inner: Accountant = make_accountant(accountant)
        self._name = self._inner.name

    @property
    def config(self) -> PrivacyConfig:
        """Flower's privacy configuration."""
        return self._config

    @property
    def num_releases(self) -> int:
        """How many releases were composed."""
        return sum(event.steps for event in self._inner.events())

    def _event(self, event: GaussianPrivacyEvent, count: int) -> GaussianEvent:
        if event.population_size != self._config.population_size:
            raise ValueError(
                f"the event's population_size {event.population_size} is not the configured "
                f"{self._config.population_size}"
            )
        rate = 1.0
        if self._config.sampling_method is SamplingMethod.POISSON:
            rate = event.sample_size / event.population_size
        return GaussianEvent(
            noise_multiplier=event.noise_multiplier, sample_rate=rate, steps=_positive_count(count)
        )

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        """Compose ``count`` identical releases."""
        self._inner.compose(self._event(event, count))

    def get_epsilon(self, delta: float) -> float:
        """The epsilon of everything composed, at ``delta``."""
        return self._inner.epsilon(delta=delta)

    def get_delta(self, epsilon: float) -> float:
        """The delta of everything composed, at ``epsilon``."""
        return self._inner.delta(epsilon=epsilon)

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        """Epsilon at ``delta`` (the configured target delta by default) and the release count."""
        target = self._config.target_delta if delta is None else delta
        return PrivacySpent(
            epsilon=self.get_epsilon(target),
            delta=target,
            num_releases=self.num_releases,
            accounting_method=f"fedlab-{self._name}",
        )

    def would_exceed(
        self, event: GaussianPrivacyEvent, max_epsilon: float | None = None, count: int = 1
    ) -> bool:
        """Whether composing ``count`` releases of ``event`` would take epsilon over the budget.

        The budget is ``max_epsilon`` if given, else the configured one; epsilon is taken at the
        configured target delta. Nothing is composed.

        Raises:
            ValueError: If there is no budget, or it is not positive and finite.
        """
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be given here or in the PrivacyConfig")
        if isinstance(limit, bool) or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"max_epsilon must be positive and finite; got {limit!r}")
        return self._inner.would_exceed(
            self._event(event, count), max_epsilon=limit, delta=self._config.target_delta
        )

    def state_dict(self) -> dict[str, object]:
        """JSON-serializable state: the configuration and fedlab's accountant state."""
        return {
            "schema_version": STATE_VERSION,
            "backend": f"fedlab-{self._name}",
            "config": _config_state(self._config),
            "accountant": self._inner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` saved, for the same configuration and accountant.

        Raises:
            ValueError: If the state is of another version, accountant or configuration.
        """
        if state.get("schema_version") != STATE_VERSION:
            raise ValueError(f"unsupported accountant state version {state.get('schema_version')!r}")
        if state.get("backend") != f"fedlab-{self._name}":
            raise ValueError(f"the state is of accountant {state.get('backend')!r}, not fedlab-{self._name}")
        if state.get("config") != _config_state(self._config):
            raise ValueError("the state's privacy configuration is not this accountant's")
        inner: Any = state.get("accountant")
        if not isinstance(inner, dict):
            raise ValueError("the state has no accountant history")
        self._inner.load_state_dict(inner)


__all__ = ["FlowerAccountant", "NeighboringRelation", "PrivacyConfig", "SamplingMethod"]
