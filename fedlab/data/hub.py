"""Hub data sets through Flower Datasets' ``FederatedDataset``: a named data set or a local folder.

``data.hub_name`` is what ``FederatedDataset(dataset=...)`` takes: a Hugging Face Hub name (needs the
network the first time; then the local cache) or a local folder of data files (``train.parquet``,
``test.csv``, ...), which needs no network. The ``data.hub_split`` split is the clients' pool,
partitioned by ``data.partitioner`` like every pooled data set (Flower Datasets' partitioners); the
``data.hub_test_split`` split is the central test set, or, when that is empty or absent, a
stratified ``test_fraction`` of the pool is held out. ``data.hub_feature`` names the feature
column: images become ``(C, H, W)`` in ``[0, 1]``, numbers or lists of numbers a feature vector;
``data.hub_label`` names the integer label column.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fedlab.core.config import DataSection
from fedlab.core.errors import DataError
from fedlab.data.types import ArrayDataset

if TYPE_CHECKING:
    from datasets import Dataset
    from flwr_datasets import FederatedDataset

_MAX_PIXEL = 255.0


def load_hub_splits(section: DataSection) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The pool and, when the data set has one, the test split of ``data.hub_name`` as arrays.

    Raises:
        DataError: If the data set cannot be loaded (offline, unknown name, missing split or
            column) or its columns are not features and integer labels.

    """
    from flwr_datasets import FederatedDataset

    name = section.hub_name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fds = FederatedDataset(dataset=name, partitioners={section.hub_split: 1}, shuffle=False)
            pool = fds.load_split(section.hub_split)
            test = _split_or_none(fds, section.hub_test_split)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise DataError(
            f"data.hub_name: cannot load {name!r} (offline, unknown, or no split {section.hub_split!r}): "
            f"{reason}"
        ) from None
    train = _arrays(pool, section)
    return train, (_arrays(test, section, num_classes=train.num_classes) if test is not None else None)


def _split_or_none(fds: FederatedDataset, split: str) -> Dataset | None:
    if not split:
        return None
    try:
        return fds.load_split(split)
    except ValueError:  # the data set has no such split
        return None


def _arrays(split: Dataset, section: DataSection, *, num_classes: int | None = None) -> ArrayDataset:
    missing = [c for c in (section.hub_feature, section.hub_label) if c not in split.column_names]
    if missing:
        raise DataError(
            f"data.hub_feature/hub_label: no column {missing[0]!r} in {section.hub_name!r} "
            f"(columns: {', '.join(split.column_names)})"
        )
    labels = np.asarray(split[section.hub_label])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"data.hub_label: column {section.hub_label!r} must hold integer labels >= 0")
    feature = split.features[section.hub_feature]
    x = _images(split[section.hub_feature]) if type(feature).__name__ == "Image" else _numbers(split, section)
    classes = num_classes or _class_count(split.features[section.hub_label], labels)
    return ArrayDataset(x, labels.astype(np.int64), classes)


def _images(images: list[Any]) -> NDArray[np.float32]:
    arrays = [np.asarray(image, dtype=np.float32) for image in images]
    if len({a.shape for a in arrays}) > 1:
        raise DataError("data.hub_feature: images of different sizes")
    stacked = np.stack(arrays) / np.float32(_MAX_PIXEL)
    return stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)


def _numbers(split: Dataset, section: DataSection) -> NDArray[np.float32]:
    try:
        x = np.asarray(split[section.hub_feature], dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            f"data.hub_feature: column {section.hub_feature!r} is neither images nor numbers of one shape"
        ) from None
    return x.reshape(len(x), -1) if x.ndim == 1 else x


def _class_count(feature: Any, labels: NDArray[np.integer]) -> int:
    declared = getattr(feature, "num_classes", None)
    return int(declared) if declared else int(labels.max()) + 1 if labels.size else 1
