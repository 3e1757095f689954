"""The ``[server]`` section: round settings, how updates are checked and how they are aggregated."""

from __future__ import annotations

from dataclasses import dataclass

from fedlab.core.choices import SAMPLING, AggregationKind, check_choice, check_min, config_error

AGGREGATIONS = tuple(kind.value for kind in AggregationKind)
OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
"""``server.optimizer``: Reddi et al. 2021's server optimizers (:mod:`fedlab.algorithms.server_optimizer`)."""
MAX_EXAMPLES = 10_000_000
"""The default largest example count a client may claim (``server.max_examples``)."""


@dataclass(frozen=True)
class ServerSection:
    """Server-side round settings.

    ``fraction_train`` is the fraction of clients per round (``fraction``: exactly that many,
    uniformly; ``poisson``: each client independently with that probability, as DP amplification
    by sampling assumes). ``auto`` is ``poisson`` under user-level DP, ``fraction`` otherwise.

    ``aggregation`` combines a round's valid updates: ``fedavg`` (weighted by examples),
    ``median`` (coordinate-wise), ``trimmed_mean`` (coordinate-wise, ``trim_fraction`` of the
    updates dropped at each end) or ``norm_bounded`` (each update scaled to L2 norm at most
    ``norm_bound``, then FedAvg). Every update is first checked (arrays, shapes, dtype, finite
    values, example count up to ``max_examples``, metrics; its norm up to ``max_update_norm``
    when set) and a bad one is rejected with its reason.

    ``optimizer`` moves the model by the aggregate delta: ``fedavg`` (``lr`` times it; 1 is plain
    FedAvg), ``fedavgm`` (with ``momentum``), ``fedadam``, ``fedyogi`` or ``fedadagrad`` (with
    ``beta1``, ``beta2`` and ``tau``). Under DP it acts on the released, noised aggregate.

    >>> ServerSection(aggregation="median").aggregation is AggregationKind.MEDIAN
    True
    """

    fraction_train: float = 1.0
    sampling: str = "auto"
    timeout: float = 600.0
    aggregation: AggregationKind = AggregationKind.FEDAVG
    trim_fraction: float = 0.1
    norm_bound: float | None = None
    max_update_norm: float | None = None
    max_examples: int = MAX_EXAMPLES
    optimizer: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise config_error("server.fraction_train", f"must be in (0, 1]; got {self.fraction_train!r}")
        check_choice("server.sampling", self.sampling, SAMPLING)
        check_min("server.timeout", self.timeout, 0.0, inclusive=False)
        check_choice("server.aggregation", self.aggregation, AGGREGATIONS)
        object.__setattr__(self, "aggregation", AggregationKind(self.aggregation))
        if not 0.0 <= self.trim_fraction < 0.5:
            raise config_error("server.trim_fraction", f"must be in [0, 0.5); got {self.trim_fraction!r}")
        for key in ("norm_bound", "max_update_norm"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < float("inf"):
                raise config_error(f"server.{key}", f"must be finite and > 0; got {value!r}")
        check_min("server.max_examples", self.max_examples, 1)
        self.optimizer_settings()  # validates server.optimizer, lr, momentum, beta1, beta2, tau
        if self.aggregation is AggregationKind.NORM_BOUNDED and self.norm_bound is None:
            raise config_error("server.norm_bound", "aggregation = 'norm_bounded' needs a bound")

    def optimizer_settings(self) -> ServerOptimizerSettings:
        """The section's server optimizer settings."""
        return ServerOptimizerSettings(
            self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )


@dataclass(frozen=True)
class ServerOptimizerSettings:
    """Which server optimizer (:mod:`fedlab.algorithms.server_optimizer`), and its hyperparameters.

    Raises:
        ConfigError: On an unknown kind, a non-positive or non-finite lr or tau, or a momentum or
            beta outside [0, 1) (named by its ``server.`` key).

    Example:
        >>> ServerOptimizerSettings("fedadam", lr=0.01).is_plain_fedavg
        False
    """

    kind: str = "fedavg"
    lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        check_choice("server.optimizer", self.kind, OPTIMIZERS)
        for key in ("lr", "tau"):
            value = getattr(self, key)
            if not 0.0 < value < float("inf"):
                raise config_error(f"server.{key}", f"must be finite and > 0; got {value!r}")
        for key in ("momentum", "beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise config_error(f"server.{key}", f"must be in [0, 1); got {getattr(self, key)!r}")

    @property
    def is_plain_fedavg(self) -> bool:
        """FedAvg with lr 1: the model plus the aggregate delta, no state."""
        return self.kind == "fedavg" and self.lr == 1.0


def check_aggregation(server: ServerSection, *, dp_mode: str, secure: bool) -> None:
    """Refuse an aggregation the run's privacy or secure aggregation cannot carry.

    Secure aggregation gives the server only the sum, so only ``fedavg`` runs there. Central
    DP's noise is calibrated to the clipped sum's sensitivity: only ``fedavg`` (whose clip is the
    norm bound). DP-SGD and no DP take any of them (post-processing of the clients' outputs).
    """
    if server.aggregation is AggregationKind.FEDAVG:
        return
    if secure:
        raise config_error(
            "server.aggregation",
            "secure aggregation reveals only the sum: use 'fedavg' (the clip range bounds a client)",
        )
    if dp_mode == "central":
        raise config_error(
            "server.aggregation",
            "central DP's noise is calibrated to the clipped sum (dp.clip_norm is the bound): use 'fedavg'",
        )
