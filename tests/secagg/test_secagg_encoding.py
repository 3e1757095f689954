"""Fixed-point encoding: clip and count, unbiased rounding, and never a wrapped (wrong) sum."""

import warnings

import numpy as np
import pytest

from fedlab.secagg.encoding import FixedPointCodec, decode_sum, encode
from fedlab.secagg.errors import EncodingError
from fedlab.secagg.ring import add_mod


def _secure_sum_of(vectors, codec, rng):
    encodings = [encode(v, codec, rng=rng) for v in vectors]
    total = np.zeros(len(vectors[0]), dtype=np.uint64)
    for e in encodings:
        total = add_mod(total, e.values, codec.modulus)
    return total, sum(e.clipped for e in encodings)


def test_n_times_the_range_beyond_the_modulus_is_refused_up_front():
    # Flower's case: 100 clients x 1000 steps cannot fit 16 bits; it silently wraps, we refuse.
    with pytest.raises(EncodingError, match="overflow") as info:
        FixedPointCodec(bits=16, clip=1.0, scale=1000.0, max_summands=100)
    assert isinstance(info.value, ValueError)
    assert "100 summands" in str(info.value) and "2**16" in str(info.value)
    with pytest.raises(EncodingError, match="overflow"):
        FixedPointCodec.for_sum(bits=8, clip=1.0, max_summands=1000)


@pytest.mark.parametrize("bits", [8, 16, 32, 62])
def test_extreme_sums_decode_without_wrapping(bits):
    n = 37
    codec = FixedPointCodec.for_sum(bits=bits, clip=2.5, max_summands=n)
    assert n * codec.max_magnitude <= 2 ** (bits - 1) - 1
    rng = np.random.default_rng(0)
    for value in (2.5, -2.5):
        total, clipped = _secure_sum_of([np.full(4, value)] * n, codec, rng)
        assert clipped == 0
        decoded = decode_sum(total, codec, num_summands=n)
        assert np.all(np.abs(decoded - n * value) <= codec.quantization_bound(n))
        assert np.all(np.sign(decoded) == np.sign(value))


def test_values_beyond_the_clipping_range_are_clipped_and_counted_never_wrapped():
    codec = FixedPointCodec.for_sum(bits=16, clip=1.0, max_summands=10)
    rng = np.random.default_rng(1)
    vectors = [np.array([5.0, -7.0, 0.25, np.inf]), np.array([1e9, 0.5, -np.inf, 0.0])]
    total, clipped = _secure_sum_of(vectors, codec, rng)
    assert clipped == 5
    decoded = decode_sum(total, codec, num_summands=2)
    expected = np.clip(vectors[0], -1, 1) + np.clip(vectors[1], -1, 1)
    assert np.all(np.abs(decoded - expected) <= codec.quantization_bound(2))


def test_random_sums_are_within_the_quantization_bound():
    rng = np.random.default_rng(2)
    n, d = 50, 2000
    codec = FixedPointCodec.for_sum(bits=20, clip=1.0, max_summands=n)
    vectors = [rng.normal(0, 0.7, d) for _ in range(n)]
    total, clipped = _secure_sum_of(vectors, codec, rng)
    decoded = decode_sum(total, codec, num_summands=n)
    expected = np.sum([np.clip(v, -1, 1) for v in vectors], axis=0)
    assert clipped == sum(int(np.count_nonzero(np.abs(v) > 1)) for v in vectors) > 0
    assert np.max(np.abs(decoded - expected)) <= codec.quantization_bound(n)


def test_stochastic_rounding_is_unbiased_and_uses_the_given_generator():
    codec = FixedPointCodec(bits=16, clip=1.0, scale=4.0, max_summands=1)
    value = np.full(100_000, 0.3)  # 1.2 steps: rounds to 1 or 2
    encoded = encode(value, codec, rng=np.random.default_rng(3)).values.astype(np.float64)
    assert set(np.unique(encoded)) == {1.0, 2.0}
    assert abs(encoded.mean() / codec.scale - 0.3) < 0.002
    again = encode(value, codec, rng=np.random.default_rng(3)).values
    assert np.array_equal(encoded, again)


def test_decoding_more_summands_than_configured_is_refused():
    codec = FixedPointCodec.for_sum(bits=16, clip=1.0, max_summands=10)
    with pytest.raises(EncodingError, match="1 to 10"):
        decode_sum(np.zeros(3, dtype=np.uint64), codec, num_summands=11)


def test_nan_and_bad_configurations_are_refused():
    codec = FixedPointCodec.for_sum(bits=16, clip=1.0, max_summands=10)
    with pytest.raises(EncodingError, match="NaN"):
        encode([0.0, np.nan], codec, rng=np.random.default_rng(0))
    for kwargs in (dict(bits=1), dict(bits=63), dict(clip=0.0), dict(clip=np.inf), dict(scale=-1.0)):
        with pytest.raises(EncodingError):
            FixedPointCodec(**{**dict(bits=16, clip=1.0, scale=1.0, max_summands=1), **kwargs})


def test_encoding_leaves_the_input_alone_and_counts_both_infinities_without_warning() -> None:
    codec = FixedPointCodec.for_sum(bits=16, clip=1.0, max_summands=4)
    values = np.array([np.inf, -np.inf, 0.5, 3.0, -0.25])
    before = values.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoded = encode(values, codec, rng=np.random.default_rng(0))
    assert np.array_equal(values, before)  # clipped and scaled in a private copy
    assert encoded.clipped == 3
    assert not encoded.values.flags.writeable
    lifted = decode_sum(encoded.values, codec, num_summands=1)
    assert lifted[0] == codec.max_magnitude / codec.scale and lifted[1] == -lifted[0]


def test_clipped_counts_ride_in_the_secure_sum_and_only_their_total_is_unmasked() -> None:
    from fedlab.secagg.crypto import seeded_source
    from fedlab.secagg.driver import simulate_round
    from fedlab.secagg.encoding import decode_counted_sum, encode_counted
    from fedlab.secagg.errors import Stage
    from fedlab.secagg.messages import SecAggParams, SecureSum

    n, d, clip = 8, 50, 0.5
    codec = FixedPointCodec.for_sum(bits=32, clip=clip, max_summands=n)
    rng = np.random.default_rng(4)
    vectors = {i: rng.normal(0.0, 0.4 * (i + 1) / n, d) for i in range(n)}
    clipped = {i: int(np.count_nonzero(np.abs(v) > clip)) for i, v in vectors.items()}
    assert len(set(clipped.values())) > 2  # the clients clip different numbers of values
    encoded = {i: encode_counted(v, codec, rng=rng).values for i, v in vectors.items()}
    params = SecAggParams(1, d + 1, codec.modulus, 4, 3, bytes(32))
    result = simulate_round(
        encoded, params=params, source=seeded_source(b"count"), dropouts={Stage.MASKED_INPUT: {2}}
    )
    assert isinstance(result, SecureSum) and 2 not in result.included
    counted = decode_counted_sum(result.total, codec, num_summands=len(result.included))
    assert counted.clipped == sum(clipped[i] for i in result.included)
    expected = sum(np.clip(vectors[i], -clip, clip) for i in result.included)
    assert np.max(np.abs(counted.values - expected)) <= codec.quantization_bound(len(result.included))


def test_one_clients_count_is_capped_so_the_count_slot_cannot_wrap() -> None:
    from fedlab.secagg.encoding import decode_counted_sum, encode_counted, max_count

    codec = FixedPointCodec.for_sum(bits=8, clip=1.0, max_summands=4)
    cap = max_count(codec)
    assert cap * 4 <= 2**7 - 1
    everything_clipped = np.full(3 * cap, 9.0)
    encodings = [encode_counted(everything_clipped, codec, rng=np.random.default_rng(i)) for i in range(4)]
    assert all(e.clipped == 3 * cap and int(e.values[-1]) == cap for e in encodings)
    total = np.zeros(3 * cap + 1, dtype=np.uint64)
    for e in encodings:
        total = add_mod(total, e.values, codec.modulus)
    assert decode_counted_sum(total, codec, num_summands=4).clipped == 4 * cap
    with pytest.raises(EncodingError, match="count slot"):
        decode_counted_sum(np.array([0, 2**7], dtype=np.uint64), codec, num_summands=1)
