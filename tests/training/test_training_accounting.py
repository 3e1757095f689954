import math

import pytest
from training_helpers import dp_accounting_rdp_epsilon

from fedlab.privacy.events import GaussianEvent
from fedlab.training import OpacusAccountant, epsilon_from_history, noise_multiplier_for_epsilon
from fedlab.training.accounting import history_from_opacus, opacus_history


def step(z, q, t):
    return GaussianEvent(noise_multiplier=z, sample_rate=q, steps=t)


def test_known_answer_from_opacus():
    eps = epsilon_from_history([step(1.5, 0.04, 2250)], delta=1e-5, accountant="rdp")
    assert eps == pytest.approx(7.32911117143, abs=1e-9)


@pytest.mark.parametrize(
    "history",
    [
        [step(1.5, 0.04, 2250)],
        [step(1.1, 32 / 144, 40)],
        [step(0.8, 0.01, 500), step(2.0, 0.1, 30)],
    ],
)
def test_rdp_agrees_with_dp_accounting(history):
    ours = epsilon_from_history(history, delta=1e-5, accountant="rdp")
    reference = dp_accounting_rdp_epsilon(history, 1e-5)
    assert ours == pytest.approx(reference, rel=0.01)


def test_prv_is_no_looser_than_rdp():
    history = [step(1.1, 32 / 144, 40)]
    prv = epsilon_from_history(history, delta=1e-5, accountant="prv")
    assert 0.0 < prv <= epsilon_from_history(history, delta=1e-5, accountant="rdp")


def test_empty_history_and_zero_noise():
    assert epsilon_from_history([], delta=1e-5, accountant="rdp") == 0.0
    for accountant in ("rdp", "prv"):
        assert epsilon_from_history([step(0.0, 0.1, 3)], delta=1e-5, accountant=accountant) == math.inf


def test_more_steps_never_cost_less():
    one = epsilon_from_history([step(1.0, 0.1, 10)], delta=1e-5, accountant="rdp")
    two = epsilon_from_history([step(1.0, 0.1, 10), step(1.0, 0.1, 10)], delta=1e-5, accountant="rdp")
    assert two > one
    assert two == pytest.approx(epsilon_from_history([step(1.0, 0.1, 20)], delta=1e-5, accountant="rdp"))


@pytest.mark.parametrize(
    ("target", "q", "steps"),
    [(0.5, 0.01, 1000), (1.0, 32 / 144, 40), (3.0, 0.05, 200), (8.0, 0.2, 50)],
)
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibrated_noise_never_overshoots(target, q, steps):
    z = noise_multiplier_for_epsilon(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps)
    spent = epsilon_from_history([step(z, q, steps)], delta=1e-5, accountant="rdp")
    assert spent <= target
    assert spent >= target - 0.05  # and not wastefully over-noised


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_calibration_with_prv_never_overshoots():
    z = noise_multiplier_for_epsilon(
        target_epsilon=2.0, delta=1e-5, sample_rate=0.1, steps=100, accountant="prv"
    )
    assert epsilon_from_history([step(z, 0.1, 100)], delta=1e-5, accountant="prv") <= 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"delta": 1.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"accountant": "gdp"},
    ],
)
def test_calibration_rejects_bad_arguments(kwargs):
    args = {
        "target_epsilon": 1.0,
        "delta": 1e-5,
        "sample_rate": 0.1,
        "steps": 10,
        "accountant": "rdp",
    } | kwargs
    with pytest.raises(ValueError):
        noise_multiplier_for_epsilon(**args)


@pytest.mark.parametrize(("z", "q", "t"), [(-1.0, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.1, 1), (1.0, 0.1, 0)])
def test_a_dpsgd_step_validates(z, q, t):
    with pytest.raises(ValueError):
        step(z, q, t)


def test_float_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        GaussianEvent(1.0, 0.1, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        epsilon_from_history([], 1e-5, "rdp")  # type: ignore[misc]


def test_epsilon_is_never_negative_even_at_a_huge_delta():
    # Opacus' RDP conversion reports -2.30 for this history at delta 0.9.
    history = [step(5.0, 0.01, 10)]
    assert epsilon_from_history(history, delta=0.9, accountant="rdp") == 0.0
    assert epsilon_from_history(history, delta=1e-5, accountant="rdp") > 0.0


def test_opacus_histories_convert_both_ways_at_the_boundary():
    history = [step(1.1, 0.25, 40), step(0.8, 0.01, 3)]
    assert opacus_history(history) == [(1.1, 0.25, 40), (0.8, 0.01, 3)]
    assert history_from_opacus(opacus_history(history)) == tuple(history)


def test_calibration_recovers_opacus_known_answer():
    # sigma 1.5 gives 7.32911117143 (Opacus RDP, q 0.04, 2250 steps, delta 1e-5); Opacus' search
    # stops within 0.01 below the target, so the noise multiplier is 1.5 within 0.3%.
    z = noise_multiplier_for_epsilon(target_epsilon=7.32911117143, delta=1e-5, sample_rate=0.04, steps=2250)
    assert z == pytest.approx(1.5, rel=3e-3) and z >= 1.5 * (1 - 1e-9)


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_the_opacus_accountant_budget_check_matches_its_epsilon(name):
    acc = OpacusAccountant(name)
    first, second = step(1.1, 0.05, 100), step(1.1, 0.05, 100)
    after_one = acc.epsilon_after(first, delta=1e-5)
    assert acc.events() == ()  # asking composes nothing
    assert not acc.would_exceed(first, max_epsilon=after_one * 1.0001, delta=1e-5)
    assert acc.would_exceed(first, max_epsilon=after_one * 0.9999, delta=1e-5)
    acc.compose(first)
    assert acc.epsilon(delta=1e-5) == after_one
    # One more identical release costs what 200 steps at once cost (composition), and more than 100.
    after_two = acc.epsilon_after(second, delta=1e-5)
    assert after_two == pytest.approx(
        epsilon_from_history([step(1.1, 0.05, 200)], delta=1e-5, accountant=name), rel=1e-3
    )
    assert after_two > after_one
    assert acc.would_exceed(step(0.0, 0.05, 1), max_epsilon=1e12, delta=1e-5)  # noiseless: infinite


def test_the_opacus_accountant_composes_gaussian_events_only():
    acc = OpacusAccountant()
    assert acc.supports(step(1.0, 0.1, 1)) and not acc.supports((1.0, 0.1, 1))
    with pytest.raises(TypeError):
        acc.compose((1.0, 0.1, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OpacusAccountant("pld")
    with pytest.raises(ValueError, match="max_epsilon"):
        acc.would_exceed(step(1.0, 0.1, 1), max_epsilon=0.0, delta=1e-5)
