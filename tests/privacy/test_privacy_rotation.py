"""Randomized Walsh-Hadamard rotation: orthonormal, exactly invertible, seed-driven, spreading."""

import numpy as np
import pytest

from fedlab.privacy.rotation import padded_dim, rotate, unrotate


@pytest.mark.parametrize("dim", [1, 2, 3, 100, 1000, 1024, 4097])
def test_rotation_preserves_norm_and_inverts_exactly(dim: int) -> None:
    rng = np.random.default_rng(dim)
    x = rng.normal(size=dim) * rng.exponential(size=dim)
    y = rotate(x, seed=12345)
    assert y.shape == (padded_dim(dim),)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    np.testing.assert_allclose(unrotate(y, seed=12345, dim=dim), x, rtol=0, atol=1e-12 * np.abs(x).max())


def test_rotation_is_an_orthonormal_matrix() -> None:
    matrix = rotate(np.eye(16), seed=3)  # row i is the image of e_i
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(16), atol=1e-12)


def test_stacked_vectors_rotate_like_single_ones() -> None:
    x = np.random.default_rng(0).normal(size=(5, 300))
    stacked = rotate(x, seed=9)
    for row, out in zip(x, stacked, strict=True):
        np.testing.assert_allclose(out, rotate(row, seed=9), atol=1e-12)
    np.testing.assert_allclose(unrotate(stacked, seed=9, dim=300), x, atol=1e-12)


def test_same_seed_same_map_and_different_seeds_differ() -> None:
    x = np.random.default_rng(1).normal(size=512)
    np.testing.assert_array_equal(rotate(x, seed=7), rotate(x, seed=7))
    outputs = [rotate(x, seed=s) for s in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.allclose(outputs[i], outputs[j])
    # Inverting with the wrong seed does not give x back.
    assert not np.allclose(unrotate(outputs[0], seed=1, dim=512), x)


def test_rotation_spreads_a_spiky_vector() -> None:
    d = 4096
    one_hot = np.zeros(d)
    one_hot[17] = 10.0
    y = rotate(one_hot, seed=0)
    # A single spike becomes perfectly flat: every coordinate is +-||x||/sqrt(d').
    np.testing.assert_allclose(np.abs(y), 10.0 / np.sqrt(d), rtol=1e-12)

    sparse = np.zeros(d)
    sparse[np.random.default_rng(2).choice(d, size=8, replace=False)] = 5.0
    norm = np.linalg.norm(sparse)
    assert np.abs(sparse).max() / (norm / np.sqrt(d)) > 20  # spiky before
    for seed in range(20):
        assert np.abs(rotate(sparse, seed=seed)).max() <= 4.0 * norm / np.sqrt(d)  # flat after


def test_sign_flips_are_balanced_over_seeds() -> None:
    one_hot = np.zeros(256)
    one_hot[0] = 1.0
    firsts = np.array([rotate(one_hot, seed=s) for s in range(400)])
    # Row 0 of H is all ones, so coordinate j of H D e_0 is the sign of e_0: fair over seeds.
    assert abs(np.sign(firsts[:, 0]).mean()) < 0.2


@pytest.mark.parametrize("seed", [-1, 1.5, True, "7"])
def test_invalid_seed_is_refused(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        rotate(np.ones(4), seed=seed)  # type: ignore[arg-type]


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        rotate(np.array([1.0, np.nan]), seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        rotate(np.array([]), seed=0)
    with pytest.raises(ValueError, match="power-of-two"):
        unrotate(np.ones(6), seed=0, dim=5)
    with pytest.raises(ValueError, match="does not pad"):
        unrotate(np.ones(8), seed=0, dim=4)
    with pytest.raises(ValueError, match="positive integer"):
        padded_dim(0)
