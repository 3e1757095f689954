"""Differential privacy: events, accountants, calibration and the privacy ledger.

Mechanisms describe what they released as :class:`GaussianEvent` records;
accountants (:class:`PldAccountant`, tight and the default, :class:`RdpAccountant`,
or the PRV accountant of :mod:`fedlab.privacy.prv`) compose them into an (epsilon,
delta) guarantee, say which events they compose (``supports``) and answer the budget
check ``would_exceed`` (:class:`~fedlab.privacy.event_accountant.EventAccountant`);
:func:`calibrate` finds a noise multiplier for any accountant and event factory
that never overshoots the budget, and :func:`calibrate_noise_multiplier` is it for
the Gaussian mechanism. Float DP arguments are keyword-only everywhere.

The privacy ledger (:class:`PrivacyLedger`, an SQLite file in the run directory)
is the durable record of what was spent. It guarantees that:

- each round is committed atomically: its round row and all its client and
  federation rows are present together or not at all, even if the writer is
  killed (SIGKILL, power loss) mid-commit;
- a round is durable when :meth:`PrivacyLedger.commit_round` returns (WAL,
  ``synchronous=FULL``), so committing before releasing a round's result means no
  released result is ever missing from the ledger;
- rounds are contiguous (1, 2, 3, ...) and never committed twice
  (:meth:`PrivacyLedger.last_round` says where a run stopped, and a resumed run
  commits from the round after it);
- an existing ledger is never overwritten, and opening checks it is a consistent
  fedlab ledger (:class:`~fedlab.core.errors.LedgerError` otherwise);
- a client's total epsilon is the maximum of its recorded cumulative epsilons,
  never under-counted.

It does not protect against deliberate edits of the file or storage that lies
about fsync. This package imports numpy/scipy (via ``dp_accounting``), sqlite3
and :mod:`fedlab.core` only: no torch, opacus or flwr.
"""

from fedlab.privacy.accountants import (
    ACCOUNTANTS,
    Accountant,
    PldAccountant,
    RdpAccountant,
    RepeatedEventAccountant,
    epsilon_of,
    make_accountant,
)
from fedlab.privacy.calibration import calibrate, calibrate_noise_multiplier
from fedlab.privacy.event_accountant import EventAccountant
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.ledger import (
    ClientSpend,
    ClientTotal,
    FederationSpend,
    FederationTotal,
    PrivacyLedger,
    RoundRecord,
    read_ledger_summary,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "ClientSpend",
    "ClientTotal",
    "EventAccountant",
    "FederationSpend",
    "FederationTotal",
    "GaussianEvent",
    "PldAccountant",
    "PrivacyLedger",
    "RdpAccountant",
    "RepeatedEventAccountant",
    "RoundRecord",
    "calibrate",
    "calibrate_noise_multiplier",
    "epsilon_of",
    "make_accountant",
    "read_ledger_summary",
]
