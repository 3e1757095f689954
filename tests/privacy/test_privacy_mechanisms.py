"""Gaussian mechanism of DP-FedAvg: clipping bound, server check, statistics of the noise, events."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedlab.core.update import Update
from fedlab.privacy.mechanisms import ClipStats, GaussianMechanism, clipped_sum


def update_of(*arrays: np.ndarray, weight: float = 1.0) -> Update:
    return Update(tuple(arrays), num_examples=10, weight=weight)


def chi_square_interval(n: int, *, level: float = 1e-6) -> tuple[float, float]:
    """Bounds on sample variance / true variance for n draws (two-sided, total miss prob `level`)."""
    return stats.chi2.ppf(level / 2, n) / n, stats.chi2.ppf(1 - level / 2, n) / n


# --- the noise the server adds ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("z", "clip", "denominator"), [(1.1, 1.0, 100.0), (0.7, 0.25, 12.5), (3.0, 2.0, 1.0)]
)
def test_noise_on_zero_updates_has_the_stated_std_and_zero_mean(z: float, clip: float, denominator: float):
    mech = GaussianMechanism(clip_norm=clip, noise_multiplier=z)
    shapes = [(300, 400), (80_000,)]
    total, _ = clipped_sum([update_of(*(np.zeros(s) for s in shapes))] * 5, mech)
    out = mech.add_noise(total, denominator=denominator, rng=np.random.default_rng(20240611))
    values = np.concatenate([a.ravel() for a in out])
    n = values.size
    expected = z * clip / denominator
    assert mech.noise_std(denominator=denominator) == pytest.approx(expected, rel=1e-15)
    low, high = chi_square_interval(n)
    assert low <= np.mean(values**2) / expected**2 <= high  # mean is known (0): chi-square with n dof
    assert abs(np.mean(values)) <= 5.0 * expected / math.sqrt(n)
    # and it is Gaussian, not merely of the right variance
    assert stats.kstest(values[:20_000] / expected, "norm").pvalue > 1e-4


def test_noise_is_added_once_to_the_sum_not_per_client():
    # The noise std of the release does not depend on how many clients were summed.
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    stds = []
    for cohort in (1, 10, 100):
        total, stats_ = clipped_sum([update_of(np.zeros(20_000))] * cohort, mech)
        assert stats_.count == cohort
        out = mech.add_noise(total, denominator=50.0, rng=np.random.default_rng(cohort))
        stds.append(float(np.std(out[0])))
    assert stds == pytest.approx([1.0 / 50.0] * 3, rel=0.03)


def test_noise_is_centred_on_the_true_average():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.5)
    total = [np.full(400_000, 3.0)]
    out = mech.add_noise(total, denominator=4.0, rng=np.random.default_rng(1))[0]
    assert abs(np.mean(out) - 0.75) <= 5 * mech.noise_std(denominator=4.0) / math.sqrt(out.size)


def test_seeded_generator_reproduces_and_different_seeds_differ():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    total = [np.zeros(1000), np.zeros((3, 3))]
    a = mech.add_noise(total, denominator=10.0, rng=np.random.default_rng(7))
    b = mech.add_noise(total, denominator=10.0, rng=np.random.default_rng(7))
    c = mech.add_noise(total, denominator=10.0, rng=np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    assert [x.shape for x in a] == [(1000,), (3, 3)]


def test_add_noise_keeps_float32_and_refuses_a_global_rng():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    out = mech.add_noise([np.zeros(4, dtype=np.float32)], denominator=1.0, rng=np.random.default_rng(0))
    assert out[0].dtype == np.float32
    with pytest.raises(TypeError, match="Generator"):
        mech.add_noise([np.zeros(4)], denominator=1.0, rng=np.random)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mech.add_noise([np.zeros(4)], 1.0, np.random.default_rng(0))  # type: ignore[misc]
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="denominator"):
            mech.add_noise([np.zeros(4)], denominator=bad, rng=np.random.default_rng(0))


def test_zero_noise_multiplier_only_averages():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.0)
    out = mech.add_noise([np.array([1.0, 2.0])], denominator=2.0, rng=np.random.default_rng(0))
    assert out[0].tolist() == [0.5, 1.0]


# --- clipping ----------------------------------------------------------------------------------


arrays_strategy = st.lists(
    st.tuples(st.integers(1, 50), st.sampled_from([np.float32, np.float64])), min_size=1, max_size=4
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    layout=arrays_strategy,
    scale=st.floats(1e-6, 1e6),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_clipped_norm_is_at_most_c_and_direction_is_kept(layout, scale, clip, seed):
    rng = np.random.default_rng(seed)
    arrays = [(rng.standard_normal(n) * scale).astype(dtype) for n, dtype in layout]
    update = update_of(*arrays, weight=0.3)
    result = GaussianMechanism(clip_norm=clip, noise_multiplier=1.0).clip(update)
    assert result.update.l2_norm() <= clip
    assert result.norm == pytest.approx(update.l2_norm())
    assert result.clipped == (update.l2_norm() > clip)
    assert [a.dtype for a in result.update.arrays] == [a.dtype for a in arrays]
    assert (result.update.weight, result.update.num_examples) == (0.3, 10)
    flat_in = np.concatenate([a.astype(np.float64) for a in arrays])
    flat_out = np.concatenate([a.astype(np.float64) for a in result.update.arrays])
    if result.clipped:
        cosine = flat_in @ flat_out / (np.linalg.norm(flat_in) * np.linalg.norm(flat_out))
        assert cosine == pytest.approx(1.0, abs=1e-6)
        assert result.update.l2_norm() == pytest.approx(clip, rel=1e-5)
    else:
        assert result.update is update


def test_clip_refuses_non_finite_updates():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="NaN"):
        mech.clip(update_of(np.array([1.0, np.nan])))


# --- the server's check of what it received ----------------------------------------------------


def test_check_bound_rejects_an_update_over_c_naming_its_norm():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"L2 norm 5 exceeds the clip norm 1"):
        mech.check_bound(update_of(np.array([3.0]), np.array([4.0])))
    with pytest.raises(ValueError, match="NaN"):
        mech.check_bound(update_of(np.array([np.inf])))


def test_check_bound_accepts_clipped_updates_and_rounding_slack():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    rng = np.random.default_rng(3)
    for _ in range(20):
        raw = update_of(rng.standard_normal(100).astype(np.float32) * 10)
        mech.check_bound(mech.clip(raw).update)  # what an honest client sends passes
    mech.check_bound(update_of(np.array([1.0 + 5e-7])))  # within the relative tolerance
    with pytest.raises(ValueError):
        mech.check_bound(update_of(np.array([1.0 + 5e-7])), tolerance=0.0)
    with pytest.raises(ValueError, match="tolerance"):
        mech.check_bound(update_of(np.array([0.5])), tolerance=0.1)


# --- summing and its metrics --------------------------------------------------------------------


def test_clipped_sum_returns_metrics_as_values():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    ups = [update_of(np.array([3.0, 4.0])), update_of(np.array([0.6, 0.8])), update_of(np.array([0.0, 2.0]))]
    total, stats_ = clipped_sum(ups, mech)
    assert total[0].tolist() == pytest.approx([0.6 + 0.6, 0.8 + 0.8 + 1.0])
    assert stats_ == ClipStats(
        count=3, fraction_clipped=2 / 3, mean_norm=pytest.approx(8 / 3), max_norm=5.0, clip_norm=1.0
    )


def test_empty_cohort_still_releases_noise_with_known_shapes():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    total, stats_ = clipped_sum([], mech, shapes=[(2, 3)])
    assert total[0].shape == (2, 3) and not total[0].any()
    assert stats_.count == 0 and stats_.fraction_clipped == 0.0
    with pytest.raises(ValueError, match="shapes"):
        clipped_sum([], mech)
    with pytest.raises(ValueError, match="shapes"):
        clipped_sum([update_of(np.zeros(2)), update_of(np.zeros(3))], mech)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=8),
    weighted=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_one_client_changes_the_sum_by_at_most_c(weights, weighted, seed):
    # The sensitivity the accountant assumes, uniform or with weights in [0, 1].
    rng = np.random.default_rng(seed)
    clip = 0.8
    mech = GaussianMechanism(clip_norm=clip, noise_multiplier=1.0)
    ups = [update_of(rng.standard_normal(20) * rng.uniform(0.1, 5), weight=w) for w in weights]
    full, _ = clipped_sum(ups, mech, weighted=weighted)
    for k in range(len(ups)):
        without, _ = clipped_sum(ups[:k] + ups[k + 1 :], mech, weighted=weighted)
        assert np.linalg.norm(full[0] - without[0]) <= clip * (1 + 1e-12)


def test_weighted_sum_refuses_weights_outside_unit_interval():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clipped_sum([update_of(np.ones(2), weight=120.0)], mech, weighted=True)
    clipped_sum([update_of(np.ones(2), weight=120.0)], mech)  # uniform ignores the weight


# --- validation ---------------------------------------------------------------------


def test_mechanism_validates_and_is_keyword_only():
    with pytest.raises(TypeError):
        GaussianMechanism(1.0, 1.0)  # type: ignore[misc]
    for clip, z in [(0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (1.0, -0.1), (1.0, math.nan)]:
        with pytest.raises(ValueError):
            GaussianMechanism(clip_norm=clip, noise_multiplier=z)
