"""Calibration never overshoots the budget and is tight."""

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedlab.privacy import GaussianEvent, calibrate, calibrate_noise_multiplier, epsilon_of
from fedlab.privacy.calibration import MIN_NOISE_MULTIPLIER, NUDGE, Bisection


def spent(z: float, *, q: float, steps: int, delta: float, accountant: str) -> float:
    return epsilon_of(
        [GaussianEvent(noise_multiplier=z, sample_rate=q, steps=steps)], delta=delta, accountant=accountant
    )


def check_calibration(
    *, target: float, q: float, steps: int, delta: float, accountant: str, tolerance: float
) -> float:
    z = calibrate_noise_multiplier(
        target_epsilon=target,
        delta=delta,
        sample_rate=q,
        steps=steps,
        accountant=accountant,
        tolerance=tolerance,
    )
    never_overshoots = spent(z, q=q, steps=steps, delta=delta, accountant=accountant)
    assert never_overshoots <= target
    just_below = spent(z * (1 - tolerance), q=q, steps=steps, delta=delta, accountant=accountant)
    assert just_below > target  # tight: a relative tolerance less noise overshoots
    return z


# (q, steps, delta): cross-silo DP-SGD, cross-device DP-FedAvg, full batch.
SETTINGS = [(0.04, 2250, 1e-5), (1e-3, 2000, 1e-6), (1.0, 20, 1e-5)]


@pytest.mark.parametrize(("q", "steps", "delta"), SETTINGS)
@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_rdp_calibration_never_overshoots_and_is_tight(
    target: float, q: float, steps: int, delta: float
) -> None:
    check_calibration(target=target, q=q, steps=steps, delta=delta, accountant="rdp", tolerance=1e-2)


@pytest.mark.parametrize(
    ("target", "q", "steps", "delta"),
    [(1.0, 1e-3, 2000, 1e-6), (8.0, 0.04, 2250, 1e-5), (2.0, 1.0, 20, 1e-5)],
)
def test_pld_calibration_never_overshoots_and_is_tight(
    target: float, q: float, steps: int, delta: float
) -> None:
    check_calibration(target=target, q=q, steps=steps, delta=delta, accountant="pld", tolerance=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("target", [0.1, 0.3, 0.7, 1.5, 3.0, 5.0, 10.0, 20.0])
@pytest.mark.parametrize(("q", "steps", "delta"), [*SETTINGS, (0.01, 10_000, 1e-8), (0.2, 100, 1e-5)])
def test_calibration_grid_never_overshoots(
    accountant: str, target: float, q: float, steps: int, delta: float
) -> None:
    check_calibration(target=target, q=q, steps=steps, delta=delta, accountant=accountant, tolerance=1e-3)


def test_recovers_opacus_known_answer() -> None:
    # Opacus' known answer: sigma=1.5 gives 7.329 (RDP); calibrating for it gives sigma back.
    z = calibrate_noise_multiplier(
        target_epsilon=7.32911117143, delta=1e-5, sample_rate=0.04, steps=2250, accountant="rdp"
    )
    assert z == pytest.approx(1.5, rel=2e-3)


def test_pld_needs_less_noise_than_rdp() -> None:
    kwargs = {"target_epsilon": 1.0, "delta": 1e-6, "sample_rate": 1e-3, "steps": 2000}
    pld = calibrate_noise_multiplier(**kwargs, accountant="pld")  # type: ignore[arg-type]
    rdp = calibrate_noise_multiplier(**kwargs, accountant="rdp")  # type: ignore[arg-type]
    assert pld < 0.8 * rdp


def test_unreachable_target_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        calibrate_noise_multiplier(
            target_epsilon=1e-9, delta=1e-10, sample_rate=1.0, steps=1000, accountant="rdp"
        )


def test_huge_target_returns_search_floor_without_overshooting() -> None:
    z = calibrate_noise_multiplier(target_epsilon=1e4, delta=1e-5, sample_rate=1.0, steps=1, accountant="rdp")
    assert z == MIN_NOISE_MULTIPLIER
    assert spent(z, q=1.0, steps=1, delta=1e-5, accountant="rdp") <= 1e4


def test_arguments_are_keyword_only_and_validated() -> None:
    with pytest.raises(TypeError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100)  # type: ignore[misc]
    good = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    for key, bad in [
        ("target_epsilon", 0.0),
        ("target_epsilon", float("inf")),
        ("delta", 0.0),
        ("delta", 1.0),
        ("sample_rate", 0.0),
        ("steps", 0),
        ("tolerance", 0.0),
        ("accountant", "gdp"),
    ]:
        with pytest.raises(ValueError, match=key if key != "accountant" else "unknown accountant"):
            calibrate_noise_multiplier(**{**good, key: bad})  # type: ignore[arg-type]


# --- the one calibration function ------------------------------------------------------------------


class ToyAccountant:
    """Epsilon c / z of a release at noise multiplier z: the exact answer to calibrating is c / target."""

    def __init__(self) -> None:
        self.spent = 0.0

    def compose(self, event: float) -> None:
        self.spent += SCALE / event

    def epsilon(self, *, delta: float) -> float:
        del delta
        return self.spent


SCALE = 3.0


def identity(z: float) -> float:
    return z


@pytest.mark.parametrize("target", [0.05, 0.7, 3.0, 11.0])
@pytest.mark.parametrize("tolerance", [1e-3, 1e-2, 0.3])
def test_calibrate_is_within_tolerance_above_the_exact_answer(target: float, tolerance: float) -> None:
    exact = SCALE / target
    z = calibrate(
        ToyAccountant, identity, target_epsilon=target, delta=1e-5, search=Bisection(tolerance=tolerance)
    )
    assert SCALE / z <= target  # never overshoots
    assert exact <= z <= exact / (1 - tolerance)  # tight: within the tolerance of the exact answer


def test_calibrate_raises_a_proposal_that_overshoots_until_it_meets_the_target() -> None:
    def too_small(epsilon, *, target):  # a search that proposes 10% less than what is needed
        return 0.9 * SCALE / target

    z = calibrate(ToyAccountant, identity, target_epsilon=2.0, delta=1e-5, search=too_small)
    assert SCALE / z <= 2.0 < SCALE / (z / NUDGE)  # the first nudge that meets it, not a later one


def test_calibrate_gives_up_after_the_last_nudge_and_reports_unreachable_targets() -> None:
    with pytest.raises(ValueError, match="could not find"):
        calibrate(ToyAccountant, identity, target_epsilon=1.0, delta=1e-5, search=lambda e, *, target: 1e-9)
    with pytest.raises(ValueError, match=r"unreachable.*raise bits"):
        calibrate(
            ToyAccountant, identity, target_epsilon=1.0, delta=1e-5,
            search=lambda e, *, target: None, hint="raise bits",
        )  # fmt: skip


def test_calibrate_evaluates_each_noise_multiplier_once() -> None:
    asked: list[float] = []

    def recorded(z: float) -> float:
        asked.append(z)
        return z

    calibrate(ToyAccountant, recorded, target_epsilon=0.7, delta=1e-5)
    assert len(asked) == len(set(asked))


def test_calibrate_validates_the_target_and_delta() -> None:
    for key, bad in [("target_epsilon", 0.0), ("target_epsilon", math.inf), ("delta", 0.0), ("delta", 1.0)]:
        kwargs = {"target_epsilon": 1.0, "delta": 1e-5, key: bad}
        with pytest.raises(ValueError, match=key):
            calibrate(ToyAccountant, identity, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        Bisection(tolerance=0.0)


@pytest.mark.parametrize("target", [0.5, 1.0, 4.0])
def test_gaussian_calibration_recovers_the_exact_analytic_noise(target: float) -> None:
    # One unsampled Gaussian release: the exact (epsilon, delta) curve is analytic (Balle & Wang 2018).
    def delta_of(sigma: float) -> float:
        return norm.cdf(0.5 / sigma - target * sigma) - math.exp(target) * norm.cdf(
            -0.5 / sigma - target * sigma
        )

    exact = brentq(lambda sigma: delta_of(sigma) - 1e-5, 0.1, 100.0, xtol=1e-12)
    z = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=1.0, steps=1, accountant="pld"
    )
    assert z == pytest.approx(exact, rel=3e-3)
