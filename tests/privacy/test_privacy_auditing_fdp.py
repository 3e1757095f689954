"""One-run f-DP auditing: exact known answers, soundness by simulation, and power where it must have it."""

import math
from fractions import Fraction

import numpy as np
import pytest

from fedlab.privacy.auditing.fdp import FdpResult, fdp_audit, fdp_p_value, fdp_rejects
from fedlab.privacy.auditing.tradeoffs import (
    EventsFamily,
    GaussianTradeoff,
    ProfileTradeoff,
    events_tradeoff,
)
from fedlab.privacy.events import GaussianEvent

# --- independent references ------------------------------------------------------------------------


def binomial_tail(n: int, c: int, p: Fraction) -> float:
    """P[Binomial(n, p) >= c], summed exactly over rationals."""
    return float(sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(c, n + 1)))


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gdp_delta(mu: float, epsilon: float) -> float:
    """Delta of mu-GDP at epsilon (Dong, Roth & Su 2022, Corollary 2.13), via erfc."""
    return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)


def gdp_game(mu: float, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The one-run game against a mu-GDP mechanism: each canary shifts its own N(0, 1) output by mu."""
    included = rng.random(m) < 0.5
    return rng.normal(mu * included, 1.0), included


class Gdp:
    """mu-GDP claims indexed by noise scale s (mu / s), with mu itself as the 'epsilon'."""

    def __init__(self, mu: float) -> None:
        self.mu = mu

    def tradeoff(self, s: float) -> GaussianTradeoff:
        return GaussianTradeoff(self.mu / s)

    def epsilon(self, s: float) -> float:
        return self.mu / s


NOTHING = ProfileTradeoff([0.0], [0.0])  # 0-DP: the output says nothing about membership


# --- known answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 10, 20])
def test_all_guesses_right_against_a_perfectly_private_mechanism_is_exactly_two_to_the_minus_n(n):
    # Guesses independent of the memberships are all right with probability 2^-n; the bound is tight.
    p = fdp_p_value(NOTHING, num_canaries=n, num_guesses=n, num_correct=n)
    assert p == pytest.approx(2.0**-n, rel=1e-5)
    assert p >= 2.0**-n * (1 - 1e-9)


@pytest.mark.parametrize(("m", "n", "c"), [(100, 100, 60), (1000, 100, 65), (1000, 1000, 550), (50, 20, 15)])
def test_against_a_perfectly_private_mechanism_the_bound_covers_the_binomial_tail_and_is_close(m, n, c):
    exact = binomial_tail(n, c, Fraction(1, 2))
    p = fdp_p_value(NOTHING, num_canaries=m, num_guesses=n, num_correct=c)
    assert exact <= p <= 1.25 * exact


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(("n", "c"), [(50, 40), (200, 140)])
def test_randomized_response_attains_a_tail_the_bound_must_cover(epsilon, n, c):
    # Each canary published through randomized response: the guess "what was published" is right
    # with probability e^eps / (1 + e^eps), independently; an eps-DP bound must cover that tail.
    p_right = Fraction(math.exp(epsilon)) / (1 + Fraction(math.exp(epsilon)))
    exact = binomial_tail(n, c, p_right)
    bound = fdp_p_value(ProfileTradeoff([epsilon], [0.0]), num_canaries=n, num_guesses=n, num_correct=c)
    assert bound >= exact
    assert bound <= 2.0 * exact or bound == 1.0


def test_a_gdp_profile_gives_the_gaussian_tradeoff_from_below():
    # Dong, Roth & Su, Proposition 2.12: the envelope of f_{eps, delta(eps)} over all eps is the
    # trade-off; a grid of eps gives a smaller inverse that converges to Phi(Phi^-1(y) - mu).
    mu = 1.3
    grid = np.linspace(0.0, 12.0, 1201)
    profile = ProfileTradeoff(grid, [max(0.0, gdp_delta(mu, e)) for e in grid])
    for y in (1e-4, 0.01, 0.1, 0.5, 0.9, 0.999):
        exact = phi(phi_inverse(y) - mu)
        assert profile.inverse(y) <= exact + 1e-12
        assert profile.inverse(y) == pytest.approx(exact, abs=2e-4)


def phi_inverse(y: float) -> float:
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if phi(mid) < y else (lo, mid)
    return 0.5 * (lo + hi)


def test_one_gaussian_release_is_one_over_z_gdp_and_the_pld_profile_stays_below_it():
    for z in (0.7, 2.0):
        tradeoff = events_tradeoff([[GaussianEvent(noise_multiplier=z, sample_rate=1.0, steps=1)]])
        for y in (0.01, 0.2, 0.5, 0.95):
            exact = phi(phi_inverse(y) - 1.0 / z)
            assert tradeoff.inverse(y) <= exact + 1e-9
            assert tradeoff.inverse(y) == pytest.approx(exact, abs=3e-3)


def test_the_profile_of_several_histories_holds_for_each_of_them():
    short = [GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=4)]
    long = [GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=16)]
    both = events_tradeoff([short, long])
    for y in (0.05, 0.3, 0.7):
        assert both.inverse(y) <= min(events_tradeoff([h]).inverse(y) for h in (short, long)) + 1e-12
    assert events_tradeoff([long], noise_scale=2.0).inverse(0.3) > events_tradeoff([long]).inverse(0.3)
    family = EventsFamily([short, long], delta=1e-5)
    assert family.epsilon(1.0) > family.epsilon(2.0) > 0.0


# --- soundness and power ---------------------------------------------------------------------------


def test_a_gdp_mechanism_is_rejected_at_most_as_often_as_the_level_says():
    # 400 plays of the one-run game against mu-GDP, guessing the top and bottom 25 of 400 canaries:
    # a sound test at level 0.05 rejects "mu-GDP" in at most about 5% of them.
    mu, rng = 1.0, np.random.default_rng(7)
    rejections = 0
    for _ in range(400):
        scores, included = gdp_game(mu, 400, rng)
        order = np.argsort(-scores)
        guesses_right = included[order[:25]].sum() + (~included[order[-25:]]).sum()
        rejections += fdp_rejects(
            GaussianTradeoff(mu), num_canaries=400, num_guesses=50, num_correct=int(guesses_right), alpha=0.05
        )
    assert rejections <= 30  # 5% of 400 is 20; binomial slack


def test_the_test_rejects_a_claim_well_below_the_truth():
    rng = np.random.default_rng(1)
    results = [fdp_audit(*gdp_game(2.0, 2000, rng), family=Gdp(0.8)) for _ in range(5)]
    assert all(r.claim_rejected and r.epsilon_lower_bound > 0.8 for r in results)
    assert all(r.epsilon_lower_bound < 2.0 for r in results)


def test_a_true_claim_is_not_rejected_over_ten_seeds():
    rng = np.random.default_rng(2)
    results = [fdp_audit(*gdp_game(2.0, 2000, rng), family=Gdp(2.0)) for _ in range(10)]
    assert not any(r.claim_rejected for r in results)
    assert all(0.0 < r.epsilon_lower_bound < 2.0 for r in results)


def test_rejection_grows_with_the_claim():
    outcomes = [
        fdp_rejects(GaussianTradeoff(mu), num_canaries=1000, num_guesses=100, num_correct=95, alpha=0.05)
        for mu in (0.25, 0.5, 1.0, 4.0)
    ]
    assert outcomes == sorted(outcomes, reverse=True) and outcomes[0] and not outcomes[-1]


def test_a_result_is_json_friendly_when_nothing_is_rejected():
    rng = np.random.default_rng(3)
    result = fdp_audit(*gdp_game(0.0, 200, rng), family=Gdp(0.5))
    assert isinstance(result, FdpResult) and result.epsilon_lower_bound == 0.0
    assert not result.claim_rejected and result.to_dict()["noise_scale"] is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_canaries": 10, "num_guesses": 11, "num_correct": 1, "alpha": 0.05}, "num_guesses"),
        ({"num_canaries": 10, "num_guesses": 5, "num_correct": 6, "alpha": 0.05}, "num_correct"),
        ({"num_canaries": 10, "num_guesses": 5, "num_correct": 1, "alpha": 0.0}, "alpha"),
    ],
)
def test_bad_counts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fdp_rejects(NOTHING, **kwargs)


def test_bad_profiles_and_families_are_refused():
    with pytest.raises(ValueError, match="as many deltas"):
        ProfileTradeoff([0.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="deltas"):
        ProfileTradeoff([1.0], [1.5])
    with pytest.raises(ValueError, match="without noise"):
        EventsFamily([[GaussianEvent(noise_multiplier=0.0, sample_rate=1.0, steps=1)]], delta=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        events_tradeoff([[]])
