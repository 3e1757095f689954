"""Property tests (hypothesis) of the accountants and calibration over random (sigma, q, steps, delta).

Ranges: sigma in [0.5, 5], q in [1e-3, 1] and delta in [1e-8, 1e-3] (log-uniform), steps in [1, 2000].
Example counts are modest so the file runs in well under a minute; the ``slow`` sweep repeats the
comparisons with many more examples.
"""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedlab.privacy.accountants import PldAccountant, RdpAccountant
from fedlab.privacy.analytic import gaussian_epsilon
from fedlab.privacy.calibration import MIN_NOISE_MULTIPLIER, calibrate_noise_multiplier
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.prv import PrvAccountant


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


sigmas = st.floats(0.5, 5.0)
rates = log_uniform(1e-3, 1.0).map(lambda q: min(q, 1.0))
step_counts = log_uniform(1, 2000).map(lambda t: max(1, min(2000, round(t))))
deltas = log_uniform(1e-8, 1e-3)

FAST = settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SWEEP = settings(
    max_examples=70, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def event(z: float, q: float, steps: int) -> GaussianEvent:
    return GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps)


def reference_pld(events, *, interval: float) -> pld_privacy_accountant.PLDAccountant:
    """dp_accounting's own PLD, one composition per event (no merging)."""
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    for e in events:
        sampled = dp_accounting.PoissonSampledDpEvent(
            e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(sampled, e.steps))
    return acc


def pld_interval(events, delta: float) -> float:
    """A PLD grid fine enough to be within ~0.1% of the exact epsilon but affordable.

    PLD's pessimism is about an absolute amount per composition, so a large epsilon tolerates a
    coarse grid (and a fine one would take seconds) while a small epsilon needs a fine one.
    """
    coarse = reference_pld(events, interval=1e-3).get_epsilon(delta)
    return 1e-3 if coarse > 10 else (1e-4 if coarse > 0.5 else 1e-5)


def ours(kind: str, events, interval: float = 1e-4):
    acc = {"pld": lambda: PldAccountant(value_discretization_interval=interval), "prv": PrvAccountant}.get(
        kind, RdpAccountant
    )()
    for e in events:
        acc.compose(e)
    return acc


# --- PLD against dp_accounting, PRV against PLD -------------------------------------------------------


def check_pld_matches_dp_accounting(z, q, steps, split, delta):
    # Ours merges equal events; the reference composes each part: two routes, one answer.
    first = max(1, round(steps * split))
    events = [event(z, q, first)] + ([event(z, q, steps - first)] if steps > first else [])
    interval = pld_interval(events, delta)
    reference = reference_pld(events, interval=interval).get_epsilon(delta)
    mine = ours("pld", events, interval).epsilon(delta=delta)
    assert mine == pytest.approx(reference, rel=0.01, abs=1e-9)


def check_prv_matches_pld(z, q, steps, delta):
    events = [event(z, q, steps)]
    interval = pld_interval(events, delta)
    pld = reference_pld(events, interval=interval).get_epsilon(delta)
    low, high = ours("prv", events).epsilon_bounds(delta=delta)
    # within 1% of PLD (plus PLD's own slack at tiny epsilons, about interval * 10)
    assert high == pytest.approx(pld, rel=0.01, abs=10 * interval)
    # PLD is an upper bound on the exact epsilon, which is above PRV's lower bound
    assert low <= pld + 1e-12
    # and PRV's upper estimate is never below PLD by more than PLD's discretization slack
    assert high >= pld - 10 * interval - 1e-3 * pld


@FAST
@given(z=sigmas, q=rates, steps=step_counts, split=st.floats(0.1, 0.9), delta=deltas)
def test_pld_agrees_with_dp_accounting_within_one_percent(z, q, steps, split, delta):
    check_pld_matches_dp_accounting(z, q, steps, split, delta)


@FAST
@given(z=sigmas, q=rates, steps=step_counts, delta=deltas)
def test_prv_agrees_with_pld_within_one_percent(z, q, steps, delta):
    check_prv_matches_pld(z, q, steps, delta)


# --- the closed form at q = 1 ---------------------------------------------------------------------


@settings(max_examples=15, deadline=None, derandomize=True)
@given(z=sigmas, steps=step_counts, delta=deltas)
def test_each_accountant_matches_the_analytic_gaussian_without_sampling(z, steps, delta):
    exact = gaussian_epsilon(noise_multiplier=z, delta=delta, steps=steps)
    events = [event(z, 1.0, steps)]
    pld = ours("pld", events, 1e-4).epsilon(delta=delta)
    # dp_accounting finds epsilon on the discretized PLD to ~1e-9 relative (seen: 2e-6 below at 430)
    assert exact * (1 - 1e-8) - 1e-9 <= pld <= exact * 1.001 + 1e-4
    low, high = ours("prv", events).epsilon_bounds(delta=delta)
    assert low <= exact <= high
    assert high <= exact * 1.005 + 2e-4
    rdp = ours("rdp", events).epsilon(delta=delta)
    assert rdp >= exact - 1e-9  # an upper bound
    assert rdp <= exact * 1.5 + 0.1  # and not absurdly loose


# --- calibration ---------------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, derandomize=True)
@given(target=log_uniform(0.5, 8.0), q=rates, steps=step_counts, delta=deltas)
def test_calibrated_noise_never_overshoots_the_target(target, q, steps, delta):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q, steps=steps)
    spent = PldAccountant()
    spent.compose(event(z, q, steps))
    assert spent.epsilon(delta=delta) <= target
    if z > MIN_NOISE_MULTIPLIER:  # and it is tight: a bit less noise overshoots
        tighter = PldAccountant()
        tighter.compose(event(z * (1 - 2e-3), q, steps))
        assert tighter.epsilon(delta=delta) > target


# --- monotonicity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pld", "prv", "rdp"])
@settings(max_examples=6, deadline=None, derandomize=True)
@given(z=sigmas, q=rates, steps=st.integers(1, 1000), delta=deltas)
def test_epsilon_grows_with_steps_and_shrinks_with_sigma(kind, z, q, steps, delta):
    def eps(z_: float, steps_: int) -> float:
        return ours(kind, [event(z_, q, steps_)], 1e-3).epsilon(delta=delta)

    base = eps(z, steps)
    more_steps, more_noise = eps(z, 2 * steps), eps(1.5 * z, steps)
    assert more_steps >= base
    assert more_noise <= base
    if base > 0.05:  # away from epsilon = 0 the change is strict
        assert more_steps > base > more_noise


# --- state --------------------------------------------------------------------------------------


event_lists = st.lists(st.builds(event, sigmas, rates, st.integers(1, 500)), min_size=1, max_size=3)


@pytest.mark.parametrize("kind", ["pld", "prv", "rdp"])
@settings(max_examples=5, deadline=None, derandomize=True)
@given(events=event_lists, delta=deltas)
def test_state_save_and_load_round_trips(kind, events, delta):
    acc = ours(kind, events, 1e-3)
    state = json.loads(json.dumps(acc.state_dict()))
    restored = ours(kind, [], 1e-4 if kind == "pld" else 1e-3)
    restored.load_state_dict(state)
    assert restored.events() == acc.events() == tuple(events)
    assert restored.state_dict() == acc.state_dict()
    assert restored.epsilon(delta=delta) == acc.epsilon(delta=delta)


# --- the bigger sweep -----------------------------------------------------------------------------


@pytest.mark.slow
@SWEEP
@given(z=sigmas, q=rates, steps=step_counts, delta=deltas)
def test_sweep_prv_agrees_with_pld(z, q, steps, delta):
    check_prv_matches_pld(z, q, steps, delta)


@pytest.mark.slow
@SWEEP
@given(z=sigmas, q=rates, steps=step_counts, split=st.floats(0.1, 0.9), delta=deltas)
def test_sweep_pld_agrees_with_dp_accounting(z, q, steps, split, delta):
    check_pld_matches_dp_accounting(z, q, steps, split, delta)
