"""Calibration never overshoots the budget and is tight."""

import pytest

from fedlab.privacy import GaussianEvent, calibrate_noise_multiplier, epsilon_of
from fedlab.privacy.calibration import MIN_NOISE_MULTIPLIER


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
