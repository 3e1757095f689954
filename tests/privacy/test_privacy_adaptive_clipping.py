"""Adaptive clipping (Andrew et al. 2021): converges from both sides; its count noise is accounted."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from fedlab.privacy.accountants import PldAccountant
from fedlab.privacy.adaptive_clipping import (
    AdaptiveClipState,
    noisy_unclipped_fraction,
    norm_indicator,
    round_event,
    split_noise_multiplier,
    update_clip_norm,
)
from fedlab.privacy.analytic import gaussian_epsilon
from fedlab.privacy.events import GaussianEvent

CLIENTS = 200  # expected clients per round, m


def state_at(clip: float, quantile: float = 0.5, count_noise_std: float = CLIENTS / 20) -> AdaptiveClipState:
    return AdaptiveClipState(
        clip_norm=clip, target_quantile=quantile, learning_rate=0.2, count_noise_std=count_noise_std
    )


def run(state: AdaptiveClipState, norms_of_round, rounds: int, seed: int = 0) -> np.ndarray:
    """Runs the protocol: clients report indicators for the current bound, the server updates it."""
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(rounds):
        norms = norms_of_round(rng)
        indicators = [norm_indicator(update_norm=float(n), clip_norm=state.clip_norm) for n in norms]
        state = update_clip_norm(state, indicators, expected_clients=CLIENTS, rng=rng)
        history.append(state.clip_norm)
    return np.array(history)


def lognormal_norms(rng: np.random.Generator) -> np.ndarray:
    return rng.lognormal(mean=0.0, sigma=0.5, size=CLIENTS)


# --- convergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("start", [0.1, 10.0])
@pytest.mark.parametrize("quantile", [0.5, 0.9])
def test_converges_to_the_true_quantile_from_below_and_above(start: float, quantile: float):
    true_quantile = math.exp(0.5 * norm.ppf(quantile))  # of lognormal(0, 0.5)
    history = run(state_at(start, quantile), lognormal_norms, rounds=250)
    # moves toward the quantile from the start
    assert (history[0] > start) == (start < true_quantile)
    tail = history[-100:]
    assert math.exp(np.mean(np.log(tail))) == pytest.approx(true_quantile, rel=0.03)
    assert np.all(np.abs(np.log(tail / true_quantile)) < 0.12)


def test_with_every_norm_at_one_a_low_bound_grows_and_a_high_bound_shrinks():
    # Flower's wrappers shrink a bound of 0.1 here; ours grows it monotonically until it passes 1.
    ones = lambda rng: np.ones(CLIENTS)  # noqa: E731
    noiseless_low, noiseless_high = state_at(0.1, count_noise_std=0.0), state_at(10.0, count_noise_std=0.0)
    up = run(noiseless_low, ones, rounds=60)
    down = run(noiseless_high, ones, rounds=60)
    first_above = int(np.argmax(up >= 1.0))
    assert first_above > 0 and np.all(np.diff(up[: first_above + 1]) > 0)
    assert np.all(np.abs(np.log(up[first_above:])) <= 0.1 + 1e-12)  # then oscillates around 1
    first_below = int(np.argmax(down <= 1.0))
    assert first_below > 0 and np.all(np.diff(down[: first_below + 1]) < 0)
    # and with count noise it still converges
    noisy = run(state_at(0.1), ones, rounds=150)
    assert np.all(np.abs(np.log(noisy[-50:])) < 0.25)


def test_update_rule_is_the_papers():
    state = state_at(2.0, 0.7, count_noise_std=0.0)
    indicators = [0.5] * 30 + [-0.5] * 10  # 30 of 40 unclipped
    new = update_clip_norm(state, indicators, expected_clients=50, rng=np.random.default_rng(0))
    b = (30 * 0.5 - 10 * 0.5) / 50 + 0.5
    assert new.clip_norm == pytest.approx(2.0 * math.exp(-0.2 * (b - 0.7)), rel=1e-15)
    assert (new.target_quantile, new.learning_rate, new.count_noise_std) == (0.7, 0.2, 0.0)


def test_count_noise_has_std_sigma_b_over_m_and_is_seeded():
    draws = [
        noisy_unclipped_fraction([], expected_clients=100, count_noise_std=5.0, rng=np.random.default_rng(s))
        for s in range(4000)
    ]
    assert np.mean(draws) == pytest.approx(0.5, abs=4 * 0.05 / math.sqrt(4000))
    assert np.std(draws) == pytest.approx(0.05, rel=0.05)
    rng = np.random.default_rng(1)
    again = noisy_unclipped_fraction([], expected_clients=100, count_noise_std=5.0, rng=rng)
    assert again == draws[1]


def test_indicators_must_have_sensitivity_one_half():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"-0\.5 or \+0\.5"):
        noisy_unclipped_fraction([1.0], expected_clients=10, count_noise_std=1.0, rng=rng)
    assert norm_indicator(update_norm=1.0, clip_norm=1.0) == 0.5  # at the bound: not clipped
    with pytest.raises(ValueError):
        norm_indicator(update_norm=math.nan, clip_norm=1.0)


def test_state_is_validated_and_keyword_only():
    with pytest.raises(TypeError):
        AdaptiveClipState(1.0, 0.5, 0.2, 1.0)  # type: ignore[misc]
    for bad in [
        {"clip_norm": 0.0},
        {"target_quantile": 1.0},
        {"target_quantile": 0.0},
        {"learning_rate": -0.1},
        {"count_noise_std": -1.0},
    ]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            AdaptiveClipState(**{**state_at(1.0).__dict__, **bad})


# --- privacy accounting --------------------------------------------------------------------------


def test_split_keeps_the_total_noise_multiplier():
    z, sigma_b = 1.0, CLIENTS / 20
    z_delta = split_noise_multiplier(total_noise_multiplier=z, count_noise_std=sigma_b)
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2, rel=1e-12)


def test_update_noise_grows_to_pay_for_the_count_release():
    # Same budget as a fixed-clip round with z: the count release costs privacy, so the updates
    # must get MORE noise (z_delta > z), and the more noisy the count, the smaller the surcharge.
    z = 1.0
    surcharges = [
        split_noise_multiplier(total_noise_multiplier=z, count_noise_std=s) - z
        for s in (1.0, 2.0, 10.0, 100.0)
    ]
    assert all(s > 0 for s in surcharges)
    assert all(a > b for a, b in itertools.pairwise(surcharges))


def test_split_refuses_a_count_that_spends_the_whole_budget():
    with pytest.raises(ValueError, match="count_noise_std"):
        split_noise_multiplier(total_noise_multiplier=2.0, count_noise_std=1.0)
    with pytest.raises(ValueError):
        split_noise_multiplier(total_noise_multiplier=2.5, count_noise_std=1.0)


@pytest.mark.parametrize(("z", "sigma_b", "steps"), [(1.0, 1.0, 5), (2.0, 3.0, 20)])
def test_the_count_release_appears_in_the_accounting(z: float, sigma_b: float, steps: int):
    # Without sampling both releases are Gaussian, so their composition has a closed form:
    # updates (z_delta) + counts (2 sigma_b) compose to exactly the accounted event with z.
    z_delta = split_noise_multiplier(total_noise_multiplier=z, count_noise_std=sigma_b)
    both = PldAccountant()
    both.compose(GaussianEvent(noise_multiplier=z_delta, sample_rate=1.0, steps=steps))
    both.compose(GaussianEvent(noise_multiplier=2 * sigma_b, sample_rate=1.0, steps=steps))
    accounted = PldAccountant()
    accounted.compose(round_event(total_noise_multiplier=z, sample_rate=1.0, steps=steps))
    exact = gaussian_epsilon(noise_multiplier=z, delta=1e-5, steps=steps)
    assert both.epsilon(delta=1e-5) == pytest.approx(exact, rel=1e-4)
    assert accounted.epsilon(delta=1e-5) == pytest.approx(exact, rel=1e-4)
    # ignoring the count (accounting z_delta alone) would under-state epsilon
    updates_only = gaussian_epsilon(noise_multiplier=z_delta, delta=1e-5, steps=steps)
    assert updates_only < 0.99 * exact


def test_round_event_is_a_sampled_gaussian_with_the_total_multiplier():
    assert round_event(total_noise_multiplier=1.2, sample_rate=0.01, steps=3) == GaussianEvent(
        noise_multiplier=1.2, sample_rate=0.01, steps=3
    )
