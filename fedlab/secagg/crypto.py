"""Bytes-in/bytes-out cryptography for SecAgg+, all from the ``cryptography`` package.

X25519 for key agreement, HKDF-SHA256 with one label per purpose, AES-256-GCM for the encrypted
shares (sender, receiver and round bound as associated data) and a ChaCha20 keystream expanded into
uniform residues mod m by rejection sampling. Nothing here keeps state; randomness comes from a
:data:`RandomSource` passed in (``os.urandom`` in deployment).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedlab.secagg.errors import DecryptionError, ProtocolError
from fedlab.secagg.ring import Vector, add_mod, check_modulus, sub_mod

RandomSource = Callable[[int], bytes]
"""A callable returning that many random bytes, like ``os.urandom`` (use it in deployment)."""

KEY_BYTES = 32
NONCE_BYTES = 12
_SALT = b"fedlab.secagg.v1"
MASK_SEED_LABEL = b"fedlab/secagg/v1/pairwise-mask-seed"
"""HKDF label of the pairwise mask seed s_uv."""
SHARE_KEY_LABEL = b"fedlab/secagg/v1/share-encryption-key"
"""HKDF label of the AES-GCM key that encrypts shares between two clients."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair as raw 32-byte strings (the private half is hidden from ``repr``)."""

    private: bytes = field(repr=False)
    public: bytes


def random_bytes(source: RandomSource, size: int) -> bytes:
    r"""Return exactly ``size`` bytes from ``source`` or raise ValueError.

    >>> random_bytes(lambda n: bytes(n), 4)
    b'\x00\x00\x00\x00'
    """
    data = source(size)
    if not isinstance(data, bytes | bytearray) or len(data) != size:
        raise ValueError(f"random source returned {len(data)} bytes, expected {size}")
    return bytes(data)


def generate_keypair(source: RandomSource) -> KeyPair:
    """Return a fresh X25519 key pair whose private key is 32 bytes from ``source``.

    >>> len(generate_keypair(seeded_source(b"doc")).public)
    32
    """
    private = X25519PrivateKey.from_private_bytes(random_bytes(source, KEY_BYTES))
    return KeyPair(private=private.private_bytes_raw(), public=private.public_key().public_bytes_raw())


def public_key_of(private: bytes) -> bytes:
    """Return the X25519 public key of a raw private key (used to verify a reconstructed key)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes) -> bytes:
    """Return the 32-byte X25519 shared secret of ``private`` with ``peer_public``.

    Stops: small-subgroup / low-order public keys (an all-zero secret is refused). Does not stop:
    a man in the middle who substitutes public keys (keys are not signed; needs a PKI, out of scope).

    Raises:
        ProtocolError: If the peer's key is malformed or of low order.

    """
    return agree_many(private, [peer_public])[0]


def agree_many(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """Return :func:`agree` of ``private`` with each of ``peer_publics`` (loads the private key once).

    Raises:
        ProtocolError: If a peer's key is malformed or of low order.

    """
    key = X25519PrivateKey.from_private_bytes(private)
    try:
        return [key.exchange(X25519PublicKey.from_public_bytes(peer)) for peer in peer_publics]
    except ValueError as error:
        raise ProtocolError(f"refusing X25519 agreement: {error}") from error


def _u64(value: int, name: str) -> bytes:
    if not 0 <= value < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return struct.pack(">Q", value)


def pair_context(round_id: int, a: int, b: int) -> bytes:
    """Return the HKDF context of an unordered client pair in one round (same for (a, b) and (b, a)).

    >>> pair_context(1, 5, 2) == pair_context(1, 2, 5)
    True
    """
    low, high = sorted((a, b))
    return _u64(round_id, "round_id") + _u64(low, "client id") + _u64(high, "client id")


def derive_key(secret: bytes, *, label: bytes, context: bytes) -> bytes:
    """Return a 32-byte key from an agreed ``secret`` by HKDF-SHA256 with a purpose ``label``.

    Stops: re-using one agreed secret for two purposes (mask seed vs share encryption) or across
    rounds and pairs, because label and context differ. Does not stop: a leaked private key (every
    key derived from it leaks too).

    >>> k1 = derive_key(bytes(32), label=MASK_SEED_LABEL, context=b"x")
    >>> k2 = derive_key(bytes(32), label=SHARE_KEY_LABEL, context=b"x")
    >>> len(k1), k1 == k2
    (32, False)
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=_SALT, info=label + b"|" + context)
    return hkdf.derive(secret)


def share_associated_data(*, sender: int, receiver: int, round_id: int) -> bytes:
    """Return the AEAD associated data binding an encrypted share to its sender, receiver and round."""
    return (
        b"fedlab/secagg/v1/share"
        + _u64(sender, "sender")
        + _u64(receiver, "receiver")
        + _u64(round_id, "round_id")
    )


def encrypt_share(
    key: bytes, plaintext: bytes, *, sender: int, receiver: int, round_id: int, source: RandomSource
) -> bytes:
    """Encrypt ``plaintext`` with AES-256-GCM; return ``nonce || ciphertext || tag``.

    Stops: an eavesdropper or honest-but-curious server reading shares in transit; tampering;
    replay into another round; re-routing to another receiver or claiming another sender (sender,
    receiver and round are associated data). Does not stop: dropping or delaying a ciphertext
    (that is a dropout), or a sender that encrypts a wrong share.
    """
    nonce = random_bytes(source, NONCE_BYTES)
    aad = share_associated_data(sender=sender, receiver=receiver, round_id=round_id)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_share(key: bytes, ciphertext: bytes, *, sender: int, receiver: int, round_id: int) -> bytes:
    """Decrypt an :func:`encrypt_share` output after checking its tag and associated data.

    Stops: tampered, truncated, replayed (other round) and re-routed (other sender/receiver pair)
    ciphertexts, which all fail authentication. Does not stop: replay of the same ciphertext within
    the same round to the same receiver (harmless: it carries the same share).

    Raises:
        DecryptionError: If authentication fails.

    """
    if len(ciphertext) < NONCE_BYTES + 16:
        raise DecryptionError(f"share ciphertext from {sender} to {receiver} is truncated")
    aad = share_associated_data(sender=sender, receiver=receiver, round_id=round_id)
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], aad)
    except InvalidTag as error:
        raise DecryptionError(
            f"share ciphertext from {sender} to {receiver} in round {round_id} failed authentication"
        ) from error


def _chacha20(seed: bytes) -> CipherContext:
    """The ChaCha20 encryptor keyed by the whole 32-byte ``seed`` (counter and nonce zero)."""
    if len(seed) != KEY_BYTES:
        raise ValueError(f"a mask seed must be {KEY_BYTES} bytes, got {len(seed)}")
    return Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()


def _keystream(seed: bytes) -> Callable[[int], bytes]:
    encryptor = _chacha20(seed)
    return lambda size: encryptor.update(bytes(size))


def expand_mask(seed: bytes, length: int, modulus: int) -> Vector:
    """Expand a 32-byte seed into ``length`` independent uniform residues mod ``modulus``.

    ChaCha20 keyed by all 256 bits of the seed produces words of ``bit_length(modulus - 1)`` bits;
    words >= modulus are rejected, so the output is exactly uniform for any modulus.

    Stops: mask prediction from a short seed (Flower's 32-bit MT19937 seeding): the whole seed is
    the cipher key, so seeds differing in one bit give unrelated masks. Does not stop: leakage of
    the seed itself (protected by Shamir sharing and the double-masking stages).

    >>> m = expand_mask(bytes(32), 5, 10)
    >>> m.dtype.name, len(m), bool((m < 10).all())
    ('uint64', 5, True)
    """
    check_modulus(modulus)
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    stream = _keystream(seed)
    width = (modulus - 1).bit_length()
    dtype = np.dtype("<u4") if width <= 32 else np.dtype("<u8")
    keep = np.uint64((1 << width) - 1)
    pieces: list[Vector] = []
    missing = length
    while missing > 0:
        draw = missing + missing // 8 + 16 if modulus & (modulus - 1) else missing
        words = np.frombuffer(stream(draw * dtype.itemsize), dtype=dtype).astype(np.uint64)
        words &= keep
        accepted = words[words < np.uint64(modulus)] if modulus & (modulus - 1) else words
        pieces.append(accepted[:missing])
        missing -= len(pieces[-1])
    result = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint64)
    return result


def apply_masks(vector: Vector, masks: Sequence[tuple[bytes, bool]], modulus: int) -> Vector:
    """Return ``vector + sum(+/- expand_mask(seed))`` mod ``modulus`` (True adds a mask, False subtracts it).

    The same residues as adding or subtracting each :func:`expand_mask` output with
    :func:`~fedlab.secagg.ring.add_mod` / :func:`~fedlab.secagg.ring.sub_mod`, but for a power-of-two
    modulus up to 2^32 the keystream words are summed in place with uint32 wrap-around and reduced
    once at the end (2^bits divides 2^32), which is several times cheaper per mask.

    >>> seed, m = bytes(range(32)), 2**20
    >>> x = np.arange(6, dtype=np.uint64)
    >>> apply_masks(apply_masks(x, [(seed, True)], m), [(seed, False)], m).tolist()
    [0, 1, 2, 3, 4, 5]
    >>> bool((apply_masks(x, [(seed, True)], m) == (x + expand_mask(seed, 6, m)) % m).all())
    True
    """
    check_modulus(modulus)
    if modulus & (modulus - 1) or modulus > 2**32:
        total = np.asarray(vector, dtype=np.uint64)
        for seed, plus in masks:
            mask = expand_mask(seed, len(total), modulus)
            total = add_mod(total, mask, modulus) if plus else sub_mod(total, mask, modulus)
        return total
    work = np.asarray(vector).astype(np.uint32)
    zeros = bytes(4 * len(work))
    words = np.empty(len(work), dtype="<u4")
    for seed, plus in masks:
        _keystream_into(seed, zeros, words)
        (np.add if plus else np.subtract)(work, words, out=work)
    return np.bitwise_and(work, np.uint32(modulus - 1)).astype(np.uint64)


def _keystream_into(seed: bytes, zeros: bytes, out: npt.NDArray[np.uint32]) -> None:
    """Write the first ``len(zeros)`` keystream bytes of ``seed`` into ``out`` (no allocation).

    One zero buffer and one output buffer serve every mask of a vector: allocating two fresh
    400 kB buffers per mask cost as much as the cipher itself.
    """
    written = _chacha20(seed).update_into(zeros, out.data.cast("B"))
    if written != len(zeros):
        raise ValueError(f"keystream wrote {written} of {len(zeros)} bytes")


class SeededSource:
    """A deterministic :data:`RandomSource`: the ChaCha20 keystream keyed by SHA-256 of ``seed``.

    For tests, simulations and reproducible benchmarks only: in deployment pass ``os.urandom``,
    since anyone who knows ``seed`` knows every key and mask drawn from it. ``position`` counts
    the bytes drawn; :meth:`seek` goes back to any position (a resumed simulation).

    >>> a, b = SeededSource(b"s"), SeededSource(b"s")
    >>> a(8) == b(8), a(8) == a(8)
    (True, False)
    >>> c = SeededSource(b"s"); c.seek(16); c(8) == SeededSource(b"s")(24)[16:]
    True
    """

    def __init__(self, seed: bytes) -> None:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(seed)
        self._key = digest.finalize()
        self._position = 0
        self._encryptor = _chacha20(self._key)

    @property
    def position(self) -> int:
        """How many bytes have been drawn."""
        return self._position

    def seek(self, position: int) -> None:
        """Continue the keystream at byte ``position``."""
        if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < 1 << 70:
            raise ValueError(f"position must be an integer in [0, 2^70), got {position!r}")
        block, offset = divmod(position, 64)
        nonce = block.to_bytes(8, "little") + bytes(8)  # a 64-bit block counter, then a zero nonce
        self._encryptor = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        self._encryptor.update(bytes(offset))
        self._position = position

    def __call__(self, size: int) -> bytes:
        """The next ``size`` bytes of the keystream."""
        self._position += size
        return self._encryptor.update(bytes(size))


def seeded_source(seed: bytes) -> SeededSource:
    """Return a deterministic :data:`RandomSource` (a :class:`SeededSource` keyed by ``seed``).

    >>> a, b = seeded_source(b"s"), seeded_source(b"s")
    >>> a(8) == b(8), a(8) == a(8)
    (True, False)
    """
    return SeededSource(seed)
