"""The PRV accountant's numerics: one step's privacy loss, its grid, and their composition.

See :mod:`fedlab.privacy.prv` for the algorithm and its error terms.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import fft, integrate, special

FloatArray = NDArray[np.float64]

MAX_GRID_SIZE = 1 << 23
"""Largest grid (per step or composed) the accountant builds; beyond it, it accepts a larger error."""

_STD_RANGE = 10.0
"""Per-step truncation: the Gaussians' means +- this many standard deviations (tails ~ 1e-23)."""

_TAIL_MASS = 1e-16
"""Chernoff bound on the composed mass outside the FFT window, on each side."""

_FIRST_PASS_POINTS = 1 << 14
"""Grid points of the first (coarse) pass over the composed window."""

_QUADRATURE_POINTS = 4001
"""Points of the trapezoid rule for the moment generating functions (window choice only)."""

_DELTA_SPLITS = (0.1, 0.03, 0.01, 0.003, 0.001)
"""Fractions of delta tried for the rounding-error probability delta_H (the best is used)."""


# --- the privacy loss of one step ------------------------------------------------------------------


@dataclass(frozen=True)
class PrivacyLoss:
    """The PRV of one Poisson-subsampled Gaussian step: Y = loss(u), loss increasing.

    ``remove`` selects the direction (remove or add one record); u is a mixture
    of normals with standard deviation ``sigma``, weights and means below.
    """

    sigma: float
    q: float
    remove: bool

    @property
    def components(self) -> tuple[tuple[float, float], ...]:
        """(weight, mean) of the normal components of u."""
        if not self.remove:
            return ((1.0, 0.0),)
        return tuple((w, m) for w, m in ((1.0 - self.q, 0.0), (self.q, 1.0)) if w > 0.0)

    @property
    def u_range(self) -> tuple[float, float]:
        """The truncation interval of u."""
        means = [m for _, m in self.components]
        return min(means) - _STD_RANGE * self.sigma, max(means) + _STD_RANGE * self.sigma

    def loss(self, u: FloatArray) -> FloatArray:
        """The privacy loss at u (vectorized)."""
        if self.remove:
            return _remove_loss(u, q=self.q, sigma=self.sigma)
        return -_remove_loss(-u, q=self.q, sigma=self.sigma)

    def inverse(self, y: FloatArray) -> FloatArray:
        """The u at which the loss is y (-inf / +inf beyond the loss's range)."""
        if self.remove:
            return _remove_inverse(y, q=self.q, sigma=self.sigma)
        return -_remove_inverse(-y, q=self.q, sigma=self.sigma)

    def mass(self, lower: FloatArray, upper: FloatArray) -> FloatArray:
        """P(lower < u <= upper), accurate in both tails."""
        total = np.zeros(np.broadcast(lower, upper).shape)
        for weight, mean in self.components:
            total += weight * _normal_mass((lower - mean) / self.sigma, (upper - mean) / self.sigma)
        return total

    def cell_masses(self, edges: FloatArray) -> FloatArray:
        """P(edges[i] < u <= edges[i+1]) for nondecreasing edges (one CDF evaluation per edge)."""
        total = np.zeros(edges.size - 1)
        for weight, mean in self.components:
            x = (edges - mean) / self.sigma
            cdf, sf = special.ndtr(x), special.ndtr(-x)
            upper_side = x[:-1] > 0.0
            total += weight * np.where(upper_side, sf[:-1] - sf[1:], cdf[1:] - cdf[:-1])
        return np.asarray(np.maximum(total, 0.0))

    def density(self, u: FloatArray) -> FloatArray:
        """The density of u."""
        total = np.zeros_like(u)
        for weight, mean in self.components:
            total += weight * np.exp(-0.5 * ((u - mean) / self.sigma) ** 2)
        return total / (self.sigma * math.sqrt(2.0 * math.pi))


def _remove_loss(u: FloatArray, *, q: float, sigma: float) -> FloatArray:
    """log(1 - q + q exp((2u - 1)/(2 sigma^2)))."""
    log_keep = math.log1p(-q) if q < 1.0 else -math.inf
    return np.asarray(np.logaddexp(log_keep, math.log(q) + (2.0 * u - 1.0) / (2.0 * sigma**2)))


def _remove_inverse(y: FloatArray, *, q: float, sigma: float) -> FloatArray:
    """sigma^2 (log(e^y - 1 + q) - log q) + 1/2; -inf where e^y <= 1 - q."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        small = np.log(np.expm1(np.minimum(y, 1.0)) + q)  # accurate for y <= 1
        large = y + np.log1p(-(1.0 - q) * np.exp(-np.maximum(y, 1.0)))  # no overflow for y > 1
        log_excess = np.where(y > 1.0, large, small)
    log_excess = np.where(np.isnan(log_excess), -np.inf, log_excess)
    return np.asarray(sigma**2 * (log_excess - math.log(q)) + 0.5)


def _normal_mass(a: FloatArray, b: FloatArray) -> FloatArray:
    """Phi(b) - Phi(a) for a <= b, from the side where it does not cancel."""
    upper_side = special.ndtr(-a) - special.ndtr(-b)
    lower_side = special.ndtr(b) - special.ndtr(a)
    return np.asarray(np.maximum(np.where(a > 0.0, upper_side, lower_side), 0.0))


def _truncated_mean(loss: PrivacyLoss) -> float:
    """E[Y'; Y' finite] for the truncated PRV Y' (mass below the range moved up to its bottom)."""
    u_lo, u_hi = loss.u_range
    below = float(loss.mass(np.array(-np.inf), np.array(u_lo)))
    y_lo = float(loss.loss(np.array(u_lo)))

    def integrand(u: float) -> float:
        x = np.array(u)
        return float(loss.loss(x) * loss.density(x))

    points = sorted({m for _, m in loss.components})
    with warnings.catch_warnings():
        # QUADPACK reports "roundoff" when asked for 1e-13 on an integrand with both signs; the
        # error estimate it returns is checked instead (measured errors are ~1e-17).
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        inside, error = integrate.quad(
            integrand, u_lo, u_hi, points=points, limit=400, epsabs=1e-16, epsrel=1e-13
        )
    if not error < 1e-11:
        raise RuntimeError(f"PRV mean did not converge (error {error:g}) for {loss}")
    return (y_lo * below if below > 0.0 else 0.0) + float(inside)


def _log_mgf(loss: PrivacyLoss, lambdas: FloatArray) -> FloatArray:
    """Returns log E[exp(lambda Y'); Y' finite] for each lambda (trapezoid rule; used to pick windows)."""
    u_lo, u_hi = loss.u_range
    u = np.linspace(u_lo, u_hi, _QUADRATURE_POINTS)
    weights = loss.density(u) * (u[1] - u[0])
    weights[[0, -1]] *= 0.5
    y = loss.loss(u)
    with np.errstate(divide="ignore"):
        terms = np.log(weights)[None, :] + lambdas[:, None] * y[None, :]
        below = float(loss.mass(np.array(-np.inf), np.array(u_lo)))
        lump = math.log(below) + lambdas * float(y[0]) if below > 0.0 else np.full_like(lambdas, -np.inf)
    return np.asarray(np.logaddexp(special.logsumexp(terms, axis=1), lump))


# --- one step on the grid ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GridStep:
    """One step's PRV rounded to the grid: probabilities of values (first + i) * h."""

    first: int
    pmf: FloatArray
    inf_mass: float
    bias: float  # E[rounded - true | finite]


def _grid_size(loss: PrivacyLoss, h: float) -> int:
    u_lo, u_hi = loss.u_range
    y_lo, y_hi = (float(v) for v in loss.loss(np.array([u_lo, u_hi])))
    return round(y_hi / h) - round(y_lo / h) + 1


def _discretise(loss: PrivacyLoss, h: float, mean: float) -> _GridStep:
    """Rounds the truncated PRV to the nearest multiple of h (cell masses from the exact CDF)."""
    u_lo, u_hi = loss.u_range
    y_lo, y_hi = (float(v) for v in loss.loss(np.array([u_lo, u_hi])))
    first, last = round(y_lo / h), round(y_hi / h)
    edges = np.clip(loss.inverse((np.arange(first, last, dtype=np.float64) + 0.5) * h), u_lo, u_hi)
    edges = np.maximum.accumulate(edges)
    pmf = loss.cell_masses(np.concatenate(([-np.inf], edges, [u_hi])))
    inf_mass = float(loss.mass(np.array(u_hi), np.array(np.inf)))
    values = np.arange(first, last + 1, dtype=np.float64) * h
    bias = (float(values @ pmf) - mean) / (1.0 - inf_mass)
    return _GridStep(first=first, pmf=pmf, inf_mass=inf_mass, bias=bias)


# --- composition ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Composition:
    """The composed, discretised PRV of one direction, with what its error bounds need."""

    first: int  # index of pmf[0]: value first * h
    h: float
    pmf: FloatArray
    inf_mass: float
    bias: float  # sum of steps * per-step bias
    steps: int
    tails: float  # mass moved by truncation (for the lower estimate)

    def rounding_slack(self, delta_h: float) -> float:
        """Returns s such that the total rounding error is below bias - s with probability <= delta_h."""
        return self.h * math.sqrt(self.steps * math.log(1.0 / delta_h) / 2.0)

    def grid_delta(self, epsilon: float) -> float:
        """delta(epsilon) of the discrete composed PRV (exact on the grid)."""
        values = (self.first + np.arange(self.pmf.size)) * self.h
        above = values > epsilon
        gain = -np.expm1(epsilon - values[above])
        return float(self.pmf[above] @ gain) + self.inf_mass

    @cached_property
    def _nonnegative(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Grid values >= 0, with sum_{j >= k} p_j, log sum_{j >= k} p_j e^-y_j and delta(y_k)."""
        start = min(max(0, -self.first), self.pmf.size)
        values = (self.first + np.arange(start, self.pmf.size)) * self.h
        probs = self.pmf[start:]
        with np.errstate(divide="ignore"):
            log_terms = np.log(probs) - values
        mass_from = np.cumsum(probs[::-1])[::-1]
        log_weighted_from = np.logaddexp.accumulate(log_terms[::-1])[::-1]
        # delta at each grid value y_k: sum over j > k of p_j (1 - e^(y_k - y_j)) + inf mass.
        next_mass = np.append(mass_from[1:], 0.0)
        next_log = np.append(log_weighted_from[1:], -np.inf)
        at_values = next_mass - np.exp(values + next_log) + self.inf_mass
        return (
            np.asarray(values, dtype=np.float64),
            np.asarray(mass_from, dtype=np.float64),
            np.asarray(log_weighted_from, dtype=np.float64),
            np.asarray(at_values, dtype=np.float64),
        )

    def grid_epsilon(self, delta: float) -> float:
        """The smallest epsilon >= 0 with grid_delta(epsilon) <= delta (inf if none)."""
        if delta <= self.inf_mass:
            return math.inf
        values, mass_from, log_weighted_from, at_values = self._nonnegative
        if values.size == 0:
            return 0.0
        k = int(np.argmax(at_values <= delta))  # delta decreases along the grid
        if at_values[k] > delta:
            return math.inf
        # On [y_{k-1}, y_k], delta(eps) = mass_from[k] + inf - e^eps * weighted_from[k]: solve it.
        low = float(values[k - 1]) if k > 0 else 0.0
        excess = float(mass_from[k]) + self.inf_mass - delta
        if excess <= 0.0:
            return max(0.0, low)
        epsilon = math.log(excess) - float(log_weighted_from[k])
        return max(0.0, min(max(epsilon, low), float(values[k])))


def _power(spectrum: NDArray[np.complex128], steps: int) -> NDArray[np.complex128]:
    """Returns spectrum ** steps in polar form (accurate for large integer powers)."""
    with np.errstate(divide="ignore"):
        log_magnitude = np.log(np.abs(spectrum))
    angle = np.angle(spectrum) * steps
    return np.asarray(np.exp(steps * log_magnitude) * (np.cos(angle) + 1j * np.sin(angle)))


def _compose(parts: Sequence[tuple[_GridStep, int]], *, h: float, lo: float, hi: float) -> Composition:
    """Composes steps by FFT over the window [lo, hi] (values outside wrap around)."""
    first = math.floor(lo / h)
    size = int(fft.next_fast_len(math.ceil(hi / h) - first + 1, real=True))
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    keep = 1.0
    for step, count in parts:
        index = (step.first + np.arange(step.pmf.size)) % size
        placed = np.bincount(index, weights=step.pmf, minlength=size)
        spectrum *= _power(fft.rfft(placed), count)
        keep *= (1.0 - step.inf_mass) ** count
    composed = np.maximum(np.roll(fft.irfft(spectrum, n=size), -(first % size)), 0.0)
    return Composition(
        first=first,
        h=h,
        pmf=composed,
        inf_mass=1.0 - keep,
        bias=sum(step.bias * count for step, count in parts),
        steps=sum(count for _, count in parts),
        tails=0.0,
    )


@dataclass(frozen=True)
class Direction:
    """What one direction needs before choosing a mesh: losses, means, windows."""

    losses: tuple[tuple[PrivacyLoss, int], ...]
    means: tuple[float, ...]
    lo: float  # composed window for h -> 0 (Chernoff, mass outside <= _TAIL_MASS each side)
    hi: float
    truncated: float  # mass moved by the per-step truncation, all steps

    @classmethod
    def build(cls, losses: Sequence[tuple[PrivacyLoss, int]]) -> Direction:
        """Windows and truncated mass of composing ``losses`` (each with its number of steps)."""
        lambdas = np.geomspace(1e-3, 1e5, 121)
        up = sum(count * _log_mgf(loss, lambdas) for loss, count in losses)
        down = sum(count * _log_mgf(loss, -lambdas) for loss, count in losses)
        log_tail = math.log(_TAIL_MASS)
        hi = float(np.min((up - log_tail) / lambdas))
        lo = float(np.max((log_tail - down) / lambdas))
        ranges = [(loss.loss(np.array(loss.u_range)), count) for loss, count in losses]
        lo = max(lo, sum(float(r[0]) * count for r, count in ranges))
        hi = min(hi, sum(float(r[1]) * count for r, count in ranges))
        truncated = 0.0
        for loss, count in losses:
            u_lo, u_hi = loss.u_range
            outside = loss.mass(np.array([-np.inf, u_hi]), np.array([u_lo, np.inf]))
            truncated += count * float(np.sum(outside))
        means = tuple(_truncated_mean(loss) for loss, _ in losses)
        return cls(losses=tuple(losses), means=means, lo=lo, hi=max(hi, lo), truncated=truncated)

    @property
    def steps(self) -> int:
        """Steps composed in this direction."""
        return sum(count for _, count in self.losses)

    def first_mesh(self) -> float:
        """Mesh of the coarse first pass."""
        width = max(self.hi - self.lo, 1e-6)
        return width / _FIRST_PASS_POINTS

    def grid_points(self, h: float) -> int:
        """The largest grid (per step or composed) a pass with mesh h builds."""
        per_step = max(_grid_size(loss, h) for loss, _ in self.losses)
        composed = (self.hi - self.lo) / h + self.steps + 2
        return int(max(per_step, composed))

    def compose(self, h: float) -> Composition:
        """The composition on a grid of mesh ``h``."""
        parts = [
            (_discretise(loss, h, mean), count)
            for (loss, count), mean in zip(self.losses, self.means, strict=True)
        ]
        margin = self.steps * h / 2.0
        composed = _compose(parts, h=h, lo=self.lo - margin, hi=self.hi + margin)
        return replace(composed, tails=self.truncated)


def epsilon_upper(c: Composition, delta: float) -> float:
    """Upper estimate: eps_grid(delta - delta_H - tail) - bias + s(delta_H), best delta_H."""
    best = math.inf
    for fraction in _DELTA_SPLITS:
        delta_h = fraction * delta
        remaining = delta - delta_h - _TAIL_MASS
        if remaining > 0.0:
            best = min(best, c.grid_epsilon(remaining) - c.bias + c.rounding_slack(delta_h))
    return best


def epsilon_lower(c: Composition, delta: float) -> float:
    """Lower estimate: eps_grid(delta + delta_H + tails) - bias - s(delta_H), best delta_H."""
    best = -math.inf
    for fraction in _DELTA_SPLITS:
        delta_h = fraction * delta
        shifted = delta + delta_h + 2.0 * _TAIL_MASS + c.tails
        if shifted < 1.0:
            best = max(best, c.grid_epsilon(shifted) - c.bias - c.rounding_slack(delta_h))
    return best


def delta_upper(c: Composition, epsilon: float) -> float:
    """Upper estimate: min over delta_H of delta_grid(eps + bias - s) + delta_H + tail."""
    candidates = (10.0**-k for k in range(2, 17))
    return min(c.grid_delta(epsilon + c.bias - c.rounding_slack(d)) + d + _TAIL_MASS for d in candidates)


def slack_of(compositions: Sequence[Composition], delta: float) -> list[float]:
    """The rounding slack of each composition at delta_H = delta / 100."""
    return [c.rounding_slack(0.01 * delta) for c in compositions]
