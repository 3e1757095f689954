"""Argument checks shared by the auditing modules (one-line ValueErrors)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def check_one_run_counts(num_canaries: int, num_guesses: int, num_correct: int) -> tuple[int, int, int]:
    m = check_int("num_canaries", num_canaries, minimum=1)
    r = check_int("num_guesses", num_guesses, minimum=0)
    v = check_int("num_correct", num_correct, minimum=0)
    if r > m:
        raise ValueError(f"num_guesses must be <= num_canaries ({m}); got {r}")
    if v > r:
        raise ValueError(f"num_correct must be <= num_guesses ({r}); got {v}")
    return m, r, v


def check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {int(value)}")
    return int(value)


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")


def check_delta_closed(delta: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1); got {delta!r}")


def check_delta_open(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); got {delta!r}")


def check_scores(name: str, scores: ArrayLike) -> NDArray[np.float64]:
    try:
        values = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of real numbers") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return values


def check_included(included: ArrayLike, size: int) -> NDArray[np.bool_]:
    raw = np.asarray(included)
    if raw.ndim != 1 or raw.size != size:
        raise ValueError(f"included must be a 1-D array of length {size}; got shape {raw.shape}")
    if raw.dtype != np.bool_ and not np.all(np.isin(raw, (0, 1))):
        raise ValueError("included must be boolean (or 0/1)")
    return raw.astype(np.bool_)


def check_gaussians(mean_a: float, std_a: float, mean_b: float, std_b: float) -> None:
    for name, mean in (("mean_a", mean_a), ("mean_b", mean_b)):
        if not math.isfinite(mean):
            raise ValueError(f"{name} must be finite; got {mean!r}")
    for name, std in (("std_a", std_a), ("std_b", std_b)):
        if not (math.isfinite(std) and std > 0.0):
            raise ValueError(f"{name} must be finite and > 0; got {std!r}")


def check_splits(guess_counts: Sequence[tuple[int, int]], m: int) -> list[tuple[int, int]]:
    splits: list[tuple[int, int]] = []
    for item in guess_counts:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise ValueError(f"each guess count must be a pair (num_positive, num_negative); got {item!r}")
        k_pos = check_int("num_positive", item[0], minimum=0)
        k_neg = check_int("num_negative", item[1], minimum=0)
        if k_pos + k_neg > m:
            raise ValueError(f"guess count {item!r} makes more than {m} guesses (the number of canaries)")
        splits.append((k_pos, k_neg))
    if not splits:
        raise ValueError("guess_counts must not be empty")
    return splits


def power_splits(m: int, powers: Sequence[int]) -> list[tuple[int, int]]:
    """Splits k+ = k- = m >> p for each power p (those >= 1, once each); [(m, 0)] if none."""
    splits: list[tuple[int, int]] = []
    for power in powers:
        k = m >> power
        if k >= 1 and (k, k) not in splits:
            splits.append((k, k))
    return splits or [(m, 0)]
