"""Distributed Skellam mechanism: accuracy vs central Gaussian, exact decoding, accounting routes agree."""

import json
import math
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import special, stats

from fedlab.privacy.rotation import rotate, unrotate
from fedlab.privacy.skellam import (
    DEFAULT_BETA,
    DEFAULT_K,
    SKELLAM_RDP_ORDERS,
    SkellamAccountant,
    SkellamEvent,
    SkellamParams,
    calibrate_skellam_noise_multiplier,
    centre,
    clip_l2,
    conditional_stochastic_round,
    decode_mean,
    decode_sum,
    encode_client,
    noise_is_sufficient,
    poisson_subsampled_rdp,
    reduce_mod,
    skellam_noise,
    skellam_rdp,
)

DELTA = 1e-5
N = 100


def params(**overrides: float) -> SkellamParams:
    fields: dict[str, float] = {
        "clip": 1.0,
        "noise_multiplier": 1.0,
        "num_clients": N,
        "min_survivors": N,
        "bits": 16,
        "dim": 1000,
    }
    fields.update(overrides)
    return SkellamParams(**fields)  # type: ignore[arg-type]


def skellam_epsilon(
    p: SkellamParams, *, q: float = 1.0, steps: int = 1, survivors: int | None = None
) -> float:
    acc = SkellamAccountant()
    acc.compose(SkellamEvent(params=p, sample_rate=q, steps=steps, num_survivors=survivors))
    return acc.epsilon(delta=DELTA)


def gaussian_epsilon(z: float, *, q: float, steps: int, orders: tuple[int, ...] | None) -> float:
    """Independent route: dp_accounting's RDP accountant for the Poisson-subsampled Gaussian."""
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(orders) if orders else None)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(DELTA))


def calibrate_gaussian(target: float, *, q: float, steps: int, orders: tuple[int, ...] | None) -> float:
    lo, hi = 0.05, 1000.0
    while hi - lo > 1e-5 * hi:
        mid = 0.5 * (lo + hi)
        if gaussian_epsilon(mid, q=q, steps=steps, orders=orders) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def secure_sum(encodings: list[np.ndarray], bits: int) -> np.ndarray:
    """What secure aggregation reveals: the sum mod 2^bits (done here without fedlab.secagg)."""
    total = np.zeros_like(encodings[0])
    for values in encodings:
        total = reduce_mod(total + values, bits=bits)
    return total


def unit_vectors(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    x = rng.normal(size=(m, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dme_mse(p: SkellamParams, *, trials: int, rng: np.random.Generator) -> float:
    """Mean squared error (summed over coordinates) of the decoded mean of N unit vectors."""
    errors = []
    for _ in range(trials):
        x = unit_vectors(rng, N, p.dim)
        seed = int(rng.integers(2**32))
        total = secure_sum([encode_client(row, p, seed=seed, rng=rng).values for row in x], p.bits)
        errors.append(float(np.sum((decode_mean(total, p, seed=seed) - x.mean(axis=0)) ** 2)))
    return float(np.mean(errors))


# ----------------------------------------------------------------- (1) distributed mean estimation


@pytest.mark.parametrize(("dim", "target", "trials"), [(1000, 2.0, 16), (4096, 2.0, 8), (4096, 8.0, 8)])
def test_dme_at_16_bits_is_within_5_percent_of_central_gaussian(dim: int, target: float, trials: int) -> None:
    rng = np.random.default_rng(20210716 + dim)
    z = calibrate_skellam_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=1.0, steps=1, clip=1.0,
        num_clients=N, min_survivors=N, bits=16, dim=dim, tolerance=1e-5,
    )  # fmt: skip
    # The central Gaussian at the same epsilon, same RDP orders and conversion (dp_accounting).
    z_central = calibrate_gaussian(target, q=1.0, steps=1, orders=SKELLAM_RDP_ORDERS)
    central_mse = dim * (z_central * 1.0 / N) ** 2
    ratio = dme_mse(params(noise_multiplier=z, dim=dim), trials=trials, rng=rng) / central_mse
    assert 0.95 < ratio <= 1.05, ratio
    # dp_accounting's default (fractional) orders barely change the central noise at q=1.
    z_default = calibrate_gaussian(target, q=1.0, steps=1, orders=None)
    assert z_default == pytest.approx(z_central, rel=0.01)


def test_dme_at_10_bits_is_much_worse_or_infeasible() -> None:
    rng = np.random.default_rng(10)
    dim, target = 4096, 2.0
    z = calibrate_skellam_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=1.0, steps=1, clip=1.0,
        num_clients=N, min_survivors=N, bits=10, dim=dim, tolerance=1e-4,
    )  # fmt: skip
    z_central = calibrate_gaussian(target, q=1.0, steps=1, orders=SKELLAM_RDP_ORDERS)
    ratio = dme_mse(params(noise_multiplier=z, dim=dim, bits=10), trials=4, rng=rng) / (
        dim * (z_central / N) ** 2
    )
    assert ratio > 1.5, ratio
    # With many more clients 10 bits cannot hold the sum at all.
    with pytest.raises(ValueError, match="infeasible"):
        params(bits=10, num_clients=100_000, min_survivors=100_000)
    # And rounding at 10 bits alone exceeds a small budget over many rounds, whatever the noise.
    with pytest.raises(ValueError, match="unreachable"):
        calibrate_skellam_noise_multiplier(
            target_epsilon=1.0, delta=DELTA, sample_rate=1.0, steps=1000, clip=1.0,
            num_clients=N, min_survivors=N, bits=10, dim=dim,
        )  # fmt: skip


# ----------------------------------------------------------------- (2) epsilon agrees with independent routes


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_many_bits_converge_to_the_gaussian_rdp_of_dp_accounting(steps: int) -> None:
    for z in (0.8, 1.0, 3.0):
        p = params(noise_multiplier=z, bits=40, dim=4096)
        orders = np.array(SKELLAM_RDP_ORDERS, dtype=float)
        gaussian_curve = orders / (2.0 * z * z)  # alpha D2^2 / (2 mu) with D2 = c, mu = z^2 c^2
        np.testing.assert_allclose(skellam_rdp(p, orders=orders), gaussian_curve, rtol=1e-6)
        reference = gaussian_epsilon(z, q=1.0, steps=steps, orders=SKELLAM_RDP_ORDERS)
        assert skellam_epsilon(p, steps=steps) == pytest.approx(reference, rel=1e-4)
        if steps <= 10:  # dp_accounting's finer, fractional grid: within a few % while epsilon is small
            default = gaussian_epsilon(z, q=1.0, steps=steps, orders=None)
            assert default <= skellam_epsilon(p, steps=steps) <= 1.04 * default


def test_sixteen_bits_costs_under_1_percent_epsilon_over_the_gaussian() -> None:
    for dim in (1000, 4096):
        for z in (0.7, 1.0, 4.0):
            gaussian = gaussian_epsilon(z, q=1.0, steps=1, orders=SKELLAM_RDP_ORDERS)
            skellam = skellam_epsilon(params(noise_multiplier=z, dim=dim))
            assert gaussian < skellam <= 1.01 * gaussian


def exact_skellam_divergence(alpha: int, *, variance: float, shift: int) -> float:
    """D_alpha(Sk + shift || Sk) for integer Skellam noise of ``variance``, summed over its support."""
    half = variance / 2.0
    width = shift + int(25 * math.sqrt(variance)) + 20
    k = np.arange(-width, width + 1)
    log_p = stats.skellam.logpmf(k - shift, half, half)
    log_q = stats.skellam.logpmf(k, half, half)
    terms = alpha * log_p + (1 - alpha) * log_q
    assert np.isfinite(terms).all(), "the support reaches where the pmf underflows"
    return float(special.logsumexp(terms) / (alpha - 1))


@pytest.mark.parametrize(("bits", "noise_multiplier"), [(8, 0.8), (9, 1.5), (10, 3.0)])
def test_single_round_curve_bounds_the_exact_divergence_of_a_one_coordinate_shift(
    bits: int, noise_multiplier: float
) -> None:
    # Independent route: the Renyi divergence of integer Skellam noise shifted by the largest
    # one-coordinate integer change the sensitivity allows, summed exactly over the support.
    p = SkellamParams(
        clip=1.0, noise_multiplier=noise_multiplier, num_clients=8, min_survivors=8, bits=bits, dim=4
    )
    s = p.scale
    variance = 8 * (p.local_stddev * s) ** 2  # the integer sum's noise: 8 shares
    shift = math.floor(p.l2_sensitivity * s)
    assert shift >= 3 and variance < 2e5  # a real shift, and a support small enough to sum
    for alpha in (2, 3, 5, 8):
        exact = exact_skellam_divergence(alpha, variance=variance, shift=shift)
        bound = float(skellam_rdp(p, orders=[alpha], num_survivors=8)[0])
        gaussian = alpha * shift**2 / (2 * variance)
        assert exact <= bound  # sound
        assert bound <= 1.6 * exact  # and not loose
        if variance > 400:  # a Skellam this wide is nearly Gaussian
            assert exact == pytest.approx(gaussian, rel=0.02)


def test_k_is_the_two_sided_gaussian_quantile_of_1e_minus_4() -> None:
    k = math.sqrt(2) * float(special.erfcinv(1e-4))
    assert k == pytest.approx(3.8906, abs=1e-4) and k == DEFAULT_K


def test_subsampling_bound_at_q_1_is_the_unsubsampled_curve() -> None:
    p = params(bits=12, noise_multiplier=0.9)
    orders = np.array(SKELLAM_RDP_ORDERS, dtype=float)

    def base(alphas: np.ndarray) -> np.ndarray:
        return skellam_rdp(p, orders=alphas)

    np.testing.assert_array_equal(poisson_subsampled_rdp(base, sample_rate=1.0, orders=orders), base(orders))
    previous = base(orders)
    for q in (0.5, 0.1, 0.01, 0.001):
        amplified = poisson_subsampled_rdp(base, sample_rate=q, orders=orders)
        assert np.all(amplified <= previous)  # never worse than the base, shrinks with q
        previous = amplified


def test_subsampling_bound_is_sound_and_reasonably_tight_for_the_gaussian() -> None:
    orders = np.array(SKELLAM_RDP_ORDERS, dtype=float)
    for z in (0.8, 1.5):
        for q in (0.001, 0.01, 0.1):

            def gaussian(alphas: np.ndarray, z: float = z) -> np.ndarray:
                return alphas / (2 * z * z)

            ours = poisson_subsampled_rdp(gaussian, sample_rate=q, orders=orders)
            acc = rdp_privacy_accountant.RdpAccountant(orders=list(SKELLAM_RDP_ORDERS))
            acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)))
            exact = acc.rdp
            finite = np.isfinite(exact) & (exact > 1e-12)
            # A generic bound can never beat the exact subsampled-Gaussian RDP...
            assert np.all(ours[finite] >= exact[finite] * (1 - 1e-9))
            # ...and Zhu-Wang's factor 3 costs at most 3x the RDP at every order.
            assert np.all(ours[finite] <= 3.0 * exact[finite] + 1e-12)


def test_skellam_at_many_bits_subsampled_equals_the_generic_bound_on_the_gaussian_curve() -> None:
    z, q, steps = 1.0, 0.01, 1000
    p = params(noise_multiplier=z, bits=40, dim=4096)
    orders = np.array(SKELLAM_RDP_ORDERS, dtype=float)
    generic = steps * poisson_subsampled_rdp(lambda a: a / (2 * z * z), sample_rate=q, orders=orders)
    eps_generic, _ = rdp_privacy_accountant.compute_epsilon(orders, generic, DELTA)
    eps = skellam_epsilon(p, q=q, steps=steps)
    assert eps == pytest.approx(eps_generic, rel=1e-6)
    # The price of a generic amplification bound vs the exact subsampled Gaussian (reported, bounded).
    exact = gaussian_epsilon(z, q=q, steps=steps, orders=SKELLAM_RDP_ORDERS)
    assert exact < eps < 1.25 * exact


# ----------------------------------------------------------------- (3) decoding the modular sum


def clipped_rotated_sum(x: np.ndarray, p: SkellamParams, seed: int) -> np.ndarray:
    rotated = [clip_l2(rotate(row, seed=seed), clip=p.clip)[0] for row in x]
    return unrotate(np.sum(rotated, axis=0), seed=seed, dim=p.dim)


@pytest.mark.parametrize("m", [1, 7, 60, N])
def test_noiseless_sum_decodes_to_the_plain_sum_within_the_rounding_bound(m: int) -> None:
    rng = np.random.default_rng(m)
    p = params(noise_multiplier=0.0)  # lam = 0: testing only
    assert p.local_lambda == 0.0
    direction = unit_vectors(rng, 1, p.dim)[0]
    x = np.vstack([direction * 3.0] * (m // 2) + list(unit_vectors(rng, m - m // 2, p.dim) * 0.5))
    seed = 99
    total = secure_sum([encode_client(row, p, seed=seed, rng=rng).values for row in x], p.bits)
    error = decode_sum(total, p, seed=seed) - clipped_rotated_sum(x, p, seed)
    assert np.linalg.norm(error) <= m * math.sqrt(p.padded_dim) / p.scale  # deterministic bound
    assert np.linalg.norm(error) <= 3 * math.sqrt(m * p.padded_dim / 4) / p.scale  # unbiased: ~sqrt(m)
    np.testing.assert_allclose(decode_mean(total, p, seed=seed), decode_sum(total, p, seed=seed) / N)


def test_no_wrap_around_for_n_aligned_clients_at_16_bits_with_noise() -> None:
    rng = np.random.default_rng(7)
    p = params(noise_multiplier=1.0, min_survivors=80, dim=4096)
    x = np.tile(unit_vectors(rng, 1, p.dim), (N, 1))  # worst case: all N clients aligned, norm c
    seed = 5
    total = secure_sum([encode_client(row, p, seed=seed, rng=rng).values for row in x], p.bits)
    rotated_error = rotate(decode_sum(total, p, seed=seed) - clipped_rotated_sum(x, p, seed), seed=seed)
    per_coordinate_std = math.sqrt(N * (p.local_stddev**2 + 0.25 / p.scale**2))
    # A wrapped coordinate would be off by 2^b / s, over 13 standard deviations here.
    assert (1 << p.bits) / p.scale > 13 * per_coordinate_std
    assert np.abs(rotated_error).max() < 6 * per_coordinate_std
    assert np.mean(rotated_error**2) == pytest.approx(per_coordinate_std**2, rel=0.1)


def test_scale_keeps_k_standard_deviations_of_a_sum_of_up_to_n_clients_in_range() -> None:
    for survivors in (N, 60, 10):
        p = params(min_survivors=survivors, noise_multiplier=2.0)
        s, n = p.scale, p.num_clients
        std = math.sqrt(n * n * (p.clip * s) ** 2 / p.padded_dim + n * (p.local_stddev * s) ** 2 + n / 4)
        assert p.k * std == pytest.approx(2 ** (p.bits - 1), rel=1e-9)


def test_encoding_is_integers_mod_2_to_the_bits_with_privacy_metrics() -> None:
    rng = np.random.default_rng(3)
    p = params(dim=30, bits=12)
    big = np.full((5, 6), 2.0)  # any shape with dim values; norm > c
    enc = encode_client(big, p, seed=1, rng=rng)
    assert enc.values.dtype == np.int64 and enc.values.shape == (32,)
    assert enc.values.min() >= 0 and enc.values.max() < 2**12
    assert enc.was_clipped and enc.norm == pytest.approx(np.linalg.norm(big))
    assert enc.rounded_norm <= p.rounded_norm_bound and enc.rounding_attempts >= 1
    small = encode_client(np.full(30, 0.01), p, seed=1, rng=rng)
    assert not small.was_clipped
    with pytest.raises(ValueError, match="values"):
        encode_client(np.ones(29), p, seed=1, rng=rng)
    with pytest.raises(ValueError, match="NaN"):
        encode_client(np.full(30, np.nan), p, seed=1, rng=rng)
    with pytest.raises(ValueError, match="shape"):
        decode_sum(np.zeros(30, dtype=np.int64), p, seed=1)
    with pytest.raises(ValueError, match="integers"):
        decode_sum(np.zeros(32), p, seed=1)
    # uint64 residues (what fedlab.secagg's ring returns) decode too.
    decode_sum(enc.values.astype(np.uint64), p, seed=1)


def test_centre_and_reduce_mod_are_inverse_on_the_centred_range() -> None:
    values = np.arange(-(2**9), 2**9, dtype=np.int64)
    np.testing.assert_array_equal(centre(reduce_mod(values, bits=10), bits=10), values)
    np.testing.assert_array_equal(centre(values + 2**10 * 7, bits=10), values)


# ----------------------------------------------------------------- (4) conditional rounding


def test_conditional_rounding_keeps_the_norm_within_its_bound() -> None:
    rng = np.random.default_rng(4)
    p = params(dim=256, bits=10, noise_multiplier=1.0)
    bound = p.rounded_norm_bound
    # Half-integer coordinates maximise rounding variance: plain rounding often exceeds the bound.
    magnitudes = np.where(np.arange(256) < 183, 1.5, 0.5)
    v = rng.permutation(magnitudes) * rng.choice([-1.0, 1.0], size=256)
    assert np.linalg.norm(v) <= p.clip * p.scale  # a legitimately clipped, scaled vector
    plain_exceed, attempts, draws = 0, [], []
    for _ in range(400):
        plain = np.floor(v) + (rng.random(v.shape) < v - np.floor(v))
        plain_exceed += np.linalg.norm(plain) > bound
        rounded, used = conditional_stochastic_round(v, bound=bound, rng=rng)
        assert np.linalg.norm(rounded) <= bound
        attempts.append(used)
        draws.append(rounded)
    assert plain_exceed > 0 and max(attempts) > 1  # the condition does bite
    assert np.mean(attempts) < 1 / (1 - DEFAULT_BETA)  # each draw fails w.p. <= beta
    assert np.abs(np.mean(draws, axis=0) - v).max() < 0.25  # nearly unbiased
    with pytest.raises(RuntimeError, match="attempts"):
        conditional_stochastic_round(v, bound=1.0, rng=rng, max_attempts=3)


def test_plain_stochastic_rounding_bound_is_deterministic() -> None:
    p = params(beta=0.0, bits=12)
    assert p.rounded_norm_bound == pytest.approx(p.clip * p.scale + math.sqrt(p.padded_dim))
    assert params(bits=12).rounded_norm_bound < p.rounded_norm_bound


# ----------------------------------------------------------------- (5) calibration never overshoots


@pytest.mark.parametrize(
    ("target", "q", "steps", "bits", "survivors"),
    [(1.0, 1.0, 1, 16, N), (4.0, 0.01, 500, 16, 80), (0.5, 0.05, 50, 12, 60), (8.0, 0.1, 200, 14, N)],
)
def test_calibration_never_overshoots_and_is_tight(
    target: float, q: float, steps: int, bits: int, survivors: int
) -> None:
    tolerance = 1e-3
    z = calibrate_skellam_noise_multiplier(
        target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps, clip=1.0,
        num_clients=N, min_survivors=survivors, bits=bits, dim=1000, tolerance=tolerance,
    )  # fmt: skip
    p = params(noise_multiplier=z, bits=bits, min_survivors=survivors)
    assert skellam_epsilon(p, q=q, steps=steps) <= target
    smaller = p.with_noise_multiplier(z * (1 - 2 * tolerance))
    assert skellam_epsilon(smaller, q=q, steps=steps) > target


def test_calibration_rejects_bad_arguments() -> None:
    base: dict[str, Any] = {
        "target_epsilon": 1.0, "delta": DELTA, "sample_rate": 1.0, "steps": 1, "clip": 1.0,
        "num_clients": N, "min_survivors": N, "bits": 16, "dim": 10,
    }  # fmt: skip
    with pytest.raises(ValueError, match="target_epsilon"):
        calibrate_skellam_noise_multiplier(**{**base, "target_epsilon": 0.0})
    with pytest.raises(ValueError, match="sample_rate"):
        calibrate_skellam_noise_multiplier(**{**base, "sample_rate": 0.0})
    with pytest.raises(ValueError, match="infeasible"):
        calibrate_skellam_noise_multiplier(
            **{**base, "bits": 8, "num_clients": 10**4, "min_survivors": 10**4}
        )


# ----------------------------------------------------------------- (6) survivors and the accountant


def test_too_few_survivors_is_detectable_and_costs_privacy() -> None:
    p = params(min_survivors=80)
    assert noise_is_sufficient(80, p) and noise_is_sufficient(N, p)
    assert not noise_is_sufficient(79, p)
    at_min = skellam_epsilon(p)
    assert skellam_epsilon(p, survivors=N) < at_min < skellam_epsilon(p, survivors=60)
    # Calibrating for fewer survivors adds noise per client so that n_min of them reach the target.
    assert params(min_survivors=50).local_stddev == pytest.approx(math.sqrt(2) * params().local_stddev)


def test_accountant_composes_saves_and_restores() -> None:
    p = params(bits=14)
    acc = SkellamAccountant()
    assert acc.epsilon(delta=DELTA) == 0.0 and acc.delta(epsilon=1.0) == 0.0
    for _ in range(3):
        acc.compose(SkellamEvent(params=p, sample_rate=0.1, steps=10))
    acc.compose(SkellamEvent(params=p, sample_rate=0.1, steps=5, num_survivors=90))
    once = SkellamAccountant()
    once.compose(SkellamEvent(params=p, sample_rate=0.1, steps=30))
    once.compose(SkellamEvent(params=p, sample_rate=0.1, steps=5, num_survivors=90))
    eps = acc.epsilon(delta=DELTA)
    assert eps == pytest.approx(once.epsilon(delta=DELTA), rel=1e-12)
    assert acc.delta(epsilon=eps) == pytest.approx(DELTA, rel=1e-6)
    restored = SkellamAccountant()
    restored.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.events() == acc.events()
    assert restored.epsilon(delta=DELTA) == eps
    with pytest.raises(ValueError, match="accountant"):
        restored.load_state_dict({"accountant": "rdp", "version": 1, "events": []})
    with pytest.raises(TypeError):
        acc.compose(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delta"):
        acc.epsilon(delta=0.0)


def test_no_noise_means_no_privacy() -> None:
    assert math.isinf(skellam_epsilon(params(noise_multiplier=0.0)))


def test_skellam_noise_statistics() -> None:
    rng = np.random.default_rng(11)
    for lam in (0.3, 40.0, 5e4):
        noise = skellam_noise(200_000, lam=lam, rng=rng)
        assert noise.dtype == np.int64
        assert abs(noise.mean()) < 5 * math.sqrt(2 * lam / noise.size)
        assert noise.var() == pytest.approx(2 * lam, rel=0.02)
    assert not np.any(skellam_noise(10, lam=0.0, rng=rng))
    a = skellam_noise(50, lam=3.0, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, skellam_noise(50, lam=3.0, rng=np.random.default_rng(1)))
    with pytest.raises(ValueError, match="lam"):
        skellam_noise(3, lam=-1.0, rng=rng)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"clip": 0.0}, "clip"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"min_survivors": N + 1}, "min_survivors"),
        ({"bits": 63}, "bits"),
        ({"beta": 1.0}, "beta"),
        ({"dim": 0}, "dim"),
        ({"num_clients": 1.5}, "num_clients"),
    ],
)
def test_invalid_parameters_are_refused(overrides: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        params(**overrides)


def test_params_and_events_round_trip_through_dicts() -> None:
    p = params(min_survivors=70, bits=20)
    assert SkellamParams.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    e = SkellamEvent(params=p, sample_rate=0.2, steps=3)
    assert e.num_survivors == 70
    assert SkellamEvent.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(ValueError, match="keys"):
        SkellamParams.from_dict({"clip": 1.0})
