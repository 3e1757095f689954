"""Helpers shared by the accountants: event merging, state checks, argument checks."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedlab.privacy.events import GaussianEvent

STATE_VERSION = 1
"""Version of the accountants' saved state."""


def merged_events(events: Sequence[GaussianEvent]) -> list[GaussianEvent]:
    """Merges events with equal (noise multiplier, sample rate), summing steps."""
    steps: dict[tuple[float, float], int] = {}
    for event in events:
        key = (event.noise_multiplier, event.sample_rate)
        steps[key] = steps.get(key, 0) + event.steps
    return [GaussianEvent(noise_multiplier=z, sample_rate=q, steps=t) for (z, q), t in steps.items()]


def parse_state(state: Mapping[str, Any], *, name: str) -> list[GaussianEvent]:
    if not isinstance(state, Mapping):
        raise ValueError(f"accountant state must be a mapping; got {type(state).__name__}")
    if state.get("accountant") != name:
        raise ValueError(f"state is for accountant {state.get('accountant')!r}, not {name!r}")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"unsupported accountant state version {state.get('version')!r}")
    raw = state.get("events")
    if not isinstance(raw, list | tuple):
        raise ValueError("accountant state has no list of events")
    return [GaussianEvent.from_dict(item) for item in raw]


def check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")


def check_epsilon(epsilon: float) -> None:
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
