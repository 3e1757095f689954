"""Immutable records of what a DP mechanism released (the dp_accounting idea).

A mechanism describes each release as an event; an accountant composes events
and converts them into an (epsilon, delta) guarantee. Neither imports the other.
Events are values: frozen, validated on construction, and built with keyword
arguments only, so two floats cannot be swapped silently.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FIELDS = ("noise_multiplier", "sample_rate", "steps")

ANNOUNCED_CLIP_NORM = "clipping_norm"
ANNOUNCED_NOISE_MULTIPLIER = "noise-multiplier"
ANNOUNCED_SAMPLE_RATE = "sample-rate"
ANNOUNCED_ROUNDS = "rounds"
"""The train config keys of a central-DP round's public settings (the round's clip norm C, z, q
and the run's rounds T): the server announces them, a client clips to C, a device charges its
budget the run's event from z, q and T. The clip norm's key is Flower's own (``clipping_norm``),
so that Flower's ``fixedclipping_mod`` clips to it too."""


@dataclass(frozen=True, kw_only=True)
class GaussianEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    Each step samples every record (or client) independently with probability
    ``sample_rate``, sums their contributions clipped to L2 norm C, and adds
    Gaussian noise of standard deviation ``noise_multiplier * C``.

    Attributes:
        noise_multiplier: Noise standard deviation over the L2 sensitivity, >= 0
            (0 means no noise: the release is not private and epsilon is infinite).
        sample_rate: Poisson sampling probability q, in (0, 1].
        steps: Number of identical compositions, >= 1.

    Example:
        >>> GaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=100)
        GaussianEvent(noise_multiplier=1.1, sample_rate=0.01, steps=100)
        >>> GaussianEvent(noise_multiplier=1.1, sample_rate=0.0, steps=1)
        Traceback (most recent call last):
        ...
        ValueError: sample_rate must be in (0, 1]; got 0.0

    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        noise = _as_float("noise_multiplier", self.noise_multiplier)
        rate = _as_float("sample_rate", self.sample_rate)
        steps = _as_int("steps", self.steps)
        if not (math.isfinite(noise) and noise >= 0.0):
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {noise!r}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; got {rate!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps!r}")
        # Normalise numpy scalars to plain Python numbers (JSON, hashing, equality).
        object.__setattr__(self, "noise_multiplier", noise)
        object.__setattr__(self, "sample_rate", rate)
        object.__setattr__(self, "steps", steps)

    def to_dict(self) -> dict[str, Any]:
        """Returns the event as a JSON-serializable dict.

        Returns:
            A dict with the keys ``noise_multiplier``, ``sample_rate`` and ``steps``.

        """
        return {
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GaussianEvent:
        """Rebuilds an event from :meth:`to_dict` output.

        Args:
            data: A mapping with exactly the keys written by :meth:`to_dict`.

        Returns:
            The validated event.

        Raises:
            ValueError: If keys are missing or extra, or a value is invalid.

        Example:
            >>> e = GaussianEvent(noise_multiplier=2.0, sample_rate=0.5, steps=3)
            >>> GaussianEvent.from_dict(e.to_dict()) == e
            True

        """
        if not isinstance(data, Mapping) or set(data) != set(_FIELDS):
            raise ValueError(f"a GaussianEvent needs exactly the keys {', '.join(_FIELDS)}; got {data!r}")
        return cls(
            noise_multiplier=data["noise_multiplier"], sample_rate=data["sample_rate"], steps=data["steps"]
        )


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    return float(value)


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)
