"""A cryptographically secure random stream for DP noise and sampling: ChaCha20 behind a numpy-like API.

:class:`SecureRandom` turns a ChaCha20 keystream into uniform floats and Gaussian noise with the call
shapes of :class:`numpy.random.Generator`; code that draws noise or samples clients accepts either
(:data:`RandomStream`): a seeded generator in simulation, a :class:`SecureRandom` keyed by
``os.urandom`` or by a client's secret (:meth:`SecureRandom.derive`) in deployment.

Stops:

- prediction of draws by an adversary who knows the run seed or config, or observes other outputs
  of the stream (noise values, sampling decisions): ChaCha20 is a CSPRNG keyed by 256 bits taken
  only from ``os.urandom`` or the caller's secret, never from a seed or a global RNG;
- floating-point attacks on Gaussian sampling (Jin et al. 2021 against Opacus; Holohan & Braghin
  2021, "Secure random sampling in differential privacy"), which use the sparse, structured set of
  floats that one Box–Muller draw can produce to tell which value was noised: every Gaussian output
  is ``(n1 + n2 + n3 + n4) / 2`` of four independent standard normals from four different
  Box–Muller pairs (their section 5.1), the mitigation Opacus applies with ``secure_mode=True``.

Does not stop: timing side channels (numpy's ``log``, ``cos``, ``sin`` are not constant time), or an
attacker who reads the process's memory (cipher state, drawn values).
"""

from __future__ import annotations

import math
import operator
import os
from typing import SupportsIndex, TypeAlias, overload

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KEY_BYTES", "RandomStream", "SecureRandom"]

KEY_BYTES = 32
"""Length of a ChaCha20 key, and the minimum length of a secret passed to :meth:`SecureRandom.derive`."""

_CHUNK = 8192  # Gaussian outputs per keystream call (256 KiB): big arrays are drawn in cache-sized chunks

Size: TypeAlias = SupportsIndex | tuple[SupportsIndex, ...]
Floats: TypeAlias = npt.NDArray[np.float64]


def _shape(size: Size) -> tuple[int, ...]:
    """The array shape of a numpy-style ``size`` (an int or a tuple of ints, none negative)."""
    shape = tuple(operator.index(n) for n in size) if isinstance(size, tuple) else (operator.index(size),)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimensions are not allowed, got size {size}")
    return shape


class SecureRandom:
    """Uniform and Gaussian draws from a ChaCha20 keystream keyed by 32 bytes.

    Successive calls continue one keystream (counter and nonce start at zero): the same key gives
    the same sequence of draws.

    Args:
        key: The 32-byte ChaCha20 key; ``None`` draws a fresh one from ``os.urandom``.

    Raises:
        TypeError: If ``key`` is not bytes-like (raised by ``cryptography``).
        ValueError: If ``key`` is not exactly 32 bytes long.

    Example:
        >>> a, b = SecureRandom(bytes(range(32))), SecureRandom(bytes(range(32)))
        >>> a.random(4).tolist() == b.random(4).tolist()
        True
        >>> SecureRandom().random() != SecureRandom().random()  # fresh os.urandom keys
        True
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise ValueError(f"a key is exactly {KEY_BYTES} bytes, got {len(key)}")
        self._encryptor: CipherContext = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    @classmethod
    def derive(cls, secret: bytes, label: str) -> SecureRandom:
        """The stream for ``label`` derived from ``secret``: HKDF-SHA256, no salt, ``info`` = UTF-8 label.

        Different labels give independent streams from one secret (e.g. one for sampling and one
        for noise); the same secret and label give the same stream.

        Args:
            secret: At least 32 bytes of secret key material.
            label: What the stream is for.

        Raises:
            ValueError: If ``secret`` is shorter than 32 bytes.

        Example:
            >>> noise = SecureRandom.derive(bytes(range(32)), "noise").random()
            >>> noise == SecureRandom.derive(bytes(range(32)), "noise").random()
            True
            >>> noise != SecureRandom.derive(bytes(range(32)), "sampling").random()
            True
        """
        if len(secret) < KEY_BYTES:
            raise ValueError(f"a secret has at least {KEY_BYTES} bytes, got {len(secret)}")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label.encode("utf-8"))
        return cls(hkdf.derive(secret))

    def _uniforms(self, count: int) -> Floats:
        """The next ``count`` uniforms: top 53 bits of little-endian uint64 keystream words times 2**-53."""
        words = np.frombuffer(self._encryptor.update(bytes(8 * count)), dtype="<u8")
        return (words >> np.uint64(11)).view(np.int64).astype(np.float64) / 2**53  # exact: below 2**53

    def _four_sums(self, blocks: int) -> Floats:
        """``n1 + n2 + n3 + n4`` of ``2 * blocks`` outputs, in the layout :meth:`normal` describes."""
        u = self._uniforms(8 * blocks).reshape(blocks, 4, 2)  # (two outputs, pair, (u, v))
        radius = np.sqrt(-2.0 * np.log(1.0 - u[:, :, 0]))
        angle = 2.0 * np.pi * u[:, :, 1]
        both = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)  # (., cos|sin, pair)
        return np.ravel(both[..., 0] + both[..., 1] + both[..., 2] + both[..., 3])

    @overload
    def random(self, size: None = None) -> float: ...

    @overload
    def random(self, size: Size) -> Floats: ...

    def random(self, size: Size | None = None) -> float | Floats:
        """Uniform floats in [0, 1), each a multiple of 2**-53 (53 random bits), like ``Generator.random``.

        Args:
            size: ``None`` for one Python float, or the shape (an int or a tuple) of a float64 array.

        Raises:
            ValueError: If ``size`` has a negative dimension.

        Example:
            >>> u = SecureRandom(bytes(32)).random((2, 3))
            >>> u.shape, u.dtype.name, bool(((0 <= u) & (u < 1)).all())
            ((2, 3), 'float64', True)
            >>> isinstance(SecureRandom(bytes(32)).random(), float)
            True
        """
        if size is None:
            return float(self._uniforms(1)[0])
        shape = _shape(size)
        return self._uniforms(math.prod(shape)).reshape(shape)

    @overload
    def normal(self, loc: float = 0.0, scale: float = 1.0, size: None = None) -> float: ...

    @overload
    def normal(self, loc: float, scale: float, size: Size) -> Floats: ...

    @overload
    def normal(self, loc: float = 0.0, scale: float = 1.0, *, size: Size) -> Floats: ...

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Size | None = None) -> float | Floats:
        """Gaussian samples with mean ``loc`` and standard deviation ``scale``, like ``Generator.normal``.

        Outputs come in twos from eight uniforms (64 keystream bytes), read as four Box–Muller pairs
        ``(u_j, v_j)``: with ``r_j = sqrt(-2 log(1 - u_j))`` and ``t_j = 2 pi v_j``, the first output
        is ``loc + scale * (r_1 cos t_1 + ... + r_4 cos t_4) / 2`` and the second the same with
        ``sin``, in float64. Each output sums four independent standard normals from four different
        pairs (Opacus' ``secure_mode`` mitigation); the cosine and sine of one pair never meet in one
        output (their sum is one normal times sqrt(2)). An odd count drops the last output of its
        final two; ``scale`` 0 returns ``loc`` exactly and draws nothing.

        Args:
            loc: The mean.
            scale: The standard deviation, finite and non-negative.
            size: ``None`` for one Python float, or the shape (an int or a tuple) of a float64 array.

        Raises:
            ValueError: If ``scale`` is negative, infinite or NaN, or ``size`` has a negative dimension.

        Example:
            >>> rng = SecureRandom(bytes(range(32)))
            >>> isinstance(rng.normal(0.0, 2.0), float)
            True
            >>> z = rng.normal(0.0, 1.0, size=100_000)
            >>> z.dtype.name, bool(abs(z.mean()) < 0.02), bool(abs(z.std() - 1.0) < 0.02)
            ('float64', True, True)
            >>> rng.normal(3.0, 0.0, size=2).tolist()
            [3.0, 3.0]
        """
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be finite and non-negative, got {scale}")
        shape = () if size is None else _shape(size)
        count = math.prod(shape)
        out = np.full(2 * ((count + 1) // 2), loc, dtype=np.float64)  # whole pairs of outputs
        for start in range(0, len(out) if scale else 0, _CHUNK):  # cache-sized chunks of one stream
            sums = self._four_sums(min(_CHUNK, len(out) - start) // 2)
            out[start : start + len(sums)] += sums * (0.5 * scale)
        return float(out[0]) if size is None else out[:count].reshape(shape)


RandomStream: TypeAlias = np.random.Generator | SecureRandom
"""Where noise and sampling draw from: a seeded numpy generator in simulation, SecureRandom in deployment."""
