"""A device's own budget rule: what each release charges, and the one epsilon the device keeps to.

A device decides alone whether to release a round, from its budget file
(:mod:`fedlab.privacy.client_budget`) and its owner's :class:`DevicePolicy`, never from what the
server says it spent (see :func:`decide` for the refusals). Charges, by the round's DP mode:

* ``dpsgd`` (sample level, one example added or removed): the round's DP-SGD steps (z, q = batch/n,
  steps), every round trained. Holds against anyone who sees the update, the server included.
* ``dp-fedavg`` (central, user level, the device's whole contribution added or removed): the device
  cannot see the server's noise; trusting the server to add it and to keep its sampling secret, it
  charges at its first round of a run the whole run, T Poisson-subsampled Gaussian rounds at the
  (z, q, T) the round's config carries (what the server's ledger reports for the run); later rounds
  of the run are released uncharged, up to a participation count implausible at rate q (a server
  understating q is caught). Holds against readers of the released models, not the server.
* ``skellam-ddp`` (distributed, user level, zero-out: the device's update or zero): per round, the
  server's view of the round's Skellam encoding (no sampling, ``min_survivors`` noise shares; see
  :mod:`fedlab.privacy.skellam_release`). Holds against the server and everyone after it.
* ``none``: a noiseless release, infinite epsilon; only with the owner's opt-in.

:func:`device_epsilon` is at the device's delta and never below 0: with only ``dpsgd`` charges, a
fresh Opacus accountant over their history (the server ledger's per-client number); otherwise the
charges' RDP curves added on integer orders and converted with dp_accounting, never below the
``dpsgd`` charges' own epsilon (a release never lowers it). It bounds what all the device's releases
reveal about any one of its examples, each charge under its own adjacency: a ``dpsgd`` charge
directly; a user-level charge bounds the device's whole contribution against none (strictly, one
changed example of a device that takes part either way is two such changes: group privacy, as for
any user-level guarantee read per example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants.analysis.rdp import compute_rdp
from scipy import stats

from fedlab.core.config import RunConfig
from fedlab.core.errors import LedgerError
from fedlab.privacy.client_budget import ChargeRow, ClientBudget, ReleaseRow
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.skellam import SKELLAM_RDP_ORDERS, SkellamEvent, SkellamParams
from fedlab.privacy.skellam_release import SERVER_VIEW, server_view_event
from fedlab.training.accounting import PrivacyStep, epsilon_from_history
from fedlab.training.client_runtime import CalibrationKey, dp_spec, optim_spec
from fedlab.training.local import poisson_plan

DPSGD, DP_FEDAVG, SKELLAM_DDP, NOISELESS = "dpsgd", "dp-fedavg", SERVER_VIEW, "none"
DEFAULT_DELTA = 1e-5
MAX_DELTA = 0.1
DEVICE_RDP_ORDERS: tuple[int, ...] = SKELLAM_RDP_ORDERS
"""Integer orders of a mixed composition (the Skellam bound holds for integer orders only)."""


@dataclass(frozen=True)
class Noiseless:
    """A release without DP noise (``dp.mode = "none"``): its epsilon is infinite."""


Charge = PrivacyStep | GaussianEvent | SkellamEvent | Noiseless


@dataclass(frozen=True, kw_only=True)
class DevicePolicy:
    """The device owner's rule, fixed at launch (``fedlab client``): the server cannot move it.

    Attributes:
        max_epsilon: The most the device ever spends (``inf``: no limit).
        delta: The delta every epsilon is computed at, in (0, 0.1]; a run whose ``dp.delta`` is
            larger is refused.
        allow_non_private: Whether noiseless rounds (``dp.mode = "none"``) may be released.
    """

    max_epsilon: float = math.inf
    delta: float = DEFAULT_DELTA
    allow_non_private: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.delta <= MAX_DELTA:
            raise ValueError(f"delta must be in (0, {MAX_DELTA:g}]; got {self.delta!r}")
        if not self.max_epsilon > 0.0:
            raise ValueError(f"max_epsilon must be > 0; got {self.max_epsilon!r}")


@dataclass(frozen=True, kw_only=True)
class RoundDecision:
    """What the device's rule says about one round.

    Attributes:
        mechanism: How the round's release is protected (the release record's mechanism).
        charge: What releasing it adds (None: covered by the run's earlier ``dp-fedavg`` charge).
        epsilon: The device's epsilon after the round (>= 0).
        refusal: Why the device refuses the round (one line), or None: it may release it.
        on_record: Whether the refusal belongs in the budget file (all but "already released").
    """

    mechanism: str
    charge: Charge | None
    epsilon: float
    refusal: str | None = None
    on_record: bool = False


def mechanism_of(charge: Charge) -> str:
    """The mechanism name a charge is stored under.

    >>> mechanism_of(PrivacyStep(noise_multiplier=1.0, sample_rate=0.1, steps=10))
    'dpsgd'
    """
    if isinstance(charge, PrivacyStep):
        return DPSGD
    if isinstance(charge, GaussianEvent):
        return DP_FEDAVG
    return SKELLAM_DDP if isinstance(charge, SkellamEvent) else NOISELESS


def charge_of(row: ChargeRow) -> Charge:
    """A stored charge, back as an event.

    >>> charge_of(ChargeRow(run_id=1, server_round=1, mechanism="dp-fedavg", epsilon=1.0,
    ...                     params={"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 4}))
    GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=4)

    Raises:
        LedgerError: On an unknown mechanism or malformed parameters.
    """
    try:
        if row.mechanism == DPSGD:
            event = GaussianEvent.from_dict(row.params)
            return PrivacyStep(
                noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps
            )
        if row.mechanism == DP_FEDAVG:
            return GaussianEvent.from_dict(row.params)
        if row.mechanism == SKELLAM_DDP:
            return SkellamEvent.from_dict(row.params)
        if row.mechanism == NOISELESS:
            return Noiseless()
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"budget file: malformed {row.mechanism} charge: {exc}") from None
    raise LedgerError(f"budget file: unknown mechanism {row.mechanism!r}")


def _params(charge: Charge) -> dict[str, Any]:
    if isinstance(charge, PrivacyStep):
        z, q, steps = charge.as_opacus()
        return {"noise_multiplier": z, "sample_rate": q, "steps": steps}
    return {} if isinstance(charge, Noiseless) else charge.to_dict()


def _rdp(charge: Charge, orders: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if isinstance(charge, SkellamEvent):
        return charge.rdp(orders)
    if isinstance(charge, Noiseless) or charge.noise_multiplier == 0.0:
        return np.full(orders.shape, math.inf)
    curve = compute_rdp(
        q=charge.sample_rate,
        noise_multiplier=charge.noise_multiplier,
        steps=charge.steps,
        orders=list(orders),
    )
    return np.asarray(curve, dtype=np.float64)


def device_epsilon(charges: Sequence[Charge], *, delta: float, accountant: str = "rdp") -> float:
    """The device's epsilon at ``delta`` after ``charges`` (see the module docstring), >= 0.

    Args:
        charges: Every charge, in order.
        delta: The device's delta, in (0, 1).
        accountant: Opacus accountant (``rdp`` or ``prv``) of a history of ``dpsgd`` charges only.

    >>> step = PrivacyStep(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    >>> round(device_epsilon([step], delta=1e-5), 6), device_epsilon([], delta=1e-5)
    (7.329111, 0.0)
    >>> device_epsilon([step, Noiseless()], delta=1e-5)
    inf
    """
    if any(isinstance(c, Noiseless) for c in charges):
        return math.inf
    steps = [c for c in charges if isinstance(c, PrivacyStep)]
    sgd = epsilon_from_history(steps, delta=delta, accountant=accountant) if steps else 0.0
    if len(steps) == len(charges):
        return max(0.0, sgd)
    orders = np.asarray(DEVICE_RDP_ORDERS, dtype=np.float64)
    total = np.sum([_rdp(c, orders) for c in charges], axis=0)
    composed, _ = rdp_privacy_accountant.compute_epsilon(orders, total, delta)
    return max(0.0, sgd, float(composed))


def round_charge(
    config: RunConfig,
    *,
    num_examples: int,
    round_values: Mapping[str, Any] | None = None,
    encoding: object = None,
    calibrated: dict[CalibrationKey, float] | None = None,
) -> Charge:
    """The charge of one round of ``config``'s DP mode, from what the server announced.

    Args:
        config: The run's config (from the server).
        num_examples: The device's training examples (DP-SGD's sample rate and steps).
        round_values: Central DP: the round's config (``noise-multiplier``, ``sample-rate``, ``rounds``).
        encoding: Distributed DP: the round's announced :class:`~fedlab.privacy.skellam.SkellamParams`.
        calibrated: Memo of DP-SGD calibrations (as the trainer's).

    Raises:
        ValueError: With a one-line reason, when the server did not announce what the charge needs.
    """
    dp = config.dp
    if not dp.enabled:
        return Noiseless()
    if dp.dpsgd:
        spec = dp_spec(config, num_examples, calibrated)
        assert spec is not None
        rate, steps = poisson_plan(num_examples, optim_spec(config))
        return PrivacyStep(noise_multiplier=spec.noise_multiplier, sample_rate=rate, steps=steps)
    if dp.central:
        return _central_event(round_values or {})
    if not isinstance(encoding, SkellamParams):
        raise ValueError("a distributed-DP round must announce its Skellam encoding")
    return server_view_event(encoding)


def _central_event(values: Mapping[str, Any]) -> GaussianEvent:
    raw = [values.get(key) for key in ("noise-multiplier", "sample-rate", "rounds")]
    numbers = [float(v) for v in raw if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != len(raw):
        raise ValueError("a central-DP round must carry its noise-multiplier, sample-rate and rounds")
    z, q, rounds = numbers
    if not (math.isfinite(z) and z > 0.0):
        raise ValueError(f"a central-DP round without noise (noise-multiplier {z:g})")
    if not (rounds >= 1.0 and rounds.is_integer()):
        raise ValueError(f"a central-DP round must announce a whole number of rounds; got {rounds:g}")
    return GaussianEvent(noise_multiplier=z, sample_rate=q, steps=int(rounds))


def decide(
    budget: ClientBudget,
    policy: DevicePolicy,
    *,
    config: RunConfig,
    run_id: int,
    server_round: int,
    charge: Charge,
) -> RoundDecision:
    """Apply the device's rule to one round whose release would charge ``charge``.

    Refuses a round already released (never twice; the only refusal not kept on record), a
    noiseless round without ``allow_non_private``, a run whose ``dp.delta`` exceeds the device's,
    a central round beyond the run's announced rounds or with other settings than the run's first,
    and a round after which :func:`device_epsilon` would exceed ``max_epsilon``.

    Stops a server (misconfigured or malicious) from making the device release more than its owner
    allowed: whatever delta, DP mode, round numbers or history the server claims, the planned
    epsilon is the device's own, at its own delta. Does not stop a server that breaks a trust the
    event states (central DP: not adding its noise, or leaking who was sampled), nor the owner
    deleting the budget file.
    """
    rows = budget.charges()
    history = [charge_of(row) for row in rows]
    accountant = config.dp.resolved_accountant if config.dp.dpsgd else "rdp"
    mechanism = mechanism_of(charge)
    if budget.released(run_id, server_round):
        current = device_epsilon(history, delta=policy.delta, accountant=accountant)
        return RoundDecision(
            mechanism=mechanism, charge=None, epsilon=current, refusal="already released (never twice)"
        )
    added: Charge | None = charge
    reason = None
    if isinstance(charge, GaussianEvent):
        added, reason = _central_round(budget, rows, charge, run_id=run_id, server_round=server_round)
    epsilon = device_epsilon(
        [*history, *([added] if added else [])], delta=policy.delta, accountant=accountant
    )
    if isinstance(charge, Noiseless) and not policy.allow_non_private:
        reason = "non-private round (dp.mode = none); the device was not started with --allow-non-private"
    elif not isinstance(charge, Noiseless) and config.dp.delta > policy.delta:
        reason = f"the run's dp.delta {config.dp.delta:g} is larger than the device's delta {policy.delta:g}"
    elif reason is None and epsilon > policy.max_epsilon:
        reason = f"its epsilon would reach {epsilon:.4f} > max epsilon {policy.max_epsilon:g} (budget spent)"
    return RoundDecision(
        mechanism=mechanism, charge=added, epsilon=epsilon, refusal=reason, on_record=reason is not None
    )


def _central_round(
    budget: ClientBudget, rows: Sequence[ChargeRow], event: GaussianEvent, *, run_id: int, server_round: int
) -> tuple[GaussianEvent | None, str | None]:
    """What a central round adds: the whole run at its first round, nothing later; or why not."""
    if server_round > event.steps:
        return None, f"round {server_round} is beyond the run's {event.steps} announced rounds"
    charged = [row for row in rows if row.run_id == run_id and row.mechanism == DP_FEDAVG]
    if not charged:
        return event, None
    if charge_of(charged[0]) != event:
        return None, "its central-DP settings differ from those charged at the run's first round"
    released = [r for r in budget.releases() if r.run_id == run_id and r.mechanism == DP_FEDAVG]
    if len(released) >= event.steps:
        return None, f"the run already released its {event.steps} announced rounds"
    plausible = implausible_participation(event)
    if len(released) + 1 > plausible:
        return None, (
            f"taking part in {len(released) + 1} of {event.steps} rounds is implausible at the "
            f"announced sample rate {event.sample_rate:g} (at most {plausible} expected): q is understated"
        )
    return None, None


def implausible_participation(event: GaussianEvent) -> int:
    """The most rounds of a central-DP run a device takes part in, unless q is understated.

    Its participation is Binomial(T, q) if the server samples at the rate it announces; more than
    this count (the 1 - 1e-9 quantile) means the server samples the device more often than its
    charge assumes, and the device stops.

    >>> implausible_participation(GaussianEvent(noise_multiplier=1.0, sample_rate=0.01, steps=100))
    11
    """
    return int(stats.binom.ppf(1.0 - 1e-9, event.steps, event.sample_rate))


def commit(budget: ClientBudget, decision: RoundDecision, *, run_id: int, server_round: int) -> None:
    """Record the round's release and its charge in one transaction (call before the reply leaves).

    Raises:
        LedgerError: If the decision is a refusal, or the round is already released.
    """
    if decision.refusal is not None:
        raise LedgerError(f"round {server_round} was refused: {decision.refusal}")
    row = None
    if decision.charge is not None:
        row = ChargeRow(
            run_id=run_id, server_round=server_round, mechanism=mechanism_of(decision.charge),
            params=_params(decision.charge), epsilon=decision.epsilon,
        )  # fmt: skip
    budget.commit_release(
        ReleaseRow(run_id=run_id, server_round=server_round, mechanism=decision.mechanism), row
    )


def dpsgd_history(budget: ClientBudget) -> tuple[PrivacyStep, ...]:
    """The device's DP-SGD charges: the accountant history its trainer continues."""
    return tuple(c for c in (charge_of(row) for row in budget.charges()) if isinstance(c, PrivacyStep))
