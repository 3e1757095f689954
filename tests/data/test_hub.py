"""Hub data sets through Flower Datasets, offline: a data set written to local disk in the test."""

import datasets.config
import huggingface_hub.constants
import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from fedlab.core.config import DataSection
from fedlab.core.errors import ConfigError, DataError
from fedlab.data.digits import load_digits_dataset
from fedlab.data.federated import build_federated_data


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and a private cache: nothing is fetched, nothing outside the test is written."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def write_digits(folder, *, images: bool, test_split: bool) -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits_dataset()
    x, y = digits.x[:400], digits.y[:400]
    folder.mkdir()
    if images:
        pixels = [PILImage.fromarray(np.round(img[0] * 255).astype(np.uint8), mode="L") for img in x]
        features = Features({"image": Image(), "label": ClassLabel(num_classes=10)})
        columns = {"image": pixels, "label": y.tolist()}
    else:
        features = Features({"pixels": Sequence(Value("float32")), "label": Value("int64")})
        columns = {"pixels": x.reshape(len(x), -1).tolist(), "label": y.tolist()}
    data = Dataset.from_dict(columns, features=features)
    if test_split:
        data.select(range(300)).to_parquet(str(folder / "train.parquet"))
        data.select(range(300, 400)).to_parquet(str(folder / "test.parquet"))
    else:
        data.to_parquet(str(folder / "train.parquet"))
    return x, y


def test_an_image_data_set_with_a_test_split_is_partitioned_and_scaled_like_digits(tmp_path):
    x, y = write_digits(tmp_path / "hub", images=True, test_split=True)
    section = DataSection(dataset="hub", hub_name=str(tmp_path / "hub"), num_clients=4, partitioner="iid")
    data = build_federated_data(section, seed=0)
    assert data.num_clients == 4 and data.num_classes == 10 and data.feature_shape == (1, 8, 8)
    assert sum(data.client_size(i) for i in range(4)) == 300
    np.testing.assert_allclose(data.test.x, np.round(x[300:] * 255) / 255, atol=1e-6)
    np.testing.assert_array_equal(data.test.y, y[300:])
    pooled = np.concatenate([data.client(i).y for i in range(4)])
    assert sorted(pooled.tolist()) == sorted(y[:300].tolist())  # every training example, once


def test_numeric_columns_without_a_test_split_hold_out_a_stratified_fraction(tmp_path):
    write_digits(tmp_path / "hub", images=False, test_split=False)
    section = DataSection(
        dataset="hub", hub_name=str(tmp_path / "hub"), hub_feature="pixels", num_clients=3,
        partitioner="dirichlet", dirichlet_alpha=1.0, test_fraction=0.25,
    )  # fmt: skip
    data = build_federated_data(section, seed=3)
    assert data.feature_shape == (64,) and len(data.test) == 100
    assert sum(data.client_size(i) for i in range(3)) == 300


def test_an_unreachable_name_or_a_missing_column_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"data\.hub_name: cannot load 'no-such-user/no-such-set' \(offline"):
        build_federated_data(DataSection(dataset="hub", hub_name="no-such-user/no-such-set"), seed=0)
    write_digits(tmp_path / "hub", images=False, test_split=True)
    with pytest.raises(DataError, match=r"no column 'image'"):
        build_federated_data(DataSection(dataset="hub", hub_name=str(tmp_path / "hub")), seed=0)
    with pytest.raises(ConfigError, match=r"data\.hub_name: required"):
        DataSection(dataset="hub")
