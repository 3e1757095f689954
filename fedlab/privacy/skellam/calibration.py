"""Calibration of the Skellam noise multiplier to an (epsilon, delta) budget."""

from __future__ import annotations

from fedlab.privacy.calibration import Bisection, calibrate
from fedlab.privacy.skellam.accountant import SkellamAccountant
from fedlab.privacy.skellam.event import SkellamEvent
from fedlab.privacy.skellam.params import DEFAULT_BETA, DEFAULT_K, SkellamParams

__all__ = ["calibrate_skellam_noise_multiplier"]

_MIN_NOISE_MULTIPLIER = 0.05


def calibrate_skellam_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    clip: float,
    num_clients: int,
    min_survivors: int,
    bits: int,
    dim: int,
    beta: float = DEFAULT_BETA,
    k: float = DEFAULT_K,
    tolerance: float = 1e-3,
) -> float:
    """Returns the smallest noise multiplier found whose Skellam epsilon is at most the target.

    :func:`~fedlab.privacy.calibration.calibrate` with a
    :class:`~fedlab.privacy.calibration.Bisection` on z (floor 0.05), epsilon evaluated by
    :class:`SkellamAccountant` with ``min_survivors`` survivors, so the result never overshoots
    the budget; z smaller by the relative ``tolerance`` exceeds it.

    Args:
        target_epsilon: The budget, > 0.
        delta: Target delta, in (0, 1).
        sample_rate: Poisson sampling probability per round, in (0, 1].
        steps: Number of rounds, >= 1.
        clip: L2 clip c.
        num_clients: Largest cohort n.
        min_survivors: Fewest survivors n_min of a released round.
        bits: Modulus bits b.
        dim: Update dimension d.
        beta: Conditional-rounding parameter.
        k: Wrap-around standard deviations.
        tolerance: Relative precision on z, in (0, 0.5].

    Returns:
        The noise multiplier z.

    Raises:
        ValueError: If an argument is invalid, the configuration is infeasible, or
            the target needs z above 1e6 (e.g. too few bits: rounding alone costs it).

    Example:
        >>> z = calibrate_skellam_noise_multiplier(
        ...     target_epsilon=4.75, delta=1e-5, sample_rate=1.0, steps=1, clip=1.0,
        ...     num_clients=100, min_survivors=100, bits=16, dim=1024)
        >>> round(z, 2)
        1.0

    """
    template = SkellamParams(
        clip=clip, noise_multiplier=1.0, num_clients=num_clients, min_survivors=min_survivors,
        bits=bits, dim=dim, beta=beta, k=k,
    )  # fmt: skip

    def release(noise_multiplier: float) -> SkellamEvent:
        params = template.with_noise_multiplier(noise_multiplier)
        return SkellamEvent(params=params, sample_rate=sample_rate, steps=steps)

    release(1.0)  # validates q and steps
    return calibrate(
        SkellamAccountant,
        release,
        target_epsilon=target_epsilon,
        delta=delta,
        search=Bisection(tolerance=tolerance, floor=_MIN_NOISE_MULTIPLIER),
        hint="rounding with too few bits, or too many steps; raise bits or the target",
    )
