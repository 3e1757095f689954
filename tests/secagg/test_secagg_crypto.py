"""Crypto: key agreement, labelled HKDF, authenticated shares, and the mask generator."""

import numpy as np
import pytest
from scipy import stats

from fedlab.secagg import crypto
from fedlab.secagg.errors import DecryptionError, ProtocolError


def _pair_key(source, a=1, b=2, round_id=9):
    ka, kb = crypto.generate_keypair(source), crypto.generate_keypair(source)
    secret = crypto.agree(ka.private, kb.public)
    return crypto.derive_key(
        secret, label=crypto.SHARE_KEY_LABEL, context=crypto.pair_context(round_id, a, b)
    )


def test_agreement_is_symmetric_and_keys_come_from_the_source():
    source = crypto.seeded_source(b"k")
    a, b = crypto.generate_keypair(source), crypto.generate_keypair(source)
    assert crypto.agree(a.private, b.public) == crypto.agree(b.private, a.public)
    assert crypto.public_key_of(a.private) == a.public
    again = crypto.seeded_source(b"k")
    assert crypto.generate_keypair(again) == a
    assert "private" not in repr(a)


def test_low_order_public_key_is_refused():
    a = crypto.generate_keypair(crypto.seeded_source(b"k"))
    with pytest.raises(ProtocolError):
        crypto.agree(a.private, bytes(32))  # the identity point gives an all-zero secret


def test_hkdf_labels_rounds_and_pairs_give_distinct_keys():
    secret = bytes(range(32))
    keys = {
        crypto.derive_key(secret, label=label, context=crypto.pair_context(r, a, b))
        for label in (crypto.MASK_SEED_LABEL, crypto.SHARE_KEY_LABEL)
        for r in (1, 2)
        for a, b in ((1, 2), (1, 3))
    }
    assert len(keys) == 8


def test_share_roundtrip_and_every_attack_on_the_ciphertext_fails():
    source = crypto.seeded_source(b"aead")
    key = _pair_key(source)
    ct = crypto.encrypt_share(key, b"share", sender=1, receiver=2, round_id=9, source=source)
    assert crypto.decrypt_share(key, ct, sender=1, receiver=2, round_id=9) == b"share"
    tampered = bytearray(ct)
    tampered[-20] ^= 1
    attacks = [
        (bytes(tampered), dict(sender=1, receiver=2, round_id=9)),  # tampered body
        (ct[:-1], dict(sender=1, receiver=2, round_id=9)),  # truncated tag
        (ct[:10], dict(sender=1, receiver=2, round_id=9)),  # truncated to nothing
        (ct, dict(sender=1, receiver=2, round_id=10)),  # replayed into another round
        (ct, dict(sender=2, receiver=1, round_id=9)),  # reflected (same symmetric key!)
        (ct, dict(sender=3, receiver=2, round_id=9)),  # claimed by another sender
        (ct, dict(sender=1, receiver=3, round_id=9)),  # re-routed to another receiver
    ]
    for ciphertext, where in attacks:
        with pytest.raises(DecryptionError):
            crypto.decrypt_share(key, ciphertext, **where)
    other_key = _pair_key(source)
    with pytest.raises(DecryptionError):
        crypto.decrypt_share(other_key, ct, sender=1, receiver=2, round_id=9)


def test_nonces_are_fresh_per_encryption():
    source = crypto.seeded_source(b"n")
    key = _pair_key(source)
    a = crypto.encrypt_share(key, b"x", sender=1, receiver=2, round_id=1, source=source)
    b = crypto.encrypt_share(key, b"x", sender=1, receiver=2, round_id=1, source=source)
    assert a[:12] != b[:12]


@pytest.mark.parametrize("modulus", [2, 2**8, 2**32, 2**62, 1000, 3 * 2**20 + 1, 2**40 + 15])
def test_masks_are_in_range_deterministic_and_of_the_right_length(modulus):
    seed = crypto.seeded_source(b"m")(32)
    mask = crypto.expand_mask(seed, 10_001, modulus)
    assert mask.dtype == np.uint64 and mask.shape == (10_001,)
    assert int(mask.max()) < modulus
    assert np.array_equal(mask, crypto.expand_mask(seed, 10_001, modulus))
    assert np.array_equal(mask[:100], crypto.expand_mask(seed, 100, modulus))  # a prefix of one stream
    assert crypto.expand_mask(seed, 0, modulus).shape == (0,)


@pytest.mark.parametrize("modulus", [2**16, 1000, 2**32, 6 * 10**9 + 1])
def test_masks_pass_a_chi_square_uniformity_test(modulus):
    mask = crypto.expand_mask(crypto.seeded_source(b"u")(32), 200_000, modulus)
    bins = 50 if modulus == 1000 else 64
    counts = np.bincount((mask.astype(np.float64) * bins / modulus).astype(np.int64), minlength=bins)
    expected = np.diff(np.ceil(np.arange(bins + 1) * modulus / bins)) * len(mask) / modulus
    assert stats.chisquare(counts, expected).pvalue > 1e-4


def test_rejection_sampling_has_no_modulo_bias():
    # m = 3 * 2**30: reducing 32-bit words mod m would make [0, 2**30) twice as likely as the rest.
    modulus = 3 * 2**30
    mask = crypto.expand_mask(crypto.seeded_source(b"bias")(32), 300_000, modulus)
    low = np.count_nonzero(mask < 2**30) / len(mask)
    assert abs(low - 1 / 3) < 0.005


def test_every_bit_of_the_seed_changes_the_mask():
    seed = crypto.seeded_source(b"bits")(32)
    base = crypto.expand_mask(seed, 4096, 256)
    for bit in range(256):
        flipped = bytearray(seed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        other = crypto.expand_mask(bytes(flipped), 4096, 256)
        agreement = np.count_nonzero(base == other) / len(base)
        assert agreement < 0.01, f"bit {bit}: masks agree on {agreement:.3f} of entries (unrelated: 1/256)"


def test_mask_seed_must_be_256_bits():
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.expand_mask(bytes(4), 10, 2**32)


def test_random_source_must_return_the_requested_size():
    with pytest.raises(ValueError):
        crypto.generate_keypair(lambda n: bytes(n - 1))
