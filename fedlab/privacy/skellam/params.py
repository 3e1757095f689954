"""Parameters of the distributed Skellam mechanism: :class:`SkellamParams` and the dropout check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scipy import special

from fedlab.privacy.rotation import padded_dim
from fedlab.privacy.skellam._checks import as_float, as_int, require

__all__ = ["DEFAULT_BETA", "DEFAULT_K", "SkellamParams", "noise_is_sufficient"]

DEFAULT_BETA = math.exp(-0.5)
"""Conditional-rounding parameter beta: each rounding attempt exceeds the bound w.p. <= beta."""

DEFAULT_K = math.sqrt(2.0) * float(special.erfcinv(1e-4))
"""Number of standard deviations of a sum coordinate that must fit in half the modulus (~3.89)."""


@dataclass(frozen=True, kw_only=True)
class SkellamParams:
    """Configuration of the distributed Skellam mechanism, validated for feasibility.

    The noise is split so that the *fewest survivors you accept* still reach the
    target: ``local_stddev = z * c / sqrt(min_survivors)``, hence the sum of
    ``min_survivors`` shares has standard deviation ``z * c`` per coordinate and
    more survivors only add noise.

    The scale follows Agarwal et al. (REFERENCES.md),
    ``s = sqrt(2^(2b) - n k^2) / (2k sqrt(c^2 n^2 / d' + n sigma_loc^2))``, where
    ``n`` counts the vectors that are *summed*. We use ``num_clients`` (the
    largest cohort the round accepts) there, not ``min_survivors``: the sum of n
    clients has per-coordinate variance about ``n^2 c^2 s^2 / d'`` (aligned
    signals, spread by the rotation) + ``n s^2 sigma_loc^2`` (noise) + ``n / 4``
    (rounding), and the formula makes ``k`` of its standard deviations fit into
    half the modulus. Taking the largest count keeps the per-coordinate
    wrap-around probability near ``erfc(k / sqrt(2)) = 1e-4`` for every cohort
    of up to ``num_clients`` survivors; plugging ``min_survivors`` in would make
    wrap-around likelier whenever more clients survive. With Poisson sampling the
    cohort size is random: the server must cap the cohort at ``num_clients`` (or
    set it to a high quantile of the cohort size). When ``min_survivors ==
    num_clients`` this is exactly the published formula.

    Attributes:
        clip: L2 clipping norm c, > 0.
        noise_multiplier: z, >= 0; the central noise std is ``z * c`` with
            ``min_survivors`` clients. 0 disables the noise (testing only: not private).
        num_clients: n, the largest number of client vectors that are summed, >= 1.
        min_survivors: n_min, the fewest survivors for which the round is released,
            1 <= n_min <= n.
        bits: b, the secure-aggregation modulus is 2^b, 2 <= b <= 62.
        dim: d, the number of values per client update (padded to d').
        beta: Conditional-rounding parameter in [0, 1); 0 means plain stochastic rounding.
        k: Standard deviations of the sum that must fit into half the modulus, > 0.

    Raises:
        ValueError: If a field is invalid or the configuration is infeasible
            (too few bits for ``num_clients``: ``2^(2b) <= n k^2`` gives no positive scale).

    Example:
        >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=100,
        ...                   min_survivors=80, bits=16, dim=1000)
        >>> p.padded_dim, round(p.local_stddev, 4), round(p.scale, 1)
        (1024, 0.1118, 2537.6)
        >>> SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=10**8,
        ...               min_survivors=10**8, bits=12, dim=1000)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: infeasible Skellam configuration: 2^(2*12) <= num_clients * k^2 = 1.51e+09, ...

    """

    clip: float
    noise_multiplier: float
    num_clients: int
    min_survivors: int
    bits: int
    dim: int
    beta: float = DEFAULT_BETA
    k: float = DEFAULT_K

    def __post_init__(self) -> None:
        clip = as_float("clip", self.clip)
        noise = as_float("noise_multiplier", self.noise_multiplier)
        beta = as_float("beta", self.beta)
        k = as_float("k", self.k)
        clients = as_int("num_clients", self.num_clients)
        survivors = as_int("min_survivors", self.min_survivors)
        bits = as_int("bits", self.bits)
        dim = as_int("dim", self.dim)
        require(math.isfinite(clip) and clip > 0.0, f"clip must be finite and > 0; got {clip!r}")
        require(
            math.isfinite(noise) and noise >= 0.0, f"noise_multiplier must be finite and >= 0; got {noise!r}"
        )
        require(0.0 <= beta < 1.0, f"beta must be in [0, 1); got {beta!r}")
        require(math.isfinite(k) and k > 0.0, f"k must be finite and > 0; got {k!r}")
        require(clients >= 1, f"num_clients must be >= 1; got {clients!r}")
        require(1 <= survivors <= clients, f"min_survivors must be in [1, num_clients]; got {survivors!r}")
        require(2 <= bits <= 62, f"bits must be in [2, 62]; got {bits!r}")
        require(dim >= 1, f"dim must be >= 1; got {dim!r}")
        for name, value in (("clip", clip), ("noise_multiplier", noise), ("beta", beta), ("k", k)):
            object.__setattr__(self, name, value)
        for name, number in (
            ("num_clients", clients),
            ("min_survivors", survivors),
            ("bits", bits),
            ("dim", dim),
        ):
            object.__setattr__(self, name, number)
        headroom = 4.0**bits - clients * k * k
        require(
            headroom > 0.0,
            f"infeasible Skellam configuration: 2^(2*{bits}) <= num_clients * k^2 = {clients * k * k:.3g}, "
            f"so the sum of {clients} clients cannot fit {bits} bits (scale s <= 0); "
            "raise bits or lower num_clients",
        )

    @property
    def padded_dim(self) -> int:
        """d', the next power of two >= dim."""
        return padded_dim(self.dim)

    @property
    def modulus(self) -> int:
        """The secure-aggregation modulus 2^bits."""
        return 1 << self.bits

    @property
    def local_stddev(self) -> float:
        """sigma_loc = z * c / sqrt(min_survivors), each client's noise std (unscaled)."""
        return self.noise_multiplier * self.clip / math.sqrt(self.min_survivors)

    @property
    def scale(self) -> float:
        """s: a value x is encoded as about x * s (see the class docstring for the choice of n)."""
        n, k, c, d = float(self.num_clients), self.k, self.clip, float(self.padded_dim)
        spread = c * c * n * n / d + n * self.local_stddev**2
        return math.sqrt(4.0**self.bits - n * k * k) / (2.0 * k * math.sqrt(spread))

    @property
    def local_lambda(self) -> float:
        """The rate lam = (sigma_loc * s)^2 / 2 of each Poisson of a client's Skellam noise share."""
        return (self.local_stddev * self.scale) ** 2 / 2.0

    @property
    def rounded_norm_bound(self) -> float:
        """Bound on a client's rounded vector's L2 norm in the scaled (integer) domain.

        ``min(c s + sqrt(d'), sqrt((c s)^2 + d'/4 + sqrt(2 ln(1/beta)) (c s + sqrt(d')/2)))``;
        the second term only for beta > 0 (Kairouz et al. 2021, conditional rounding).
        """
        cs, d = self.clip * self.scale, float(self.padded_dim)
        bound = cs + math.sqrt(d)
        if self.beta > 0.0:
            squared = (
                cs * cs + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / self.beta)) * (cs + math.sqrt(d) / 2.0)
            )
            bound = min(bound, math.sqrt(squared))
        return bound

    @property
    def l2_sensitivity(self) -> float:
        """D2, the L2 sensitivity of the sum after rounding, in the unscaled domain (bound / s)."""
        return self.rounded_norm_bound / self.scale

    @property
    def l1_sensitivity(self) -> float:
        """D1 = D2 * min(sqrt(d'), D2 s): the L1 bound of an integer vector, mapped back by 1/s."""
        d2 = self.l2_sensitivity
        return d2 * min(math.sqrt(self.padded_dim), d2 * self.scale)

    def with_noise_multiplier(self, noise_multiplier: float) -> SkellamParams:
        """Returns a copy with another noise multiplier (everything else equal)."""
        return SkellamParams(**{**self.to_dict(), "noise_multiplier": noise_multiplier})

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-serializable dict."""
        return {
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "num_clients": self.num_clients,
            "min_survivors": self.min_survivors,
            "bits": self.bits,
            "dim": self.dim,
            "beta": self.beta,
            "k": self.k,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkellamParams:
        """Rebuilds parameters from :meth:`to_dict` output.

        Raises:
            ValueError: If keys are missing or extra, or a value is invalid.

        """
        expected = {"clip", "noise_multiplier", "num_clients", "min_survivors", "bits", "dim", "beta", "k"}
        if not isinstance(data, Mapping) or set(data) != expected:
            raise ValueError(f"SkellamParams needs exactly the keys {sorted(expected)}; got {data!r}")
        return cls(**dict(data))


def noise_is_sufficient(num_survivors: int, params: SkellamParams) -> bool:
    """Returns whether a round with ``num_survivors`` noise shares reaches the calibrated noise.

    Each dropout removes a noise share: with fewer than ``params.min_survivors``
    survivors the sum is less noisy than the accountant assumes. The server must
    call this after unmasking-set selection and abort the round (release nothing)
    when it returns False. It cannot detect clients that withheld their noise.

    Example:
        >>> p = SkellamParams(clip=1.0, noise_multiplier=1.0, num_clients=10,
        ...                   min_survivors=8, bits=16, dim=4)
        >>> noise_is_sufficient(8, p), noise_is_sufficient(7, p)
        (True, False)

    """
    return as_int("num_survivors", num_survivors) >= params.min_survivors
