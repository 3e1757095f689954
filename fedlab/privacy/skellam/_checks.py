"""Argument checks shared by the Skellam modules: each raises a one-line ValueError."""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt

__all__ = ["as_float", "as_int", "as_orders", "require"]


def require(condition: bool, message: str) -> None:
    """Raises ``ValueError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def as_float(name: str, value: object) -> float:
    """Returns ``value`` as a float; raises ValueError if it is a bool or not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    return float(value)


def as_int(name: str, value: object) -> int:
    """Returns ``value`` as an int; raises ValueError if it is a bool or not an integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    return int(value)


def as_orders(orders: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Returns Rényi orders as a 1-D float64 array; raises ValueError unless all are integers >= 2."""
    alphas = np.atleast_1d(np.asarray(orders, dtype=np.float64))
    if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas < 2) or np.any(alphas != np.round(alphas)):
        raise ValueError("orders must be a non-empty list of integers >= 2")
    return alphas
