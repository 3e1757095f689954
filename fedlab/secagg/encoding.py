"""Fixed-point encoding of float vectors into residues mod 2**bits, and decoding of their sum.

Each value is clipped to [-clip, clip] (clipped values are counted, never wrapped), multiplied by
``scale`` and stochastically rounded with an explicit ``numpy.random.Generator`` (unbiased). A sum
of at most ``max_summands`` encodings decodes exactly to the sum of the rounded values, because the
codec refuses up front any configuration where that sum could wrap the modulus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlab.secagg.errors import EncodingError
from fedlab.secagg.ring import MAX_MODULUS, Vector, as_residues


@dataclass(frozen=True)
class FixedPointCodec:
    """Parameters of the fixed-point encoding; validated so that sums never wrap.

    Attributes:
        bits: The modulus is 2**bits (2 <= bits <= 62).
        clip: Values are clipped to [-clip, clip] before scaling.
        scale: An encoded value is round(value * scale), so one step is 1 / scale.
        max_summands: The most encodings that will ever be summed (the number of clients).

    """

    bits: int
    clip: float
    scale: float
    max_summands: int

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= MAX_MODULUS.bit_length() - 1:
            raise EncodingError(f"bits must be in [2, 62], got {self.bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise EncodingError(f"clip must be a positive finite float, got {self.clip}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise EncodingError(f"scale must be a positive finite float, got {self.scale}")
        if self.max_summands < 1:
            raise EncodingError(f"max_summands must be at least 1, got {self.max_summands}")
        limit = 2 ** (self.bits - 1) - 1
        if self.max_summands * self.max_magnitude > limit:
            raise EncodingError(
                f"overflow: {self.max_summands} summands x largest encoded magnitude "
                f"{self.max_magnitude} (clip {self.clip} x scale {self.scale}) exceeds {limit}, "
                f"so the sum could wrap modulo 2**{self.bits}; lower scale or clip, or raise bits"
            )

    @classmethod
    def for_sum(cls, *, bits: int, clip: float, max_summands: int) -> FixedPointCodec:
        """Return the codec with the finest scale whose sum of ``max_summands`` values cannot wrap.

        >>> c = FixedPointCodec.for_sum(bits=16, clip=1.0, max_summands=10)
        >>> c.max_magnitude * 10 <= 2**15 - 1
        True
        """
        if max_summands < 1 or not 2 <= bits <= 62:
            raise EncodingError(f"need max_summands >= 1 and bits in [2, 62], got {max_summands}, {bits}")
        steps = (2 ** (bits - 1) - 1) // max_summands
        if steps < 1:
            raise EncodingError(f"overflow: {max_summands} summands cannot fit in {bits} bits")
        scale = steps / clip
        while math.ceil(clip * scale) > steps:
            scale = math.nextafter(scale, 0.0)
        return cls(bits=bits, clip=clip, scale=scale, max_summands=max_summands)

    @property
    def modulus(self) -> int:
        """The modulus 2**bits."""
        return 1 << self.bits

    @property
    def max_magnitude(self) -> int:
        """The largest absolute encoded value, ceil(clip * scale)."""
        return math.ceil(self.clip * self.scale)

    def quantization_bound(self, num_summands: int) -> float:
        """Return the bound on |decoded sum - sum of clipped inputs| per coordinate.

        Stochastic rounding moves each value by less than one step (1 / scale).
        """
        return num_summands / self.scale


@dataclass(frozen=True)
class Encoded:
    """An encoded vector and how many of its values were clipped (a privacy-relevant metric)."""

    values: Vector
    clipped: int


def encode(values: npt.ArrayLike, codec: FixedPointCodec, *, rng: np.random.Generator) -> Encoded:
    """Encode a float vector into residues mod ``codec.modulus``.

    Stops: silent wrap-around of out-of-range values (Flower's overflow bug): they are clipped to
    [-clip, clip] and counted in :attr:`Encoded.clipped`. Does not stop: the bias clipping itself
    introduces (choose ``clip`` from the data), or a client encoding a malicious in-range value.

    Raises:
        EncodingError: If a value is NaN.

    >>> codec = FixedPointCodec(bits=8, clip=1.0, scale=10.0, max_summands=4)
    >>> e = encode([0.5, -0.5, 3.0], codec, rng=np.random.default_rng(0))
    >>> e.values.tolist(), e.clipped
    ([5, 251, 10], 1)
    """
    x = np.array(values, dtype=np.float64).ravel()  # a private copy, scaled in place below
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the exact check below decides
        total = float(x.sum())
    if not math.isfinite(total) and np.isnan(x).any():
        raise EncodingError("cannot encode NaN")
    clipped = int(np.count_nonzero(x > codec.clip) + np.count_nonzero(x < -codec.clip))
    scaled = np.clip(x, -codec.clip, codec.clip, out=x)
    scaled *= codec.scale
    low = np.floor(scaled)
    fraction = np.subtract(scaled, low, out=scaled)
    rounded = low.astype(np.int64)
    rounded += rng.random(fraction.shape) < fraction
    np.bitwise_and(rounded, codec.modulus - 1, out=rounded)  # two's complement: == mod 2**bits
    residues = rounded.view(np.uint64)  # every value now lies in [0, 2**bits)
    residues.flags.writeable = False
    return Encoded(values=residues, clipped=clipped)


def decode_sum(total: npt.ArrayLike, codec: FixedPointCodec, *, num_summands: int) -> npt.NDArray[np.float64]:
    """Decode the sum mod 2**bits of ``num_summands`` encodings back to floats (centred lift).

    Raises:
        EncodingError: If ``num_summands`` exceeds ``codec.max_summands`` (the sum could have
            wrapped) or is less than 1.

    >>> codec = FixedPointCodec(bits=8, clip=1.0, scale=10.0, max_summands=4)
    >>> decode_sum([15, 246], codec, num_summands=2).tolist()
    [1.5, -1.0]
    """
    if not 1 <= num_summands <= codec.max_summands:
        raise EncodingError(
            f"cannot decode a sum of {num_summands} encodings: the codec allows 1 to {codec.max_summands}"
        )
    residues = np.asarray(total)
    lifted = as_residues(residues, codec.modulus, residues.shape[0] if residues.ndim else -1).astype(np.int64)
    lifted[lifted >= codec.modulus // 2] -= codec.modulus
    return lifted / codec.scale


def max_count(codec: FixedPointCodec) -> int:
    """The largest clipped count one client contributes: ``max_summands`` of them cannot wrap.

    >>> max_count(FixedPointCodec(bits=8, clip=1.0, scale=10.0, max_summands=4))
    31
    """
    return int((2 ** (codec.bits - 1) - 1) // codec.max_summands)


def encode_counted(values: npt.ArrayLike, codec: FixedPointCodec, *, rng: np.random.Generator) -> Encoded:
    """:func:`encode` ``values`` and append the number of clipped values as one more residue.

    The count slot makes a clip *visible* to the server without revealing whose: summed under
    secure aggregation it tells how many values all the included clients clipped together. One
    client's count is capped at :func:`max_count` so that the slot's sum cannot wrap either.

    Stops: clipping going unnoticed (a clip range too small for the updates biases the model with
    no sign of it). Does not stop: the server learning the total count, an aggregate like the sum
    itself; under distributed DP it would be a release without noise, so do not use it there.

    >>> codec = FixedPointCodec(bits=8, clip=1.0, scale=10.0, max_summands=4)
    >>> encode_counted([0.5, 3.0, -2.0], codec, rng=np.random.default_rng(0)).values.tolist()
    [5, 10, 246, 2]
    """
    encoded = encode(values, codec, rng=rng)
    count = min(encoded.clipped, max_count(codec))
    counted = np.append(encoded.values, np.uint64(count))
    counted.flags.writeable = False
    return Encoded(values=counted, clipped=encoded.clipped)


@dataclass(frozen=True)
class CountedSum:
    """A decoded :func:`encode_counted` sum: the summed values and the summed clipped counts."""

    values: npt.NDArray[np.float64]
    clipped: int


def decode_counted_sum(total: npt.ArrayLike, codec: FixedPointCodec, *, num_summands: int) -> CountedSum:
    """Decode the sum of ``num_summands`` :func:`encode_counted` encodings.

    Raises:
        EncodingError: As :func:`decode_sum`, or if the vector has no count slot.

    >>> codec = FixedPointCodec(bits=8, clip=1.0, scale=10.0, max_summands=4)
    >>> decode_counted_sum([15, 246, 3], codec, num_summands=2)
    CountedSum(values=array([ 1.5, -1. ]), clipped=3)
    """
    residues = np.asarray(total)
    if residues.ndim != 1 or residues.shape[0] < 1:
        raise EncodingError("a counted sum needs a 1-D vector ending in its count slot")
    values = decode_sum(residues[:-1], codec, num_summands=num_summands)
    clipped = int(residues[-1])
    if not 0 <= clipped < 2 ** (codec.bits - 1):
        raise EncodingError(f"the count slot holds {clipped}, not a sum of capped counts")
    return CountedSum(values=values, clipped=clipped)
