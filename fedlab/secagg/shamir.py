"""t-of-n Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedlab.secagg.crypto import RandomSource, random_bytes
from fedlab.secagg.errors import ShamirError

PRIME = 2**521 - 1
"""The Mersenne prime field modulus; any 32-byte secret is a field element."""
SECRET_BYTES = 32
_Y_BYTES = 66
_X_BYTES = 8


@dataclass(frozen=True)
class Share:
    """One share: the polynomial's value ``y`` at the non-zero point ``x`` (the holder's id + 1)."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Return the fixed-size (74-byte) encoding of this share.

        >>> Share.from_bytes(Share(3, 7).to_bytes())
        Share(x=3, y=7)
        """
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Decode a share written by :meth:`to_bytes`.

        Raises:
            ShamirError: If the encoding has the wrong size or is out of the field.

        """
        if len(data) != SHARE_BYTES:
            raise ShamirError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        share = cls(int.from_bytes(data[:_X_BYTES], "big"), int.from_bytes(data[_X_BYTES:], "big"))
        if not (0 < share.x < PRIME and 0 <= share.y < PRIME):
            raise ShamirError("share is outside the field")
        return share


SHARE_BYTES = _X_BYTES + _Y_BYTES


def _field_element(source: RandomSource) -> int:
    while True:  # rejection: uniform in [0, PRIME); rejects only the single value 2**521 - 1
        value = int.from_bytes(random_bytes(source, _Y_BYTES), "big") & PRIME
        if value < PRIME:
            return value


def split(secret: bytes, *, threshold: int, xs: Sequence[int], source: RandomSource) -> tuple[Share, ...]:
    """Split a 32-byte ``secret`` into one share per point in ``xs``; any ``threshold`` reconstruct it.

    The secret is the constant term of a random polynomial of degree ``threshold - 1`` whose other
    coefficients are uniform field elements drawn from ``source``.

    Stops: any ``threshold - 1`` holders learning anything about the secret (information-theoretic:
    their shares fit every possible secret equally well). Does not stop: ``threshold`` colluding
    holders, or a dealer who hands out inconsistent shares (no verifiable secret sharing).

    Args:
        secret: Exactly 32 bytes.
        threshold: Number of shares needed to reconstruct, 1 <= threshold <= len(xs).
        xs: Distinct points in [1, PRIME) (fedlab uses the holder's client id + 1).
        source: Randomness for the coefficients (``os.urandom`` in deployment).

    Raises:
        ShamirError: If the arguments are out of range.

    >>> from fedlab.secagg.crypto import seeded_source
    >>> shares = split(bytes(range(32)), threshold=2, xs=[1, 2, 3], source=seeded_source(b"doc"))
    >>> reconstruct(shares[1:], threshold=2) == bytes(range(32))
    True
    """
    if len(secret) != SECRET_BYTES:
        raise ShamirError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise ShamirError(f"threshold must be in [1, {len(xs)}], got {threshold}")
    coefficients = [int.from_bytes(secret, "big")] + [_field_element(source) for _ in range(threshold - 1)]
    return tuple(Share(x, _evaluate(coefficients, x)) for x in xs)


def _check_points(xs: Iterable[int]) -> None:
    points = list(xs)
    if len(set(points)) != len(points):
        raise ShamirError("share points must be distinct")
    if any(not 0 < x < PRIME for x in points):
        raise ShamirError("share points must be in [1, PRIME)")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    value = 0
    for coefficient in reversed(coefficients):
        value = (value * x + coefficient) % PRIME
    return value


def lagrange_at_zero(shares: Sequence[Share]) -> int:
    """Return the value at 0 of the unique polynomial of degree < len(shares) through the shares.

    >>> lagrange_at_zero([Share(1, 5), Share(2, 7)])  # the line 3 + 2x
    3
    """
    _check_points(s.x for s in shares)
    total = 0
    for j, share in enumerate(shares):
        numerator, denominator = 1, 1
        for m, other in enumerate(shares):
            if m != j:
                numerator = numerator * other.x % PRIME
                denominator = denominator * (other.x - share.x) % PRIME
        total = (total + share.y * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Sequence[Share], *, threshold: int) -> bytes:
    """Reconstruct a 32-byte secret from at least ``threshold`` shares (the first ``threshold`` used).

    Stops: silent use of too few shares (refused) and obviously wrong shares (a result outside
    32 bytes is refused). Does not stop: a wrong share that still yields a 32-byte value (callers
    verify the result where they can, e.g. a private key against its public key).

    Raises:
        ShamirError: If there are fewer than ``threshold`` shares, duplicated points, or the
            interpolated value is not a 32-byte secret.

    """
    if threshold < 1 or len(shares) < threshold:
        raise ShamirError(f"need {threshold} shares to reconstruct, got {len(shares)}")
    value = lagrange_at_zero(sorted(shares, key=lambda s: s.x)[:threshold])
    if value >= 2 ** (8 * SECRET_BYTES):
        raise ShamirError("shares are inconsistent: the reconstructed value is not a 32-byte secret")
    return value.to_bytes(SECRET_BYTES, "big")
