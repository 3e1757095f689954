"""The Gaussian mechanism of user-level DP-FedAvg (McMahan et al. 2018), in named steps.

One round of DP-FedAvg with the server adding the noise:

1. each sampled client *clips* its model delta to L2 norm C (:meth:`GaussianMechanism.clip`);
2. the server *checks the bound* of what it received and rejects, with a logged
   reason, any update over C (:meth:`GaussianMechanism.check_bound`) instead of
   trusting the client;
3. the server *sums* the clipped updates (:func:`clipped_sum`, which also
   returns privacy metrics as values: fraction clipped, norms);
4. the server *adds noise* N(0, (z*C)^2) per coordinate once to the sum and
   divides by a fixed denominator (:meth:`GaussianMechanism.add_noise`);
5. the release is described by a :class:`~fedlab.privacy.events.GaussianEvent`
   (noise multiplier z, sample rate q), which the accountant composes.

Sensitivity assumption (what the accountant assumes): adding or removing one
client changes the sum by at most C in L2 norm. This holds for *uniform
weights* (every clipped delta enters the sum with weight 1) with a *fixed*
denominator (the expected cohort size q*N, never the realised cohort size,
which itself depends on who took part). With ``weighted=True`` each update is
multiplied by its weight, which must lie in [0, 1] (e.g. min(1, n_k / n_cap));
the sensitivity is still C, and the denominator must then be q*W with W the sum
of all clients' weights (public). Weights above 1 (raw example counts) would
scale the sensitivity and are refused.

Threat model: this protects each client's participation against anyone who sees
only the released (noised) aggregates, including later rounds' participants.
It does not protect against the server itself (it sees the sum before the noise;
combine with secure aggregation for that), does not stop poisoning by a client
whose update is within the bound, and draws noise from the stream it is given:
a seeded numpy generator is reproducible by whoever knows its seed and ignores
floating-point attacks on the noise (Mironov 2012); in deployment pass a
:class:`~fedlab.privacy.secure_random.SecureRandom` (ChaCha20, with the mitigation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlab.core.update import Update
from fedlab.privacy.secure_random import RandomStream, SecureRandom


@dataclass(frozen=True)
class ClipResult:
    """The outcome of clipping one update.

    Attributes:
        update: The clipped update (L2 norm of all arrays together <= clip norm).
        norm: The L2 norm before clipping.
        clipped: Whether the update was scaled down.

    """

    update: Update
    norm: float
    clipped: bool


@dataclass(frozen=True, kw_only=True)
class ClipStats:
    """Privacy metrics of one round's clipping, returned as values (pfl-research style).

    Attributes:
        count: Number of updates summed.
        fraction_clipped: Fraction of updates whose norm exceeded the clip norm.
        mean_norm: Mean L2 norm before clipping.
        max_norm: Largest L2 norm before clipping.
        clip_norm: The clip norm C used.

    """

    count: int
    fraction_clipped: float
    mean_norm: float
    max_norm: float
    clip_norm: float


@dataclass(frozen=True, kw_only=True)
class GaussianMechanism:
    """Clip to L2 norm C, add N(0, (z*C)^2) per coordinate to the sum, divide by a fixed denominator.

    Attributes:
        clip_norm: The L2 bound C on each client's update (the sensitivity of the sum), > 0.
        noise_multiplier: z, the noise standard deviation over C, >= 0 (0: no privacy).

    Example:
        >>> mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.1)
        >>> mech.clip(Update((np.array([3.0, 4.0]),), num_examples=1)).update.l2_norm()
        1.0
        >>> mech.noise_std(denominator=100.0)
        0.011000000000000001

    """

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        if not (_is_real(self.clip_norm) and math.isfinite(self.clip_norm) and self.clip_norm > 0.0):
            raise ValueError(f"clip_norm must be finite and > 0; got {self.clip_norm!r}")
        if not (_is_real(self.noise_multiplier) and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {self.noise_multiplier!r}")
        if self.noise_multiplier < 0.0:
            raise ValueError(f"noise_multiplier must be finite and >= 0; got {self.noise_multiplier!r}")
        object.__setattr__(self, "clip_norm", float(self.clip_norm))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))

    def clip(self, update: Update) -> ClipResult:
        """Scales ``update`` so that the L2 norm of all its arrays together is at most C.

        Runs on the client (or on the server for simulated clients). Floating-point
        rounding never lets the result exceed C: the scale is nudged down until it
        does not. Metadata (weight, number of examples) is kept.

        Args:
            update: The update to bound; its arrays must be finite.

        Returns:
            The clipped update, its original norm and whether it was scaled.

        Raises:
            ValueError: If the update contains NaN or infinity.

        """
        norm = update.l2_norm()
        if not math.isfinite(norm):
            raise ValueError("update contains NaN or infinite values; refusing to clip it")
        if norm <= self.clip_norm:
            return ClipResult(update=update, norm=norm, clipped=False)
        scale = self.clip_norm / norm
        while True:
            arrays = tuple(_scaled(a, scale) for a in update.arrays)
            clipped = Update(arrays, num_examples=update.num_examples, weight=update.weight)
            new_norm = clipped.l2_norm()
            if new_norm <= self.clip_norm:
                return ClipResult(update=clipped, norm=norm, clipped=True)
            scale *= (self.clip_norm / new_norm) * (1.0 - 1e-6)

    def check_bound(self, update: Update, *, tolerance: float = 1e-6) -> None:
        """Checks on the server that a received update respects the clip norm.

        Stops a buggy or malicious client from exceeding the sensitivity the
        accountant assumes (an over-norm update would be under-noised). It does
        not stop an update crafted within the bound (poisoning). Reject the update
        and log the message: do not clip it silently, so the incident is visible.

        Args:
            update: The update as received.
            tolerance: Relative slack for floating-point rounding, in [0, 1e-3].

        Raises:
            ValueError: If the norm exceeds ``clip_norm * (1 + tolerance)`` or is not
                finite; the message names the norm and the bound.

        """
        if not (_is_real(tolerance) and 0.0 <= tolerance <= 1e-3):
            raise ValueError(f"tolerance must be in [0, 1e-3]; got {tolerance!r}")
        norm = update.l2_norm()
        if not math.isfinite(norm):
            raise ValueError("update rejected: it contains NaN or infinite values")
        if norm > self.clip_norm * (1.0 + tolerance):
            raise ValueError(
                f"update rejected: L2 norm {norm:.6g} exceeds the clip norm {self.clip_norm:.6g}"
            )

    def add_noise(
        self, total: Sequence[np.ndarray], *, denominator: float, rng: RandomStream
    ) -> list[np.ndarray]:
        """Adds N(0, (z*C)^2) per coordinate once to the sum, then divides by ``denominator``.

        Args:
            total: The sum of the clipped updates, one array per parameter tensor.
            denominator: The fixed denominator, e.g. the expected cohort size q*N
                (q*W when weighted); never the realised cohort size.
            rng: The generator every draw comes from (seeded for reproducibility;
                a secure source in deployment).

        Returns:
            The noised average, float64 (or the input's floating dtype).

        Raises:
            ValueError: If ``denominator`` is not finite and > 0.
            TypeError: If ``rng`` is neither a ``numpy.random.Generator`` nor a ``SecureRandom``.

        Example:
            >>> mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.0)
            >>> rng = np.random.default_rng(0)
            >>> mech.add_noise([np.array([2.0, 4.0])], denominator=2.0, rng=rng)[0].tolist()
            [1.0, 2.0]

        """
        _check_denominator(denominator)
        if not isinstance(rng, np.random.Generator | SecureRandom):
            raise TypeError(
                f"rng must be a numpy.random.Generator or a SecureRandom; got {type(rng).__name__}"
            )
        std = self.noise_multiplier * self.clip_norm
        noised = []
        for array in total:
            values = np.asarray(array, dtype=np.float64)
            out = (values + rng.normal(0.0, std, size=values.shape)) / denominator
            keep = np.issubdtype(np.asarray(array).dtype, np.floating)
            noised.append(out.astype(np.asarray(array).dtype) if keep else out)
        return noised

    def noise_std(self, *, denominator: float) -> float:
        """Returns the standard deviation of the noise in the released average, z*C/denominator.

        Args:
            denominator: The fixed denominator passed to :meth:`add_noise`.

        Returns:
            The per-coordinate noise standard deviation after division.

        """
        _check_denominator(denominator)
        return self.noise_multiplier * self.clip_norm / denominator


def clipped_sum(
    updates: Sequence[Update],
    mechanism: GaussianMechanism,
    *,
    weighted: bool = False,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> tuple[list[np.ndarray], ClipStats]:
    """Clips every update and sums them: the bounded-sensitivity step, before any noise.

    With ``weighted=False`` (the default) every clipped update counts once, so
    one client changes the sum by at most C. With ``weighted=True`` each is
    multiplied by its ``weight``, which must be in [0, 1]; the change is still at
    most C, and the caller must divide by q*W (W the total weight of all clients).

    Args:
        updates: The cohort's updates (identical shapes). May be empty with ``shapes``:
            under Poisson sampling an empty cohort still releases noise.
        mechanism: The mechanism whose clip norm bounds each update.
        weighted: Multiply each clipped update by its weight in [0, 1].
        shapes: Array shapes, needed only when ``updates`` is empty.

    Returns:
        The sum (float64 arrays) and the round's clipping metrics.

    Raises:
        ValueError: If shapes differ, a weight is outside [0, 1] when weighted, an
            update is not finite, or the cohort is empty without ``shapes``.

    Example:
        >>> mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
        >>> ups = [Update((np.array([3.0, 4.0]),), num_examples=1),
        ...        Update((np.array([0.3, 0.4]),), num_examples=1)]
        >>> total, stats = clipped_sum(ups, mech)
        >>> [round(float(x), 6) for x in total[0]], stats.fraction_clipped, stats.max_norm
        ([0.9, 1.2], 0.5, 5.0)

    """
    template = _shapes(updates, shapes)
    total = [np.zeros(shape, dtype=np.float64) for shape in template]
    norms: list[float] = []
    clipped = 0
    for update in updates:
        if weighted and not (_is_real(update.weight) and 0.0 <= update.weight <= 1.0):
            raise ValueError(f"weighted DP sums need weights in [0, 1]; got {update.weight!r}")
        result = mechanism.clip(update)
        factor = float(update.weight) if weighted else 1.0
        for acc, array in zip(total, result.update.arrays, strict=True):
            acc += factor * np.asarray(array, dtype=np.float64)
        norms.append(result.norm)
        clipped += int(result.clipped)
    stats = ClipStats(
        count=len(norms),
        fraction_clipped=clipped / len(norms) if norms else 0.0,
        mean_norm=float(np.mean(norms)) if norms else 0.0,
        max_norm=max(norms, default=0.0),
        clip_norm=mechanism.clip_norm,
    )
    return total, stats


def _shapes(updates: Sequence[Update], shapes: Sequence[tuple[int, ...]] | None) -> list[tuple[int, ...]]:
    if not updates:
        if shapes is None:
            raise ValueError("cannot sum an empty cohort without the array shapes")
        return [tuple(s) for s in shapes]
    template = [tuple(a.shape) for a in updates[0].arrays]
    if shapes is not None and [tuple(s) for s in shapes] != template:
        raise ValueError("updates do not have the given array shapes")
    for update in updates:
        if [tuple(a.shape) for a in update.arrays] != template:
            raise ValueError("updates have different array shapes")
    return template


def _scaled(array: np.ndarray, scale: float) -> np.ndarray:
    values = np.asarray(array)
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
    return (values.astype(np.float64) * scale).astype(dtype)


def _check_denominator(denominator: float) -> None:
    if not (_is_real(denominator) and math.isfinite(denominator) and denominator > 0.0):
        raise ValueError(f"denominator must be finite and > 0; got {denominator!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
