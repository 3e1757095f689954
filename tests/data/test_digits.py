import numpy as np

from fedlab.data import load_digits_dataset


def test_digits_known_shape_range_and_classes() -> None:
    d = load_digits_dataset()
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == np.float32
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert d.num_classes == 10 and sorted(np.unique(d.y).tolist()) == list(range(10))
    # Every class holds between 174 and 183 images in scikit-learn's copy.
    assert np.bincount(d.y).min() == 174 and np.bincount(d.y).max() == 183
