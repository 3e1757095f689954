"""SecureRandom: ChaCha20 known answers, HKDF derivation, stream behaviour, statistics of the draws."""

import hashlib
import hmac
import math
import os
import struct
from typing import SupportsIndex

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import stats

from fedlab.privacy.secure_random import RandomStream, SecureRandom

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# RFC 8439, appendix A.1, test vector #1: ChaCha20 block function, all-zero key and nonce, counter 0.
RFC8439_ZERO_KEY_BLOCK = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)


def uniform_from_word(word: int) -> float:
    """A 53-bit uniform from a 64-bit word, written out in integers: floor(word / 2^11) / 2^53."""
    return (word // 2**11) / 2**53


def words_of(block: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(block) // 8}Q", block))


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF over the standard library's HMAC (an independent route to the same key)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, math.ceil(length / 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def reference_normals(uniforms: list[float], *, loc: float, scale: float) -> tuple[float, float]:
    """Two outputs from eight uniforms: four Box–Muller pairs (u, v); cosines sum into the first, sines
    into the second, each sum halved (Opacus' secure mode: four independent normals over 2)."""
    cosines, sines = [], []
    for j in range(4):
        u, v = uniforms[2 * j], uniforms[2 * j + 1]
        radius = math.sqrt(-2.0 * math.log(1.0 - u))
        cosines.append(radius * math.cos(2.0 * math.pi * v))
        sines.append(radius * math.sin(2.0 * math.pi * v))
    return loc + scale * sum(cosines) / 2.0, loc + scale * sum(sines) / 2.0


# --- known answers --------------------------------------------------------------------------------


def test_uniforms_are_the_top_53_bits_of_the_rfc8439_keystream() -> None:
    expected = [uniform_from_word(w) for w in words_of(RFC8439_ZERO_KEY_BLOCK)]
    assert SecureRandom(bytes(32)).random(8).tolist() == expected
    assert words_of(RFC8439_ZERO_KEY_BLOCK)[0] == 0x903DF1A0ADE0B876  # little-endian words


def test_stdlib_hkdf_helper_matches_rfc5869_test_case_1() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@pytest.mark.parametrize("label", ["noise", "sampling", "fedlab/client-round/noise", "ünïcode"])
def test_derive_is_hkdf_sha256_without_salt_with_the_label_as_info(label: str) -> None:
    secret = bytes(range(100, 148))  # longer than 32 bytes is allowed
    key = hkdf_sha256(secret, salt=bytes(32), info=label.encode("utf-8"), length=32)
    assert SecureRandom.derive(secret, label).random(16).tolist() == SecureRandom(key).random(16).tolist()


def test_normal_is_the_four_sum_of_box_muller_normals_from_the_keystream() -> None:
    # Independent reference: raw ChaCha20 words -> uniforms -> math.log/cos/sin in pure Python.
    # A float32 result, a single Box–Muller normal, or a cos + sin of one pair in one output (one
    # normal times sqrt(2)) would all differ by far more than 1e-12.
    n, loc, scale = 64, 0.25, 1.5
    raw = Cipher(algorithms.ChaCha20(KEY, bytes(16)), mode=None).encryptor().update(bytes(32 * n))
    keystream = [uniform_from_word(w) for w in words_of(raw)]
    got = SecureRandom(KEY).normal(loc, scale, size=n)
    for k in range(n // 2):
        first, second = reference_normals(keystream[8 * k : 8 * k + 8], loc=loc, scale=scale)
        assert got[2 * k] == pytest.approx(first, rel=1e-12, abs=1e-12), k
        assert got[2 * k + 1] == pytest.approx(second, rel=1e-12, abs=1e-12), k


def test_a_large_array_follows_the_same_layout_throughout() -> None:
    n = 50_001  # large enough for an implementation to split the work
    raw = Cipher(algorithms.ChaCha20(KEY, bytes(16)), mode=None).encryptor().update(bytes(32 * (n + 1)))
    words = words_of(raw)
    got = SecureRandom(KEY).normal(-1.0, 0.5, size=n)
    blocks = [*range(0, n // 2, 97), *range(4090, 4100), *range(8188, 8200), n // 2]
    for k in blocks:
        uniforms = [uniform_from_word(w) for w in words[8 * k : 8 * k + 8]]
        first, second = reference_normals(uniforms, loc=-1.0, scale=0.5)
        assert got[2 * k] == pytest.approx(first, rel=1e-12, abs=1e-12), k
        if 2 * k + 1 < n:
            assert got[2 * k + 1] == pytest.approx(second, rel=1e-12, abs=1e-12), k


def test_first_normal_of_the_zero_key_follows_from_the_rfc8439_words() -> None:
    uniforms = [uniform_from_word(w) for w in words_of(RFC8439_ZERO_KEY_BLOCK)]
    first, _ = reference_normals(uniforms, loc=0.0, scale=1.0)
    assert SecureRandom(bytes(32)).normal() == pytest.approx(first, rel=1e-12)


def test_odd_counts_and_shapes_take_the_first_outputs_of_whole_pairs_of_outputs() -> None:
    six = SecureRandom(KEY).normal(0.0, 1.0, size=6)
    assert SecureRandom(KEY).normal(0.0, 1.0, size=5).tolist() == six[:5].tolist()
    assert SecureRandom(KEY).normal(0.0, 1.0, size=(2, 3)).ravel().tolist() == six.tolist()
    assert SecureRandom(KEY).normal() == six[0]


# --- stream behaviour -----------------------------------------------------------------------------


def test_same_key_gives_the_same_stream_and_other_keys_other_streams() -> None:
    first = SecureRandom(KEY).random(32)
    assert SecureRandom(KEY).random(32).tolist() == first.tolist()
    assert not np.isin(SecureRandom(OTHER_KEY).random(32), first).any()
    normals = SecureRandom(KEY).normal(0.0, 1.0, size=8)
    assert SecureRandom(KEY).normal(0.0, 1.0, size=8).tolist() == normals.tolist()


def test_labels_give_different_streams_from_one_secret() -> None:
    streams = [SecureRandom.derive(KEY, label).random(32) for label in ("noise", "sampling", "")]
    assert SecureRandom.derive(KEY, "noise").random(32).tolist() == streams[0].tolist()
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.isin(streams[i], streams[j]).any()
    assert not np.isin(SecureRandom.derive(OTHER_KEY, "noise").random(32), streams[0]).any()


def test_no_key_draws_a_fresh_key_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not np.isin(SecureRandom().random(8), SecureRandom().random(8)).any()
    monkeypatch.setattr(os, "urandom", lambda n: KEY[:n])
    assert SecureRandom().random(8).tolist() == SecureRandom(KEY).random(8).tolist()


def test_successive_calls_continue_the_stream() -> None:
    whole = SecureRandom(KEY).random(10)
    rng = SecureRandom(KEY)
    parts = [rng.random(3), np.array([rng.random()]), rng.random((2, 3))]
    assert np.concatenate([p.ravel() for p in parts]).tolist() == whole.tolist()

    normals = SecureRandom(KEY).normal(0.0, 1.0, size=10)
    rng = SecureRandom(KEY)
    first, second = rng.normal(0.0, 1.0, size=4), rng.normal(0.0, 1.0, size=(2, 3))
    assert np.concatenate([first, second.ravel()]).tolist() == normals.tolist()
    assert not np.isin(second, first).any()
    # An odd count uses up its last pair of outputs: the next call starts after it.
    rng = SecureRandom(KEY)
    rng.normal(0.0, 1.0, size=3)
    assert rng.normal(0.0, 1.0, size=2).tolist() == normals[4:6].tolist()


def test_normal_and_random_share_one_keystream() -> None:
    rng = SecureRandom(KEY)
    rng.normal(0.0, 1.0, size=5)  # three pairs of outputs: 24 uniforms
    assert rng.random(4).tolist() == SecureRandom(KEY).random(28)[24:].tolist()


def test_zero_scale_returns_loc_exactly_and_draws_nothing() -> None:
    rng = SecureRandom(KEY)
    value = rng.normal(0.1, 0.0)
    assert type(value) is float
    assert value == 0.1
    assert rng.normal(-2.5, 0.0, size=(2, 2)).tolist() == [[-2.5, -2.5], [-2.5, -2.5]]
    assert rng.random(4).tolist() == SecureRandom(KEY).random(4).tolist()


# --- statistics -----------------------------------------------------------------------------------


def test_uniforms_lie_in_the_unit_interval_on_a_53_bit_grid_and_pass_ks() -> None:
    u = SecureRandom(KEY).random(100_000)
    assert u.dtype == np.float64
    assert ((u >= 0.0) & (u < 1.0)).all()
    grid = u * 2.0**53
    assert (grid == np.floor(grid)).all()
    odd = np.mod(grid, 2.0) == 1.0  # the lowest of the 53 bits is random
    assert 0.49 < odd.mean() < 0.51
    assert stats.kstest(u, "uniform").pvalue > 1e-3


@pytest.mark.parametrize(("loc", "scale"), [(0.0, 1.0), (3.0, 2.0), (-1.0, 1e-3)])
def test_normal_has_the_stated_mean_and_std_and_passes_ks(loc: float, scale: float) -> None:
    n = 100_000
    z = SecureRandom(KEY).normal(loc, scale, size=n)
    assert z.dtype == np.float64
    assert abs(z.mean() - loc) < 5 * scale / math.sqrt(n)
    low, high = stats.chi2.ppf(1e-6 / 2, n - 1) / (n - 1), stats.chi2.ppf(1 - 1e-6 / 2, n - 1) / (n - 1)
    assert low < z.var(ddof=1) / scale**2 < high
    assert stats.kstest(z, stats.norm(loc=loc, scale=scale).cdf).pvalue > 1e-3  # callable: scipy 1.18 too


def test_normal_has_full_float64_precision() -> None:
    z = SecureRandom(KEY).normal(0.0, 1.0, size=10_000)
    low_bits = z.view(np.uint64) & np.uint64(2**29 - 1)  # the mantissa bits a float32 does not have
    assert (low_bits != 0).mean() > 0.99
    assert len(np.unique(z)) == z.size


# --- sizes and errors -----------------------------------------------------------------------------


def test_size_mirrors_numpy_generator() -> None:
    streams: list[RandomStream] = [np.random.default_rng(0), SecureRandom(KEY)]
    for rng in streams:
        assert type(rng.random()) is float
        assert type(rng.normal(0.0, 2.0)) is float
        sizes: list[tuple[SupportsIndex | tuple[int, ...], tuple[int, ...]]] = [
            (5, (5,)),
            ((2, 3), (2, 3)),
            ((), ()),
            (0, (0,)),
            (np.int64(4), (4,)),
        ]
        for size, shape in sizes:
            u, z = rng.random(size), rng.normal(0.0, 2.0, size=size)
            assert (u.shape, u.dtype.name, z.shape, z.dtype.name) == (shape, "float64", shape, "float64")
        assert rng.normal(1.0, 2.0, (3,)).shape == (3,)


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_a_key_must_be_exactly_32_bytes(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecureRandom(bytes(length))


def test_a_key_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        SecureRandom("k" * 32)  # type: ignore[arg-type]


def test_a_secret_must_have_at_least_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SecureRandom.derive(bytes(31), "noise")


@pytest.mark.parametrize("scale", [-1.0, -1e-300, math.nan, math.inf, -math.inf])
def test_scale_must_be_finite_and_non_negative(scale: float) -> None:
    rng = SecureRandom(KEY)
    with pytest.raises(ValueError, match="scale"):
        rng.normal(0.0, scale)
    with pytest.raises(ValueError, match="scale"):
        rng.normal(0.0, scale, size=3)


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        SecureRandom(KEY).random(-1)
    with pytest.raises(ValueError, match="negative"):
        SecureRandom(KEY).normal(0.0, 1.0, size=(2, -1))
