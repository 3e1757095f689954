"""PRV accountant: known answers against the closed form and dp_accounting's PLD, error bounds, state."""

import json
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant

from fedlab.privacy.accountants import ACCOUNTANTS, Accountant, epsilon_of, make_accountant
from fedlab.privacy.analytic import gaussian_delta, gaussian_epsilon
from fedlab.privacy.calibration import calibrate_noise_multiplier
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.prv import PrvAccountant


def event(z: float, q: float, steps: int) -> GaussianEvent:
    return GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps)


def prv_of(*events: GaussianEvent) -> PrvAccountant:
    acc = PrvAccountant()
    for e in events:
        acc.compose(e)
    return acc


def reference_pld(events, *, interval: float) -> pld_privacy_accountant.PLDAccountant:
    """dp_accounting's own PLD, one composition per event (an independent route)."""
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=interval)
    for e in events:
        sampled = dp_accounting.PoissonSampledDpEvent(
            e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)
        )
        acc.compose(dp_accounting.SelfComposedDpEvent(sampled, e.steps))
    return acc


# --- known answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "steps", "delta"), [(1.0, 4, 1e-5), (2.0, 4, 1e-5), (0.8, 1, 1e-8), (5.0, 1000, 1e-6)]
)
def test_unsampled_gaussian_is_bracketed_by_the_error_bounds(z: float, steps: int, delta: float):
    exact = gaussian_epsilon(noise_multiplier=z, delta=delta, steps=steps)
    acc = prv_of(event(z, 1.0, steps))
    low, high = acc.epsilon_bounds(delta=delta)
    assert low <= exact <= high
    assert high <= exact * 1.004 + 1e-4  # relative error 2e-3 of the default settings, with margin
    assert acc.epsilon(delta=delta) == high


def test_unsampled_gaussian_delta_is_an_upper_estimate():
    acc = prv_of(event(2.0, 1.0, 4))
    for epsilon in (0.5, 2.0, 4.0):
        exact = gaussian_delta(noise_multiplier=2.0, epsilon=epsilon, steps=4)
        assert exact <= acc.delta(epsilon=epsilon) <= exact * 1.05


# Settings from REFERENCES.md and the existing accountant tests, with dp_accounting's PLD at a fine grid
# (1e-5; measured values in the comments).
KNOWN = [
    (1.0, 1e-3, 2000, 1e-6),  # cross-device regime: PLD 0.25219, PRV 0.25259
    (1.5, 0.04, 2250, 1e-5),  # Opacus' setting: PLD 6.7688, PRV 6.7821 (RDP 7.3285)
    (0.8, 0.01, 1000, 1e-5),  # PLD 3.1410, PRV 3.1457
    (5.0, 1e-3, 2000, 1e-8),  # tiny epsilon: PLD(1e-5) 0.040254, PRV 0.040342 (PLD(1e-4) 0.04107)
]


@pytest.mark.parametrize(("z", "q", "steps", "delta"), KNOWN)
def test_sampled_gaussian_agrees_with_dp_accounting_pld(z: float, q: float, steps: int, delta: float):
    events = [event(z, q, steps)]
    pld = reference_pld(events, interval=1e-5 if z > 1.4 and q < 0.01 else 1e-4).get_epsilon(delta)
    low, high = prv_of(*events).epsilon_bounds(delta=delta)
    assert high == pytest.approx(pld, rel=0.005)
    assert low <= pld  # PLD is an upper bound of the exact value, which is >= our lower bound


def test_heterogeneous_events_agree_with_dp_accounting_pld():
    events = [event(1.1, 0.01, 300), event(0.9, 0.02, 100), event(2.0, 1.0, 3), event(1.1, 0.01, 200)]
    pld = reference_pld(events, interval=1e-4).get_epsilon(1e-5)
    low, high = prv_of(*events).epsilon_bounds(delta=1e-5)
    assert high == pytest.approx(pld, rel=0.005)
    assert low <= pld


def test_epsilon_of_delta_of_epsilon_is_consistent():
    acc = prv_of(event(1.0, 0.01, 1000))
    for epsilon in (0.3, 1.0, 4.0):
        delta = acc.delta(epsilon=epsilon)
        assert 0.0 < delta < 1.0
        # both are upper estimates, so they agree within the error bounds
        assert acc.epsilon(delta=delta) == pytest.approx(epsilon, rel=0.006, abs=2e-4)


# --- composition routes ------------------------------------------------------------------------


def test_one_event_at_a_time_equals_summed_steps_and_order_does_not_matter():
    one_by_one = prv_of(*[event(1.1, 0.01, 20)] * 50)
    summed = prv_of(event(1.1, 0.01, 1000))
    assert one_by_one.epsilon(delta=1e-5) == summed.epsilon(delta=1e-5)
    a, b = event(1.1, 0.01, 300), event(0.9, 0.02, 100)
    assert prv_of(a, b, a).epsilon(delta=1e-5) == pytest.approx(
        prv_of(b, event(1.1, 0.01, 600)).epsilon(delta=1e-5), rel=1e-9
    )


def test_cached_epsilon_is_invalidated_by_compose():
    acc = prv_of(event(1.0, 0.01, 100))
    first = acc.epsilon(delta=1e-5)
    assert acc.epsilon(delta=1e-5) == first
    acc.compose(event(1.0, 0.01, 100))
    assert acc.epsilon(delta=1e-5) > first


# --- the protocol, state and edge cases -------------------------------------------------------------


def test_registered_and_implements_the_protocol():
    assert "prv" in ACCOUNTANTS
    acc = make_accountant("prv")
    assert isinstance(acc, PrvAccountant) and isinstance(acc, Accountant)
    assert acc.name == "prv"
    e = event(1.0, 0.01, 100)
    assert epsilon_of([e], delta=1e-5, accountant="prv") == prv_of(e).epsilon(delta=1e-5)


def test_state_dict_round_trips_through_json():
    acc = PrvAccountant(relative_error=1e-3)
    for e in (event(1.1, 0.01, 300), event(0.9, 0.02, 100)):
        acc.compose(e)
    state = json.loads(json.dumps(acc.state_dict()))
    restored = PrvAccountant()
    restored.load_state_dict(state)
    assert restored.events() == acc.events()
    assert restored.state_dict() == acc.state_dict()
    assert restored.epsilon(delta=1e-5) == acc.epsilon(delta=1e-5)


def test_load_state_dict_refuses_other_kind_or_malformed_state():
    state = prv_of(event(1.0, 0.1, 1)).state_dict()
    with pytest.raises(ValueError, match="pld"):
        PrvAccountant().load_state_dict(make_accountant("pld").state_dict())
    with pytest.raises(ValueError, match="version"):
        PrvAccountant().load_state_dict({**state, "version": 99})
    with pytest.raises(ValueError):
        PrvAccountant().load_state_dict({**state, "events": [{"noise_multiplier": 1.0}]})
    with pytest.raises(ValueError, match="relative_error"):
        PrvAccountant().load_state_dict({**state, "settings": {"relative_error": 2.0}})


def test_empty_and_noiseless():
    acc = PrvAccountant()
    assert acc.epsilon(delta=1e-5) == 0.0
    assert acc.delta(epsilon=1.0) == 0.0
    assert acc.events() == ()
    acc.compose(event(1.0, 0.01, 10))
    acc.compose(event(0.0, 0.01, 1))
    assert acc.epsilon(delta=1e-5) == math.inf
    assert acc.delta(epsilon=10.0) == 1.0


def test_float_arguments_are_keyword_only_and_validated():
    acc = prv_of(event(1.0, 0.01, 10))
    with pytest.raises(TypeError):
        acc.epsilon(1e-5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        PrvAccountant(1e-3)  # type: ignore[misc]
    for bad_delta in (0.0, 1.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match="delta"):
            acc.epsilon(delta=bad_delta)
    for bad_epsilon in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="epsilon"):
            acc.delta(epsilon=bad_epsilon)
    with pytest.raises(TypeError):
        acc.compose({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="relative_error"):
        PrvAccountant(relative_error=0.0)


def test_epsilon_is_about_zero_when_delta_is_met_without_any_loss():
    # One step at q=1e-3 with z=5: delta(0) < 1e-3, so the exact epsilon is 0; the upper
    # estimate adds only its rounding slack.
    low, high = prv_of(event(5.0, 1e-3, 1)).epsilon_bounds(delta=1e-3)
    assert low == 0.0
    assert 0.0 <= high < 1e-5


def test_calibration_with_prv_never_overshoots():
    z = calibrate_noise_multiplier(
        target_epsilon=2.0, delta=1e-5, sample_rate=0.02, steps=500, accountant="prv"
    )
    assert epsilon_of([event(z, 0.02, 500)], delta=1e-5, accountant="prv") <= 2.0
    assert epsilon_of([event(z * 0.995, 0.02, 500)], delta=1e-5, accountant="prv") > 2.0
