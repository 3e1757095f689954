"""The budget check every accountant answers: which events it composes, and would more exceed a budget."""

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedlab.privacy import GaussianEvent, PldAccountant, RdpAccountant, RepeatedEventAccountant
from fedlab.privacy.prv import PrvAccountant
from fedlab.privacy.skellam import SkellamAccountant, SkellamEvent, SkellamParams

SKELLAM = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=100, min_survivors=100, bits=16, dim=1024)


def gaussian(z: float, steps: int = 1, q: float = 1.0) -> GaussianEvent:
    return GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps)


def gaussian_accountants():
    return [
        PldAccountant(value_discretization_interval=1e-3),
        PrvAccountant(),
        RdpAccountant(),
        RepeatedEventAccountant(gaussian(2.0), accountant="rdp"),
    ]


LOOSENESS = {"pld": 1.01, "prv": 1.01, "rdp": 1.1}
"""How far above the exact epsilon each accountant's upper bound may lie here (RDP is looser)."""


def analytic_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of one unsampled Gaussian release (Balle & Wang 2018), by root finding."""

    def delta_of(eps: float) -> float:
        return norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * norm.cdf(-0.5 / sigma - eps * sigma)

    return float(brentq(lambda eps: delta_of(eps) - delta, 0.0, 500.0, xtol=1e-12))


@pytest.mark.parametrize("acc", gaussian_accountants(), ids=lambda a: type(a).__name__)
def test_the_check_brackets_the_exact_analytic_epsilon(acc) -> None:
    # Two unsampled releases at sigma 2 are one release at sigma 2 / sqrt(2): an exact answer.
    exact = analytic_epsilon(2.0 / math.sqrt(2.0), 1e-5)
    acc.compose(gaussian(2.0))
    assert not acc.would_exceed(gaussian(2.0), max_epsilon=exact * LOOSENESS[acc.name], delta=1e-5)
    assert acc.would_exceed(gaussian(2.0), max_epsilon=exact * 0.999, delta=1e-5)  # an upper bound


@pytest.mark.parametrize("acc", gaussian_accountants(), ids=lambda a: type(a).__name__)
def test_asking_composes_nothing_and_no_event_asks_about_the_history(acc) -> None:
    acc.compose(gaussian(2.0))
    before = (acc.events(), acc.epsilon(delta=1e-5))
    assert acc.would_exceed(gaussian(2.0), max_epsilon=before[1], delta=1e-5)  # more always costs more
    assert (acc.events(), acc.epsilon(delta=1e-5)) == before
    assert not acc.would_exceed(max_epsilon=before[1], delta=1e-5)
    assert acc.would_exceed(max_epsilon=before[1] * (1 - 1e-6), delta=1e-5)


@pytest.mark.parametrize("acc", gaussian_accountants(), ids=lambda a: type(a).__name__)
def test_checking_then_composing_gives_the_epsilon_checked(acc) -> None:
    planned = acc.epsilon_after(gaussian(2.0), gaussian(2.0), delta=1e-5)
    acc.compose(gaussian(2.0))
    acc.compose(gaussian(2.0))
    assert acc.epsilon(delta=1e-5) == planned


@pytest.mark.parametrize(
    "acc", [*gaussian_accountants(), SkellamAccountant()], ids=lambda a: type(a).__name__
)
def test_the_budget_must_be_positive(acc) -> None:
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="max_epsilon"):
            acc.would_exceed(max_epsilon=bad, delta=1e-5)


def test_each_accountant_supports_its_own_family_only() -> None:
    skellam = SkellamEvent(params=SKELLAM, sample_rate=1.0, steps=1)
    for acc in (PldAccountant(), PrvAccountant(), RdpAccountant()):
        assert acc.supports(gaussian(1.0)) and not acc.supports(skellam)
        with pytest.raises(TypeError):
            acc.would_exceed(skellam, max_epsilon=1.0, delta=1e-5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            acc.compose(skellam)  # type: ignore[arg-type]
    acc = SkellamAccountant()
    assert acc.supports(skellam) and not acc.supports(gaussian(1.0))
    with pytest.raises(TypeError):
        acc.would_exceed(gaussian(1.0), max_epsilon=1.0, delta=1e-5)  # type: ignore[arg-type]


def test_the_skellam_check_at_its_known_answer() -> None:
    # One round of the documented setting costs epsilon 4.75 at delta 1e-5 (SkellamAccountant's example).
    event = SkellamEvent(params=SKELLAM, sample_rate=1.0, steps=1)
    acc = SkellamAccountant()
    assert not acc.would_exceed(event, max_epsilon=4.76, delta=1e-5)
    assert acc.would_exceed(event, max_epsilon=4.74, delta=1e-5)
    acc.compose(event)
    # A second identical round is the same as composing two steps at once.
    twice = SkellamAccountant()
    twice.compose(SkellamEvent(params=SKELLAM, sample_rate=1.0, steps=2))
    assert acc.epsilon_after(event, delta=1e-5) == pytest.approx(twice.epsilon(delta=1e-5), rel=1e-12)


def test_a_noiseless_release_exceeds_every_finite_budget() -> None:
    acc = RdpAccountant()
    assert acc.would_exceed(gaussian(0.0), max_epsilon=1e12, delta=1e-5)
    assert not acc.would_exceed(gaussian(0.0), max_epsilon=math.inf, delta=1e-5)
