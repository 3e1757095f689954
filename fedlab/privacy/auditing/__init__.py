"""Empirical privacy auditing: epsilon lower bounds and estimates from canaries.

An audit inserts canaries (records, or canary clients) into a run, scores each
canary from what the run released, and turns the scores into a statement about
epsilon. Three routes, all for add/remove adjacency of one canary (a canary is
either in the run or not) and an adversary who sees whatever the scores are
computed from (the final model, or every released aggregate):

- **One run** (Steinke, Nasr & Jagielski 2023, "Privacy auditing with one (1)
  training run", NeurIPS): m canaries, each included independently with
  probability 1/2; the auditor guesses the membership of the k+ highest and the
  k- lowest scores and abstains on the rest. :func:`one_run_epsilon_lower_bound`
  turns the number of correct guesses into an epsilon that is ruled out at a
  confidence level; :func:`one_run_audit` does the whole audit from scores.
- **One run, f-DP** (Mahloujifar, Melis & Chaudhuri 2025, "Auditing f-differential privacy in
  one run", ICML): the same game, tested against a whole trade-off curve instead of one
  (epsilon, delta) pair, which is far tighter for Gaussian noise. :func:`fdp_rejects` tests one
  trade-off; :func:`fdp_audit` finds the smallest noise scale of a family of claims
  (:class:`EventsFamily`: the run's own Gaussian releases with scaled noise) that the canaries
  reject. Rejecting scale 1 refutes the claimed trade-off for any mechanism.
- **Threshold attack with Clopper-Pearson intervals** (Jagielski, Ullman & Oprea
  2020, "Auditing differentially private machine learning: how private is
  private SGD?", NeurIPS): :func:`epsilon_lower_bound_from_rates` for one
  threshold, :func:`canary_epsilon_lower_bound` for the best threshold over
  inserted and held-out canary statistics, valid for all thresholds at once.
- **Canary-client estimate** (Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar
  2024, "One-shot empirical privacy estimation for federated learning", ICLR):
  :func:`canary_epsilon_estimate` fits a Gaussian to the cosines of inserted and
  of held-out canary directions and reports the epsilon of those two Gaussians
  (:func:`two_gaussian_epsilon`). This is an estimate, not a bound.

A lower bound says the run is *not* (epsilon, delta)-DP for any smaller epsilon,
except with probability at most 1 - confidence: it catches an implementation or
accounting that spends more privacy than claimed. It never proves a claimed
epsilon holds. The one-run bound is rigorous for any algorithm; the
Clopper-Pearson bounds treat each canary's statistic as an independent trial,
which is exact for separate runs and, within one run, holds only as far as the
canaries do not interact (Andrew et al. argue it asymptotically for random
high-dimensional canaries under the Gaussian mechanism).
"""

from fedlab.privacy.auditing.fdp import FdpResult, MechanismFamily, fdp_audit, fdp_p_value, fdp_rejects
from fedlab.privacy.auditing.gaussians import (
    canary_epsilon_estimate,
    gdp_epsilon,
    two_gaussian_delta,
    two_gaussian_epsilon,
)
from fedlab.privacy.auditing.one_run import (
    OneRunResult,
    count_correct_guesses,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
)
from fedlab.privacy.auditing.rates import (
    CanaryBound,
    canary_epsilon_lower_bound,
    clopper_pearson,
    epsilon_lower_bound_from_rates,
)
from fedlab.privacy.auditing.tradeoffs import (
    EventsFamily,
    GaussianTradeoff,
    ProfileTradeoff,
    Tradeoff,
    events_tradeoff,
)

__all__ = [
    "CanaryBound",
    "EventsFamily",
    "FdpResult",
    "GaussianTradeoff",
    "MechanismFamily",
    "OneRunResult",
    "ProfileTradeoff",
    "Tradeoff",
    "canary_epsilon_estimate",
    "canary_epsilon_lower_bound",
    "clopper_pearson",
    "count_correct_guesses",
    "epsilon_lower_bound_from_rates",
    "events_tradeoff",
    "fdp_audit",
    "fdp_p_value",
    "fdp_rejects",
    "gdp_epsilon",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_guesses",
    "one_run_p_value",
    "two_gaussian_delta",
    "two_gaussian_epsilon",
]
