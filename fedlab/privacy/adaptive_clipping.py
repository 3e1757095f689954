"""Quantile-based adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy 2021).

The clip norm C follows a target quantile gamma of the clients' update norms
by geometric updates on a privately estimated fraction of unclipped updates:

- client: report b_i = 1[||delta_i|| <= C] - 1/2 (:func:`norm_indicator`), along
  with the update clipped to the *current* C;
- server: b = (sum_i b_i + N(0, sigma_b^2)) / m + 1/2 with m the expected
  number of clients (fixed, like the update denominator), then
  C <- C * exp(-eta * (b - gamma)) (:func:`update_clip_norm`).

If fewer than gamma of the updates are unclipped (b < gamma), C grows; if more,
it shrinks: it moves toward the quantile from both sides (unlike Flower's
wrappers, which move it the wrong way).

Privacy: the indicator sum has sensitivity 1/2 (b_i is +-1/2), so with noise
sigma_b it is a Gaussian release with noise multiplier 2*sigma_b. Released
together with the update sum (noise multiplier z_delta), the pair is one
Gaussian mechanism with noise multiplier z where
z^-2 = z_delta^-2 + (2 sigma_b)^-2. To spend exactly the budget of a plain
round with noise multiplier z, noise the updates with the *larger*
z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2 (:func:`split_noise_multiplier`) and
account one ``GaussianEvent(noise_multiplier=z)`` per round (:func:`round_event`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from fedlab.core.update import Update
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.mechanisms import GaussianMechanism
from fedlab.privacy.secure_random import RandomStream, SecureRandom


@dataclass(frozen=True, kw_only=True)
class AdaptiveClipState:
    """The adaptive clip norm and its fixed parameters (a value: each round returns a new one).

    Attributes:
        clip_norm: The current clip norm C, > 0.
        target_quantile: gamma, the fraction of updates meant to be unclipped, in (0, 1).
        learning_rate: eta, the geometric step size, > 0 (0.2 in the paper).
        count_noise_std: sigma_b, the noise on the sum of indicators, >= 0
            (the paper uses m/20 for m expected clients).

    Example:
        >>> AdaptiveClipState(clip_norm=0.1, target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0)
        AdaptiveClipState(clip_norm=0.1, target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0)

    """

    clip_norm: float
    target_quantile: float
    learning_rate: float
    count_noise_std: float

    def __post_init__(self) -> None:
        _require(self.clip_norm, "clip_norm", lambda v: v > 0.0, "finite and > 0")
        _require(self.target_quantile, "target_quantile", lambda v: 0.0 < v < 1.0, "in (0, 1)")
        _require(self.learning_rate, "learning_rate", lambda v: v > 0.0, "finite and > 0")
        _require(self.count_noise_std, "count_noise_std", lambda v: v >= 0.0, "finite and >= 0")
        for name in ("clip_norm", "target_quantile", "learning_rate", "count_noise_std"):
            object.__setattr__(self, name, float(getattr(self, name)))


def norm_indicator(*, update_norm: float, clip_norm: float) -> float:
    """Returns the client's indicator b_i = 1[norm <= C] - 1/2 (computed before clipping).

    Args:
        update_norm: The L2 norm of the client's unclipped update.
        clip_norm: The current clip norm C.

    Returns:
        +0.5 if the update is within the bound, -0.5 if it will be clipped.

    Example:
        >>> norm_indicator(update_norm=0.3, clip_norm=1.0), norm_indicator(update_norm=3.0, clip_norm=1.0)
        (0.5, -0.5)

    """
    _require(update_norm, "update_norm", lambda v: v >= 0.0, "finite and >= 0")
    _require(clip_norm, "clip_norm", lambda v: v > 0.0, "finite and > 0")
    return 0.5 if update_norm <= clip_norm else -0.5


def clip_update(update: Update, *, clip_norm: float) -> tuple[Update, float]:
    """A central-DP client's own step: its delta clipped to C, and b_i of the norm before clipping.

    The one place both fedlab's ClientApp (its train reply) and ``clipping_mod`` (a Flower
    app's reply) clip an update for user-level DP-FedAvg.

    Args:
        update: The client's delta.
        clip_norm: The round's clip norm C.

    Returns:
        The update scaled by min(1, C / norm), and the indicator ``norm_indicator`` gives.

    Raises:
        ValueError: If the update is not finite (it cannot be clipped) or C is not positive.

    Example:
        >>> clipped, bit = clip_update(Update((np.array([3.0, 4.0]),), 1), clip_norm=1.0)
        >>> clipped.arrays[0].tolist(), bit
        ([0.6000000000000001, 0.8], -0.5)
    """
    result = GaussianMechanism(clip_norm=clip_norm, noise_multiplier=0.0).clip(update)
    return result.update, norm_indicator(update_norm=result.norm, clip_norm=clip_norm)


def noisy_unclipped_fraction(
    indicators: Sequence[float], *, expected_clients: float, count_noise_std: float, rng: RandomStream
) -> float:
    """Returns b = (sum b_i + N(0, sigma_b^2)) / m + 1/2, the private fraction of unclipped updates.

    Args:
        indicators: The received b_i, each -0.5 or +0.5.
        expected_clients: m, the fixed expected number of clients per round (q*N), > 0.
        count_noise_std: sigma_b.
        rng: The generator the noise comes from.

    Returns:
        The estimate (not clamped: noise can push it outside [0, 1]).

    Raises:
        ValueError: If an indicator is not +-0.5 (the sensitivity would be wrong).

    """
    if any(b not in (-0.5, 0.5) for b in indicators):
        raise ValueError("indicators must each be -0.5 or +0.5 (sensitivity 1/2)")
    if not (math.isfinite(expected_clients) and expected_clients > 0.0):
        raise ValueError(f"expected_clients must be finite and > 0; got {expected_clients!r}")
    if not isinstance(rng, np.random.Generator | SecureRandom):
        raise TypeError(f"rng must be a numpy Generator or a SecureRandom; got {type(rng).__name__}")
    noise = float(rng.normal(0.0, count_noise_std)) if count_noise_std > 0.0 else 0.0
    return (float(sum(indicators)) + noise) / expected_clients + 0.5


def update_clip_norm(
    state: AdaptiveClipState,
    indicators: Sequence[float],
    *,
    expected_clients: float,
    rng: RandomStream,
) -> AdaptiveClipState:
    """Returns the state with C <- C * exp(-eta * (b - gamma)) for the private estimate b.

    Args:
        state: This round's state.
        indicators: The clients' b_i from :func:`norm_indicator` (this round's C).
        expected_clients: m, the fixed expected number of clients per round (q*N).
        rng: The generator the count noise comes from.

    Returns:
        The next round's state (only ``clip_norm`` changes).

    Example:
        >>> state = AdaptiveClipState(
        ...     clip_norm=0.1, target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0)
        >>> clipped_all = [norm_indicator(update_norm=1.0, clip_norm=0.1)] * 10
        >>> new = update_clip_norm(state, clipped_all, expected_clients=10, rng=np.random.default_rng(0))
        >>> new.clip_norm > state.clip_norm  # every update was clipped: the bound grows
        True

    """
    b = noisy_unclipped_fraction(
        indicators, expected_clients=expected_clients, count_noise_std=state.count_noise_std, rng=rng
    )
    return next_clip_state(state, b)


def next_clip_state(state: AdaptiveClipState, unclipped_fraction: float) -> AdaptiveClipState:
    """Returns the state with C <- C * exp(-eta * (b - gamma)) for a private estimate b.

    Args:
        state: This round's state.
        unclipped_fraction: b, from :func:`noisy_unclipped_fraction`.

    Example:
        >>> state = AdaptiveClipState(
        ...     clip_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=0.0)
        >>> next_clip_state(state, 0.5).clip_norm  # at the target quantile the bound stays
        1.0
    """
    factor = math.exp(-state.learning_rate * (unclipped_fraction - state.target_quantile))
    return replace(state, clip_norm=state.clip_norm * factor)


def split_noise_multiplier(*, total_noise_multiplier: float, count_noise_std: float) -> float:
    """Returns z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, the update noise that keeps the round at z.

    The update sum (noise multiplier z_delta) and the indicator sum (sensitivity
    1/2, noise sigma_b: multiplier 2 sigma_b) together are one Gaussian mechanism
    with z^-2 = z_delta^-2 + (2 sigma_b)^-2. So z_delta > z: the updates get more
    noise than a fixed-clip round with the same budget, which pays for the count.

    Args:
        total_noise_multiplier: z, the round's noise multiplier as accounted, > 0.
        count_noise_std: sigma_b, the noise on the indicator sum, > z/2.

    Returns:
        z_delta (``inf`` never: invalid splits raise instead).

    Raises:
        ValueError: If z >= 2 sigma_b (the count alone would spend the whole budget).

    Example:
        >>> round(split_noise_multiplier(total_noise_multiplier=1.0, count_noise_std=5.0), 6)
        1.005038

    """
    z, sigma_b = total_noise_multiplier, count_noise_std
    if not (math.isfinite(z) and z > 0.0):
        raise ValueError(f"total_noise_multiplier must be finite and > 0; got {z!r}")
    if not (math.isfinite(sigma_b) and sigma_b > 0.0):
        raise ValueError(f"count_noise_std must be finite and > 0; got {sigma_b!r}")
    if z >= 2.0 * sigma_b:
        raise ValueError(
            f"total_noise_multiplier {z:g} must be below 2 * count_noise_std = {2.0 * sigma_b:g}: "
            "the clipped-count release alone would spend the whole budget; raise count_noise_std"
        )
    return float((z**-2 - (2.0 * sigma_b) ** -2) ** -0.5)


def round_event(*, total_noise_multiplier: float, sample_rate: float, steps: int = 1) -> GaussianEvent:
    """Returns what the accountant sees for ``steps`` adaptive rounds: one Gaussian with multiplier z.

    The updates (z_delta) and the counts (2 sigma_b) released in a round compose
    exactly into a Gaussian with noise multiplier z (per Poisson-sampled round),
    so accounting z per round includes the count's privacy cost.

    Args:
        total_noise_multiplier: z.
        sample_rate: The Poisson sampling rate q of each round.
        steps: Number of rounds.

    Returns:
        The event.

    """
    return GaussianEvent(noise_multiplier=total_noise_multiplier, sample_rate=sample_rate, steps=steps)


def _require(value: float, name: str, ok: Callable[[float], bool], text: str) -> None:
    real = not isinstance(value, bool) and isinstance(value, int | float)
    if not (real and math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {text}; got {value!r}")
