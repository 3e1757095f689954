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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants.analysis.rdp import compute_rdp
from scipy import stats

from fedlab.core.config import RunConfig
from fedlab.core.errors import LedgerError
from fedlab.privacy.client_budget import ChargeRow, ClientBudget, RefusalRow, ReleaseRow
from fedlab.privacy.event_accountant import EventAccountant
from fedlab.privacy.events import (
    ANNOUNCED_NOISE_MULTIPLIER,
    ANNOUNCED_ROUNDS,
    ANNOUNCED_SAMPLE_RATE,
    GaussianEvent,
)
from fedlab.privacy.skellam import SKELLAM_RDP_ORDERS, SkellamEvent, SkellamParams
from fedlab.privacy.skellam_release import SERVER_VIEW, server_view_event
from fedlab.training.accounting import epsilon_from_history
from fedlab.training.client_runtime import CalibrationKey, dp_spec, optim_spec
from fedlab.training.local import poisson_plan

DPSGD, DP_FEDAVG, SKELLAM_DDP, NOISELESS = "dpsgd", "dp-fedavg", SERVER_VIEW, "none"
DEFAULT_DELTA = 1e-5
MAX_DELTA = 0.1
DEVICE_RDP_ORDERS: tuple[int, ...] = SKELLAM_RDP_ORDERS
"""Integer orders of a mixed composition (the Skellam bound holds for integer orders only)."""


ChargedEvent = GaussianEvent | SkellamEvent
"""The events a device's charges carry."""


@dataclass(frozen=True, kw_only=True)
class Charge:
    """What one release costs the device: the mechanism it is stored under and its event.

    Attributes:
        mechanism: ``dpsgd`` or ``dp-fedavg`` (a :class:`GaussianEvent`), ``skellam-ddp`` (a
            :class:`SkellamEvent`) or ``none`` (no event: a noiseless release, infinite epsilon).
        event: What the release charges (None for a noiseless one).

    >>> Charge(mechanism=DPSGD, event=GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10))
    Charge(mechanism='dpsgd', event=GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10))
    >>> Charge(mechanism=DPSGD)
    Traceback (most recent call last):
    ...
    ValueError: a dpsgd charge carries a GaussianEvent; got NoneType
    """

    mechanism: str
    event: ChargedEvent | None = None

    def __post_init__(self) -> None:
        wanted = _event_type(self.mechanism)
        if not isinstance(self.event, wanted):
            carries = "no event" if wanted is type(None) else f"a {wanted.__name__}"
            raise ValueError(f"a {self.mechanism} charge carries {carries}; got {type(self.event).__name__}")


def _event_type(mechanism: str) -> type:
    """The type of event a charge of ``mechanism`` carries (NoneType: none); ValueError if unknown."""
    if mechanism in (DPSGD, DP_FEDAVG):
        return GaussianEvent
    if mechanism == SKELLAM_DDP:
        return SkellamEvent
    if mechanism == NOISELESS:
        return type(None)
    raise ValueError(f"unknown mechanism {mechanism!r}")


NOISELESS_CHARGE = Charge(mechanism=NOISELESS)
"""The charge of a noiseless release (``dp.mode = "none"``): its epsilon is infinite."""


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


def charge_of(row: ChargeRow) -> Charge:
    """A stored charge, back as a :class:`Charge`.

    >>> charge_of(ChargeRow(run_id=1, server_round=1, mechanism="dp-fedavg", epsilon=1.0,
    ...                     params={"noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 4})).event
    GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=4)

    Raises:
        LedgerError: On an unknown mechanism or malformed parameters.
    """
    try:
        wanted = _event_type(row.mechanism)
    except ValueError:
        raise LedgerError(f"budget file: unknown mechanism {row.mechanism!r}") from None
    try:
        event: ChargedEvent | None = None
        if wanted is GaussianEvent:
            event = GaussianEvent.from_dict(row.params)
        elif wanted is SkellamEvent:
            event = SkellamEvent.from_dict(row.params)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"budget file: malformed {row.mechanism} charge: {exc}") from None
    return Charge(mechanism=row.mechanism, event=event)


def _rdp(event: ChargedEvent | None, orders: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    if isinstance(event, SkellamEvent):
        return event.rdp(orders)
    if event is None or event.noise_multiplier == 0.0:
        return np.full(orders.shape, math.inf)
    curve = compute_rdp(
        q=event.sample_rate,
        noise_multiplier=event.noise_multiplier,
        steps=event.steps,
        orders=list(orders),
    )
    return np.asarray(curve, dtype=np.float64)


def device_epsilon(charges: Sequence[Charge], *, delta: float, accountant: str = "rdp") -> float:
    """The device's epsilon at ``delta`` after ``charges`` (see the module docstring), >= 0.

    Args:
        charges: Every charge, in order.
        delta: The device's delta, in (0, 1).
        accountant: Opacus accountant (``rdp`` or ``prv``) of a history of ``dpsgd`` charges only.

    >>> event = GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    >>> step = Charge(mechanism=DPSGD, event=event)
    >>> round(device_epsilon([step], delta=1e-5), 6), device_epsilon([], delta=1e-5)
    (7.329111, 0.0)
    >>> device_epsilon([step, NOISELESS_CHARGE], delta=1e-5)
    inf
    """
    if any(c.event is None for c in charges):
        return math.inf
    steps = dpsgd_events(charges)
    sgd = epsilon_from_history(steps, delta=delta, accountant=accountant) if steps else 0.0
    if len(steps) == len(charges):
        return max(0.0, sgd)
    orders = np.asarray(DEVICE_RDP_ORDERS, dtype=np.float64)
    total = np.sum([_rdp(c.event, orders) for c in charges], axis=0)
    composed, _ = rdp_privacy_accountant.compute_epsilon(orders, total, delta)
    return max(0.0, sgd, float(composed))


def dpsgd_events(charges: Sequence[Charge]) -> tuple[GaussianEvent, ...]:
    """The events of the ``dpsgd`` charges among ``charges``, in order (the DP-SGD history)."""
    return tuple(c.event for c in charges if c.mechanism == DPSGD and isinstance(c.event, GaussianEvent))


class DeviceAccountant(EventAccountant[Charge]):
    """The device's charges as an accountant: :func:`device_epsilon` over them, and its budget check.

    Each (charges, delta) is computed once, so :meth:`epsilon_after` and :meth:`would_exceed` of
    the same round cost one computation.

    Args:
        charges: The charges spent so far, in order.
        accountant: Opacus accountant of a ``dpsgd``-only history (``rdp`` or ``prv``).

    >>> event = GaussianEvent(noise_multiplier=1.5, sample_rate=0.04, steps=2250)
    >>> step = Charge(mechanism=DPSGD, event=event)
    >>> acc = DeviceAccountant([step])
    >>> acc.would_exceed(max_epsilon=8.0, delta=1e-5), acc.would_exceed(step, max_epsilon=8.0, delta=1e-5)
    (False, True)
    """

    name = "device"
    event_type = Charge

    def __init__(self, charges: Sequence[Charge] = (), *, accountant: str = "rdp") -> None:
        self._charges = list(charges)
        self._accountant = accountant
        self._epsilons: dict[tuple[tuple[Charge, ...], float], float] = {}

    def compose(self, event: Charge) -> None:
        """Adds one charge (TypeError unless it is a :class:`Charge`)."""
        self.refuse_unsupported(event)
        self._charges.append(event)

    def epsilon(self, *, delta: float) -> float:
        """The device's epsilon at ``delta`` after every charge so far."""
        return self._epsilon_of(tuple(self._charges), delta)

    def epsilon_after(self, *events: Charge, delta: float) -> float:
        """The device's epsilon at ``delta`` if ``events`` were charged after every charge so far."""
        for event in events:
            self.refuse_unsupported(event)
        return self._epsilon_of((*self._charges, *events), delta)

    def events(self) -> tuple[Charge, ...]:
        """Every charge so far, in order."""
        return tuple(self._charges)

    def fresh(self) -> DeviceAccountant:
        """An accountant with no charges and the same Opacus accountant."""
        return DeviceAccountant(accountant=self._accountant)

    def _epsilon_of(self, charges: tuple[Charge, ...], delta: float) -> float:
        key = (charges, delta)
        if key not in self._epsilons:
            self._epsilons[key] = device_epsilon(charges, delta=delta, accountant=self._accountant)
        return self._epsilons[key]


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
        return NOISELESS_CHARGE
    if dp.dpsgd:
        spec = dp_spec(config, num_examples, calibrated)
        assert spec is not None
        rate, steps = poisson_plan(num_examples, optim_spec(config))
        step = GaussianEvent(noise_multiplier=spec.noise_multiplier, sample_rate=rate, steps=steps)
        return Charge(mechanism=DPSGD, event=step)
    if dp.central:
        return Charge(mechanism=DP_FEDAVG, event=central_event(round_values or {}))
    if not isinstance(encoding, SkellamParams):
        raise ValueError("a distributed-DP round must announce its Skellam encoding")
    return Charge(mechanism=SKELLAM_DDP, event=server_view_event(encoding))


def central_event(values: Mapping[str, Any]) -> GaussianEvent:
    """The whole run's event from a central-DP round's config (ValueError with the reason if malformed).

    >>> central_event({"noise-multiplier": 1.0, "sample-rate": 0.1, "rounds": 20})
    GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=20)
    """
    raw = [values.get(key) for key in (ANNOUNCED_NOISE_MULTIPLIER, ANNOUNCED_SAMPLE_RATE, ANNOUNCED_ROUNDS)]
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
    run_id: int,
    server_round: int,
    charge: Charge,
    run_delta: float | None = None,
    accountant: str = "rdp",
) -> RoundDecision:
    """Apply the device's rule to one round whose release would charge ``charge``.

    ``run_delta`` is the delta the run announced (None: none announced); ``accountant`` the Opacus
    accountant of a ``dpsgd``-only history (the run's ``dp.accountant`` under DP-SGD).

    Refuses a round already released (never twice; the only refusal not kept on record), a
    noiseless round without ``allow_non_private``, a run whose announced delta exceeds the device's,
    a central round beyond the run's announced rounds or with other settings than the run's first,
    and a round after which the device's epsilon would exceed ``max_epsilon``
    (:meth:`DeviceAccountant.would_exceed`).

    Stops a server (misconfigured or malicious) from making the device release more than its owner
    allowed: whatever delta, DP mode, round numbers or history the server claims, the planned
    epsilon is the device's own, at its own delta. Does not stop a server that breaks a trust the
    event states (central DP: not adding its noise, or leaking who was sampled), nor the owner
    deleting the budget file.
    """
    rows = budget.charges()
    spent = DeviceAccountant([charge_of(row) for row in rows], accountant=accountant)
    if budget.released(run_id, server_round):
        current = spent.epsilon(delta=policy.delta)
        return RoundDecision(
            mechanism=charge.mechanism, charge=None, epsilon=current, refusal="already released (never twice)"
        )
    added: Charge | None = charge
    reason = None
    if charge.mechanism == DP_FEDAVG:
        added, reason = _central_round(budget, rows, charge, run_id=run_id, server_round=server_round)
    new = [added] if added else []
    epsilon = spent.epsilon_after(*new, delta=policy.delta)
    noiseless = charge.mechanism == NOISELESS
    if noiseless and not policy.allow_non_private:
        reason = "non-private round (dp.mode = none); the device was not started with --allow-non-private"
    elif not noiseless and run_delta is not None and run_delta > policy.delta:
        reason = f"the run's dp.delta {run_delta:g} is larger than the device's delta {policy.delta:g}"
    elif reason is None and spent.would_exceed(*new, max_epsilon=policy.max_epsilon, delta=policy.delta):
        reason = f"its epsilon would reach {epsilon:.4f} > max epsilon {policy.max_epsilon:g} (budget spent)"
    return RoundDecision(
        mechanism=charge.mechanism,
        charge=added,
        epsilon=epsilon,
        refusal=reason,
        on_record=reason is not None,
    )


def _central_round(
    budget: ClientBudget, rows: Sequence[ChargeRow], charge: Charge, *, run_id: int, server_round: int
) -> tuple[Charge | None, str | None]:
    """What a central round adds: the whole run at its first round, nothing later; or why not."""
    event = charge.event
    assert isinstance(event, GaussianEvent)
    if server_round > event.steps:
        return None, f"round {server_round} is beyond the run's {event.steps} announced rounds"
    charged = [row for row in rows if row.run_id == run_id and row.mechanism == DP_FEDAVG]
    if not charged:
        return charge, None
    if charge_of(charged[0]) != charge:
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
        event = decision.charge.event
        row = ChargeRow(
            run_id=run_id, server_round=server_round, mechanism=decision.charge.mechanism,
            params={} if event is None else event.to_dict(), epsilon=decision.epsilon,
        )  # fmt: skip
    budget.commit_release(
        ReleaseRow(run_id=run_id, server_round=server_round, mechanism=decision.mechanism), row
    )


def keep_refusal(
    budget: ClientBudget, decision: RoundDecision, policy: DevicePolicy, *, run_id: int, server_round: int
) -> None:
    """Record a refused round in the budget file when the rule says it belongs there (``on_record``)."""
    if decision.refusal is None or not decision.on_record:
        return
    budget.record_refusal(
        RefusalRow(
            run_id=run_id, server_round=server_round, planned_epsilon=decision.epsilon,
            max_epsilon=policy.max_epsilon, reason=decision.refusal,
        )
    )  # fmt: skip


def taken_dpsgd_charge(*, before: Sequence[GaussianEvent], after: Sequence[GaussianEvent]) -> Charge | None:
    """The DP-SGD charge of the steps a round took, from its history before and after (None: none).

    >>> before = (GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=10),)
    >>> after = (GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=14),)
    >>> taken_dpsgd_charge(before=before, after=after).event.steps
    4
    """
    spent = sum(s.steps for s in after) - sum(s.steps for s in before)
    if spent <= 0 or not after:
        return None
    return Charge(mechanism=DPSGD, event=replace(after[-1], steps=spent))


def dpsgd_history(budget: ClientBudget) -> tuple[GaussianEvent, ...]:
    """The device's DP-SGD charges: the accountant history its trainer continues."""
    return dpsgd_events([charge_of(row) for row in budget.charges()])
