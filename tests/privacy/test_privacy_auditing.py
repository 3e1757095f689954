"""Empirical privacy auditing: exact known answers, monotonicity, and validity of the bounds by simulation."""

import json
import math
from fractions import Fraction
from itertools import pairwise

import dp_accounting
import numpy as np
import pytest
from scipy import integrate, stats

from fedlab.privacy.auditing import (
    CanaryBound,
    OneRunResult,
    canary_epsilon_estimate,
    canary_epsilon_lower_bound,
    clopper_pearson,
    count_correct_guesses,
    epsilon_lower_bound_from_rates,
    gdp_epsilon,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
    two_gaussian_delta,
    two_gaussian_epsilon,
)

# --- independent references, written here from the papers' statements ----------------------------


def exact_one_run_p_value(m: int, r: int, v: int, q: Fraction, delta: Fraction) -> Fraction:
    """Steinke et al.'s (epsilon, delta) tail bound in exact rational arithmetic, q = e^eps / (1 + e^eps)."""
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    f = [sum(pmf[k:], Fraction(0)) for k in range(r + 2)]  # f[k] = P[Bin(r, q) >= k]
    if v == 0:
        return Fraction(1)
    slope = max((f[v - i] - f[v]) / i for i in range(1, v + 1))
    return min(f[v] + 2 * m * delta * slope, Fraction(1))


def exact_one_run_epsilon(m: int, r: int, v: int, delta: Fraction, alpha: Fraction) -> float:
    """Solves exact_one_run_p_value(q) = alpha for q by bisection over rationals; returns ln(q / (1 - q))."""
    lo, hi = Fraction(1, 2), Fraction(1)
    assert exact_one_run_p_value(m, r, v, lo, delta) < alpha
    for _ in range(60):
        mid = (lo + hi) / 2
        if exact_one_run_p_value(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return math.log(lo / (1 - lo))


def balle_wang_delta(mu: float, epsilon: float) -> float:
    """Delta of mu-GDP (a Gaussian mechanism of sensitivity mu / sigma) at epsilon, via erfc."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)


def balle_wang_epsilon(mu: float, delta: float) -> float:
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if balle_wang_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def hockey_stick_by_quadrature(mean_p: float, std_p: float, mean_q: float, std_q: float, eps: float) -> float:
    def integrand(x: float) -> float:
        return max(stats.norm.pdf(x, mean_p, std_p) - math.exp(eps) * stats.norm.pdf(x, mean_q, std_q), 0.0)

    lo = min(mean_p - 40 * std_p, mean_q - 40 * std_q)
    hi = max(mean_p + 40 * std_p, mean_q + 40 * std_q)
    value, _ = integrate.quad(integrand, lo, hi, points=[mean_p, mean_q], limit=500, epsabs=1e-14)
    return value


def randomized_response_scores(rng: np.random.Generator, included: np.ndarray, epsilon: float) -> np.ndarray:
    """An exactly epsilon-DP canary mechanism: each canary's +-1 membership, flipped w.p. 1 / (1 + e^eps)."""
    truth = np.where(included, 1.0, -1.0)
    keep = rng.random(included.size) < math.exp(epsilon) / (1.0 + math.exp(epsilon))
    return np.where(keep, truth, -truth)


# --- one run: known answers -----------------------------------------------------------------------


def test_all_ten_of_ten_correct_under_pure_dp_is_the_closed_form():
    # P[W >= 10] = q^10 <= 0.05  <=>  q <= 0.05^(1/10).
    q = 0.05**0.1
    expected = math.log(q / (1 - q))
    got = one_run_epsilon_lower_bound(num_canaries=10, num_guesses=10, num_correct=10, delta=0.0)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "confidence"),
    [
        (10, 10, 10, Fraction(1, 1000), Fraction(95, 100)),
        (20, 12, 11, Fraction(1, 1000), Fraction(95, 100)),
        (30, 16, 15, Fraction(1, 10**5), Fraction(99, 100)),
        (10, 8, 8, Fraction(0), Fraction(90, 100)),
    ],
)
def test_one_run_bound_solves_the_papers_inequality_in_exact_arithmetic(m, r, v, delta, confidence):
    expected = exact_one_run_epsilon(m, r, v, delta, 1 - confidence)
    got = one_run_epsilon_lower_bound(
        num_canaries=m, num_guesses=r, num_correct=v, delta=float(delta), confidence=float(confidence)
    )
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("m", "r", "v"), [(10, 10, 9), (50, 20, 14), (100, 40, 3), (7, 7, 0)])
def test_one_run_p_value_at_q_three_quarters_matches_exact_arithmetic(m, r, v):
    # epsilon = ln 3 makes q = e^eps / (1 + e^eps) = 3/4.
    delta = Fraction(1, 10**4)
    expected = exact_one_run_p_value(m, r, v, Fraction(3, 4), delta)
    got = one_run_p_value(
        num_canaries=m, num_guesses=r, num_correct=v, epsilon=math.log(3.0), delta=float(delta)
    )
    assert got == pytest.approx(float(expected), rel=1e-10)


def test_delta_term_lowers_the_bound_below_the_pure_dp_one():
    pure = one_run_epsilon_lower_bound(num_canaries=10, num_guesses=10, num_correct=10, delta=0.0)
    approx = one_run_epsilon_lower_bound(num_canaries=10, num_guesses=10, num_correct=10, delta=1e-3)
    assert 0.0 < approx < pure


# --- one run: monotonicity --------------------------------------------------------------------------


def test_more_correct_guesses_give_a_larger_bound():
    bounds = [
        one_run_epsilon_lower_bound(num_canaries=1000, num_guesses=200, num_correct=v, delta=1e-5)
        for v in range(100, 201, 5)
    ]
    assert all(b1 <= b2 for b1, b2 in pairwise(bounds))
    positive = [b for b in bounds if b > 0]
    assert len(positive) >= 15
    assert all(b1 < b2 for b1, b2 in pairwise(positive))


def test_higher_confidence_gives_a_smaller_bound():
    bounds = [
        one_run_epsilon_lower_bound(
            num_canaries=1000, num_guesses=300, num_correct=260, delta=1e-5, confidence=c
        )
        for c in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)
    ]
    assert all(b1 > b2 for b1, b2 in pairwise(bounds))
    assert bounds[-1] > 0


def test_larger_delta_or_more_canaries_give_a_smaller_bound():
    def bound(m: int, delta: float) -> float:
        return one_run_epsilon_lower_bound(num_canaries=m, num_guesses=100, num_correct=95, delta=delta)

    assert bound(1000, 0.0) > bound(1000, 1e-6) > bound(1000, 1e-4)
    assert bound(1000, 1e-5) > bound(10_000, 1e-5) > bound(100_000, 1e-5)


@pytest.mark.parametrize("v", [0, 1, 50, 100])
def test_chance_level_or_worse_rules_out_nothing(v):
    assert one_run_epsilon_lower_bound(num_canaries=500, num_guesses=200, num_correct=v, delta=1e-5) == 0.0


def test_no_guesses_rule_out_nothing():
    assert one_run_epsilon_lower_bound(num_canaries=100, num_guesses=0, num_correct=0, delta=0.0) == 0.0


# --- one run: validity (the bound exceeds the true epsilon with probability <= 1 - confidence) -------


@pytest.mark.parametrize("delta", [0.0, 1e-5])
def test_randomized_response_bound_is_valid_and_tight_by_simulation(delta):
    epsilon, m, runs = 2.0, 1000, 300
    bounds = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        scores = randomized_response_scores(rng, included, epsilon)
        correct = int(np.sum((scores > 0) == included))  # every canary guessed from its score
        bounds.append(
            one_run_epsilon_lower_bound(num_canaries=m, num_guesses=m, num_correct=correct, delta=delta)
        )
    exceed = np.mean(np.array(bounds) > epsilon)
    assert exceed <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)  # 0.05 plus three standard errors
    assert np.median(bounds) >= 0.5 * epsilon
    assert np.median(bounds) >= 0.85 * epsilon  # in fact about 0.92 of it with m = 1000


def test_randomized_response_exact_coverage_is_at_most_one_minus_confidence():
    # Each of the m guesses is correct independently w.p. q, so W ~ Binomial(m, q) exactly: sum the
    # probabilities of the outcomes whose bound overshoots.
    epsilon, m = 1.0, 200
    q = Fraction(math.exp(epsilon) / (1 + math.exp(epsilon)))
    overshoot = Fraction(0)
    for v in range(m + 1):
        if one_run_epsilon_lower_bound(num_canaries=m, num_guesses=m, num_correct=v, delta=0.0) > epsilon:
            overshoot += math.comb(m, v) * q**v * (1 - q) ** (m - v)
    assert 0.02 < float(overshoot) <= 0.05  # valid, and not much more conservative than the level


def test_one_run_audit_of_randomized_response_is_valid_by_simulation():
    epsilon, m, runs = 2.0, 1000, 150
    bounds = []
    for seed in range(runs):
        rng = np.random.default_rng(10_000 + seed)
        included = rng.random(m) < 0.5
        scores = randomized_response_scores(rng, included, epsilon) + 0.01 * rng.standard_normal(m)
        bounds.append(one_run_audit(scores, included, delta=1e-5).epsilon_lower_bound)
    assert np.mean(np.array(bounds) > epsilon) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert np.median(bounds) >= 0.5 * epsilon


# --- one run: guesses and the audit -----------------------------------------------------------------


def test_guesses_take_the_top_and_bottom_scores():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal(101)
    guesses = one_run_guesses(scores, num_positive=30, num_negative=20)
    assert guesses.dtype == np.int8
    assert np.sum(guesses == 1) == 30 and np.sum(guesses == -1) == 20 and np.sum(guesses == 0) == 51
    assert scores[guesses == 1].min() > scores[guesses == 0].max() > scores[guesses == 0].min()
    assert scores[guesses == 0].min() > scores[guesses == -1].max()


def test_ties_are_broken_by_position():
    guesses = one_run_guesses([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], num_positive=2, num_negative=2)
    assert guesses.tolist() == [1, 1, 0, 0, -1, -1]


def test_all_scores_can_be_guessed():
    guesses = one_run_guesses([0.5, -0.5, 2.0], num_positive=2, num_negative=1)
    assert guesses.tolist() == [1, -1, 1]


def test_count_correct_guesses():
    guesses = [1, 1, -1, -1, 0, 0]
    included = [True, False, False, True, True, False]
    assert count_correct_guesses(guesses, included) == 2
    assert count_correct_guesses(guesses, [1, 0, 0, 1, 1, 0]) == 2


def test_audit_with_one_split_reports_that_split():
    scores = np.arange(40.0)
    included = scores >= 20  # a perfect attack
    result = one_run_audit(scores, included, delta=0.0, confidence=0.9, guess_counts=[(10, 10)])
    assert isinstance(result, OneRunResult)
    assert (result.split, result.num_guesses, result.num_correct, result.num_splits) == ((10, 10), 20, 20, 1)
    assert result.split_confidence == pytest.approx(0.9)
    q = 0.1 ** (1 / 20)  # P[W >= 20] = q^20 = 0.1
    assert result.epsilon_lower_bound == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


def test_audit_over_several_splits_is_bonferroni_corrected():
    scores = np.arange(40.0)
    included = scores >= 20
    result = one_run_audit(
        scores, included, delta=0.0, confidence=0.9, guess_counts=[(10, 10), (5, 5), (20, 0)]
    )
    assert result.num_splits == 3
    assert result.split_confidence == pytest.approx(1 - 0.1 / 3)
    # Every split is perfect, so the largest (20 correct guesses) wins, at the corrected level.
    q = (0.1 / 3) ** (1 / 20)
    assert result.split in {(10, 10), (20, 0)}
    assert result.epsilon_lower_bound == pytest.approx(math.log(q / (1 - q)), rel=1e-9)


def test_default_splits():
    scores = np.arange(1000.0)
    result = one_run_audit(scores, scores >= 500, delta=1e-5)
    assert result.num_splits == 6  # k = 500, 250, 125, 62, 31, 15
    assert result.split == (500, 500)
    assert one_run_audit([1.0], [True], delta=0.0).split == (1, 0)


def test_result_is_json_friendly():
    scores = np.arange(100.0)
    result = one_run_audit(scores, scores >= 50, delta=1e-5)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["split"] == list(result.split)
    assert data["epsilon_lower_bound"] == result.epsilon_lower_bound


# --- Clopper-Pearson --------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.999])
@pytest.mark.parametrize(
    ("k", "n"), [(0, 1), (1, 1), (0, 10), (1, 10), (7, 20), (20, 20), (500, 1000), (3, 5000)]
)
def test_clopper_pearson_matches_scipy(k, n, confidence):
    reference = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = clopper_pearson(successes=k, trials=n, confidence=confidence)
    assert low == pytest.approx(reference.low, rel=1e-9, abs=1e-15)
    assert high == pytest.approx(reference.high, rel=1e-9, abs=1e-15)


def test_clopper_pearson_textbook_values():
    assert tuple(round(x, 4) for x in clopper_pearson(successes=1, trials=10, confidence=0.95)) == (
        0.0025,
        0.4450,
    )
    # k = 0 and k = n have closed forms: the only binomial term left is (1 - p)^n or p^n.
    low, high = clopper_pearson(successes=0, trials=30, confidence=0.95)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 30), rel=1e-12)
    low, high = clopper_pearson(successes=30, trials=30, confidence=0.95)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 30), rel=1e-12)


@pytest.mark.parametrize(("k", "n"), [(3, 12), (9, 17), (1, 25)])
def test_clopper_pearson_ends_solve_the_binomial_tail_equations(k, n):
    low, high = clopper_pearson(successes=k, trials=n, confidence=0.9)

    def tail_at_least(p: float) -> float:
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    def tail_at_most(p: float) -> float:
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1))

    assert tail_at_least(low) == pytest.approx(0.05, rel=1e-8)
    assert tail_at_most(high) == pytest.approx(0.05, rel=1e-8)


# --- epsilon from confusion counts ------------------------------------------------------------------


@pytest.mark.parametrize(("pos", "neg", "better"), [(100, 1000, "forward"), (1000, 100, "backward")])
def test_rates_bound_of_a_perfect_test_is_the_closed_form(pos, neg, better):
    # tp = positives and fp = 0: TPR_lo = a^(1/pos), FPR_hi = 1 - a^(1/neg), a = (1 - confidence) / 2.
    delta, a = 1e-5, 0.025
    tpr_lo, tnr_lo = a ** (1 / pos), a ** (1 / neg)
    forward = math.log((tpr_lo - delta) / (1 - tnr_lo))  # ln((TPR_lo - delta) / FPR_hi)
    backward = math.log((tnr_lo - delta) / (1 - tpr_lo))  # ln((TNR_lo - delta) / FNR_hi)
    got = epsilon_lower_bound_from_rates(
        true_positives=pos, positives=pos, false_positives=0, negatives=neg, delta=delta, confidence=0.95
    )
    assert got == pytest.approx(max(forward, backward), rel=1e-9)
    assert (forward > backward) == (better == "forward")


def test_rates_bound_monotonicity():
    def bound(tp: int, fp: int, confidence: float = 0.95) -> float:
        return epsilon_lower_bound_from_rates(
            true_positives=tp,
            positives=1000,
            false_positives=fp,
            negatives=1000,
            delta=1e-5,
            confidence=confidence,
        )

    assert bound(900, 10) > bound(800, 10) > bound(700, 10)
    assert bound(900, 5) > bound(900, 20) > bound(900, 100)
    assert bound(900, 10, 0.9) > bound(900, 10, 0.99) > bound(900, 10, 0.9999)
    assert bound(500, 500) == 0.0
    assert bound(100, 900) == 0.0


def test_rates_bound_is_valid_for_randomized_response_by_simulation():
    epsilon, n, runs = 1.5, 500, 400
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    rng = np.random.default_rng(7)
    exceed = 0
    for _ in range(runs):
        tp, fp = int(rng.binomial(n, q)), int(rng.binomial(n, 1 - q))
        exceed += (
            epsilon_lower_bound_from_rates(
                true_positives=tp, positives=n, false_positives=fp, negatives=n, delta=0.0
            )
            > epsilon
        )
    assert exceed / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


# --- canary lower bound over all thresholds ---------------------------------------------------------


def test_canary_bound_of_separated_statistics_is_the_closed_form():
    n, delta, alpha = 400, 1e-5, 0.05
    inserted, held_out = np.linspace(1.0, 2.0, n), np.linspace(-1.0, 0.5, n)
    result = canary_epsilon_lower_bound(inserted=inserted, held_out=held_out, delta=delta)
    assert isinstance(result, CanaryBound)
    assert (result.threshold, result.true_positives, result.false_positives) == (1.0, n, 0)
    x = (alpha / (2 * n)) ** (1 / n)  # TPR_lo = TNR_lo = x at level alpha / (2n)
    assert result.epsilon_lower_bound == pytest.approx(math.log((x - delta) / (1 - x)), rel=1e-9)
    assert json.loads(json.dumps(result.to_dict()))["threshold"] == 1.0


def test_canary_bound_stays_at_zero_without_signal_despite_choosing_the_threshold():
    # Identical distributions: the true epsilon is 0, so the best of ~400 thresholds must show a leak in
    # at most 1 - confidence of the runs.
    runs, positive = 200, 0
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        result = canary_epsilon_lower_bound(
            inserted=rng.standard_normal(200), held_out=rng.standard_normal(200), delta=0.0
        )
        positive += result.epsilon_lower_bound > 0.0
        if result.epsilon_lower_bound == 0.0:
            assert result.threshold is None
    assert positive / runs <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)


def test_canary_bound_is_valid_for_jittered_randomized_response_by_simulation():
    # Each statistic is a +-1 membership bit kept w.p. q = e^eps / (1 + e^eps), plus uniform jitter: exactly
    # eps-DP, and every threshold inside the upper cluster has TPR / FPR = e^eps, so choosing the best of
    # them after the fact is what could overshoot (about 9% of runs do with per-threshold 95% intervals).
    epsilon, n, runs = 2.0, 500, 300
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    bounds = []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        inserted = (rng.random(n) < q) + 0.5 * rng.random(n)
        held_out = (rng.random(n) < 1 - q) + 0.5 * rng.random(n)
        bounds.append(
            canary_epsilon_lower_bound(inserted=inserted, held_out=held_out, delta=0.0).epsilon_lower_bound
        )
    assert np.mean(np.array(bounds) > epsilon) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / runs)
    assert np.median(bounds) >= 0.6 * epsilon


def test_canary_bound_is_below_the_gaussian_mechanisms_epsilon():
    mu, delta = 3.0, 1e-3
    truth = balle_wang_epsilon(mu, delta)
    bounds = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        inserted = mu + rng.standard_normal(1000)
        held_out = rng.standard_normal(1000)
        result = canary_epsilon_lower_bound(inserted=inserted, held_out=held_out, delta=delta)
        bounds.append(result.epsilon_lower_bound)
    assert max(bounds) <= truth
    # 1000 + 1000 trials cannot show more than a perfect separation does (about 4.5 here, far below
    # the truth of about 13); the bound gets most of that way.
    x = (0.05 / 2000) ** (1 / 1000)
    perfect = math.log((x - delta) / (1 - x))
    assert max(bounds) <= perfect
    assert np.median(bounds) >= 0.75 * perfect


# --- Gaussian estimates -----------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-2, 1e-5, 1e-9])
def test_gdp_epsilon_matches_the_balle_wang_formula(mu, delta):
    assert gdp_epsilon(mu=mu, delta=delta) == pytest.approx(balle_wang_epsilon(mu, delta), rel=1e-8)


def test_gdp_epsilon_of_zero_mu_is_zero():
    assert gdp_epsilon(mu=0.0, delta=1e-5) == 0.0


def test_equal_variance_gaussians_give_the_analytic_gaussian_epsilon():
    # Andrew et al.'s regression value: mu = std gives epsilon 2.317789 at delta = 1e-2.
    assert two_gaussian_epsilon(mean_a=0.0, std_a=0.02, mean_b=0.02, std_b=0.02, delta=1e-2) == pytest.approx(
        2.317789, abs=1e-6
    )
    sigma = 0.7
    expected = dp_accounting.get_epsilon_gaussian(sigma, 1e-5)
    got = two_gaussian_epsilon(mean_a=3.0, std_a=sigma, mean_b=4.0, std_b=sigma, delta=1e-5)
    assert got == pytest.approx(expected, rel=1e-7)


def test_nearly_equal_variances_are_continuous_with_equal_ones():
    equal = two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.0, delta=1e-5)
    near = two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.0 + 1e-9, delta=1e-5)
    assert near == pytest.approx(equal, rel=1e-6)


@pytest.mark.parametrize(
    ("mean_a", "std_a", "mean_b", "std_b"),
    [
        (0.0, 1.0, 1.0, 1.2),
        (0.0, 1.0, 3.0, 0.5),
        (0.1, 0.01, 0.13, 0.011),
        (0.0, 1.0, 0.0, 2.0),
        (2.0, 1.0, 0.0, 1.0),
    ],
)
@pytest.mark.parametrize("epsilon", [0.0, 0.5, 2.0, 4.0])
def test_two_gaussian_delta_matches_numerical_integration(mean_a, std_a, mean_b, std_b, epsilon):
    expected = max(
        hockey_stick_by_quadrature(mean_a, std_a, mean_b, std_b, epsilon),
        hockey_stick_by_quadrature(mean_b, std_b, mean_a, std_a, epsilon),
    )
    got = two_gaussian_delta(mean_a=mean_a, std_a=std_a, mean_b=mean_b, std_b=std_b, epsilon=epsilon)
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_two_gaussian_epsilon_inverts_the_delta_found_by_integration():
    eps = two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.5, std_b=1.3, delta=1e-3)
    at_root = max(
        hockey_stick_by_quadrature(0.0, 1.0, 1.5, 1.3, eps),
        hockey_stick_by_quadrature(1.5, 1.3, 0.0, 1.0, eps),
    )
    assert at_root == pytest.approx(1e-3, rel=1e-5)


def test_two_gaussian_epsilon_is_symmetric_and_affine_invariant():
    base = two_gaussian_epsilon(mean_a=0.0, std_a=1.0, mean_b=1.0, std_b=1.1, delta=1e-4)
    swapped = two_gaussian_epsilon(mean_a=1.0, std_a=1.1, mean_b=0.0, std_b=1.0, delta=1e-4)
    moved = two_gaussian_epsilon(mean_a=5.0, std_a=0.01, mean_b=5.01, std_b=0.011, delta=1e-4)
    assert swapped == pytest.approx(base, rel=1e-9)
    assert moved == pytest.approx(base, rel=1e-7)


@pytest.mark.parametrize("mu", [1.0, 2.0])
def test_canary_estimate_recovers_the_gaussian_mechanisms_epsilon(mu):
    # Cosines of inserted canaries ~ N(mu * s, s^2), held-out ~ N(0, s^2): the Gaussian mechanism with
    # sensitivity mu (in units of its noise). The fitted variances differ by sampling noise, which
    # can only raise the estimate; with 200 000 canaries per group that stays within a few percent.
    delta, s, n = 1e-5, 0.003, 200_000
    truth = dp_accounting.get_epsilon_gaussian(1.0 / mu, delta)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        inserted = mu * s + s * rng.standard_normal(n)
        held_out = s * rng.standard_normal(n)
        estimate = canary_epsilon_estimate(inserted=inserted, held_out=held_out, delta=delta)
        assert estimate == pytest.approx(truth, rel=0.04)


def test_canary_estimate_of_identical_groups_is_small():
    rng = np.random.default_rng(0)
    estimate = canary_epsilon_estimate(
        inserted=rng.standard_normal(100_000), held_out=rng.standard_normal(100_000), delta=1e-5
    )
    assert estimate < 0.1


# --- bad inputs: ValueError with one clear line -----------------------------------------------------

ONE_RUN = {"num_canaries": 100, "num_guesses": 50, "num_correct": 40, "delta": 1e-5}
RATES = {"true_positives": 5, "positives": 10, "false_positives": 1, "negatives": 10, "delta": 1e-5}


@pytest.mark.parametrize(
    ("call", "kwargs", "message"),
    [
        (one_run_epsilon_lower_bound, {**ONE_RUN, "num_correct": 51}, "num_correct must be <= num_guesses"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "num_guesses": 101}, "num_guesses must be <= num_canaries"),
        (
            one_run_epsilon_lower_bound,
            {**ONE_RUN, "num_canaries": 0, "num_guesses": 0, "num_correct": 0},
            ">= 1",
        ),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "num_correct": -1}, "num_correct must be >= 0"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "num_correct": 4.0}, "must be an integer"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "num_correct": True}, "must be an integer"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "confidence": 1.0}, "confidence must be in (0, 1)"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "confidence": 0.0}, "confidence must be in (0, 1)"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "delta": 1.0}, "delta must be in [0, 1)"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "delta": -1e-9}, "delta must be in [0, 1)"),
        (one_run_epsilon_lower_bound, {**ONE_RUN, "delta": math.nan}, "delta must be in [0, 1)"),
        (one_run_p_value, {**ONE_RUN, "epsilon": -1.0}, "epsilon must be finite"),
        (clopper_pearson, {"successes": 11, "trials": 10, "confidence": 0.95}, "successes must be <= trials"),
        (clopper_pearson, {"successes": 0, "trials": 0, "confidence": 0.95}, "trials must be >= 1"),
        (clopper_pearson, {"successes": 1, "trials": 10, "confidence": 1.5}, "confidence must be in (0, 1)"),
        (epsilon_lower_bound_from_rates, {**RATES, "true_positives": 11}, "true_positives must be <="),
        (epsilon_lower_bound_from_rates, {**RATES, "false_positives": 11}, "false_positives must be <="),
        (epsilon_lower_bound_from_rates, {**RATES, "negatives": 0}, "negatives must be >= 1"),
        (epsilon_lower_bound_from_rates, {**RATES, "delta": 1.0}, "delta must be in [0, 1)"),
        (canary_epsilon_lower_bound, {"inserted": [], "held_out": [1.0], "delta": 0.0}, "non-empty 1-D"),
        (canary_epsilon_lower_bound, {"inserted": [1.0], "held_out": [math.nan], "delta": 0.0}, "finite"),
        (canary_epsilon_estimate, {"inserted": [1.0, 2.0], "held_out": [], "delta": 1e-5}, "non-empty 1-D"),
        (canary_epsilon_estimate, {"inserted": [1.0], "held_out": [0.0, 1.0], "delta": 1e-5}, "at least 2"),
        (
            canary_epsilon_estimate,
            {"inserted": [1.0, 1.0], "held_out": [0.0, 1.0], "delta": 1e-5},
            "zero standard",
        ),
        (canary_epsilon_estimate, {"inserted": [1.0, 2.0], "held_out": [0.0, 1.0], "delta": 0.0}, "(0, 1)"),
        (gdp_epsilon, {"mu": -1.0, "delta": 1e-5}, "mu must be finite and >= 0"),
        (
            two_gaussian_epsilon,
            {"mean_a": 0.0, "std_a": 0.0, "mean_b": 1.0, "std_b": 1.0, "delta": 0.1},
            "std_a",
        ),
        (
            two_gaussian_delta,
            {"mean_a": math.inf, "std_a": 1.0, "mean_b": 1.0, "std_b": 1.0, "epsilon": 1.0},
            "mean_a",
        ),
    ],
)
def test_bad_arguments_raise_one_clear_line(call, kwargs, message):
    with pytest.raises(ValueError) as info:
        call(**kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("call", "args", "kwargs", "message"),
    [
        (one_run_guesses, ([],), {"num_positive": 0, "num_negative": 0}, "non-empty 1-D"),
        (one_run_guesses, ([[1.0, 2.0]],), {"num_positive": 0, "num_negative": 0}, "non-empty 1-D"),
        (
            one_run_guesses,
            ([1.0, 2.0],),
            {"num_positive": 2, "num_negative": 1},
            "num_positive + num_negative",
        ),
        (one_run_guesses, (["a", "b"],), {"num_positive": 1, "num_negative": 0}, "real numbers"),
        (count_correct_guesses, ([1, 2], [True, False]), {}, "{+1, -1, 0}"),
        (count_correct_guesses, ([1, -1], [True]), {}, "length 2"),
        (count_correct_guesses, ([1, -1], [2, 0]), {}, "boolean"),
        (one_run_audit, ([1.0, 2.0], [True, False]), {"delta": 0.0, "guess_counts": []}, "must not be empty"),
        (one_run_audit, ([1.0, 2.0], [True, False]), {"delta": 0.0, "guess_counts": [(2, 1)]}, "more than 2"),
        (one_run_audit, ([1.0, 2.0], [True, False]), {"delta": 0.0, "guess_counts": [(1,)]}, "a pair"),
        (one_run_audit, ([1.0, 2.0], [True]), {"delta": 0.0}, "length 2"),
        (one_run_audit, ([1.0, 2.0], [True, False]), {"delta": 2.0}, "delta must be in [0, 1)"),
    ],
)
def test_bad_arrays_raise_one_clear_line(call, args, kwargs, message):
    with pytest.raises(ValueError) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert message in text
    assert "\n" not in text
