"""Per-device data files: a configured data set split among clients, written as ``fedlab client`` reads it.

Each client's examples go to ``client-<i>.csv``: one column per feature (``f0``, ``f1``, ...,
flattened in C order, with the values the server's loader produces, so scaled as the server's
test set is) and an integer ``label`` column holding the task's class numbers. ``fedlab client``
reads such a file with ``--data``; with ``feature_shape`` and ``num_classes`` (printed by
``fedlab data split``) a device's file keeps the task's shape and class numbers even when the
device lacks some classes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedlab.core.errors import DataError
from fedlab.data.types import ArrayDataset, FederatedData

LABEL = "label"


def dataset_frame(data: ArrayDataset) -> pd.DataFrame:
    """One row per example: the flattened features ``f0..`` and the ``label`` column.

    Example:
        >>> import numpy as np
        >>> frame = dataset_frame(ArrayDataset(np.zeros((2, 1, 2), np.float32), np.array([0, 1]),
        ...                                    num_classes=2))
        >>> list(frame.columns), frame[LABEL].tolist()
        (['f0', 'f1', 'label'], [0, 1])
    """
    flat = data.x.reshape(len(data), -1)
    frame = pd.DataFrame(flat, columns=[f"f{i}" for i in range(flat.shape[1])])
    frame[LABEL] = data.y
    return frame


def write_client_files(data: FederatedData, out: Path) -> list[Path]:
    """Write ``client-<i>.csv`` for every client of ``data`` into ``out`` (created; must not hold them).

    Raises:
        DataError: If a client file exists already (nothing is overwritten).

    Example:
        >>> import tempfile
        >>> from fedlab.core.config import config_from_dict
        >>> from fedlab.data.federated import build_federated_data
        >>> section = config_from_dict({"data": {"dataset": "digits", "num_clients": 3}}).data
        >>> paths = write_client_files(build_federated_data(section, seed=0), Path(tempfile.mkdtemp()))
        >>> [p.name for p in paths]
        ['client-0.csv', 'client-1.csv', 'client-2.csv']
    """
    paths = [out / f"client-{i}.csv" for i in range(data.num_clients)]
    taken = [p for p in paths if p.exists()]
    if taken:
        raise DataError(f"{taken[0]} exists: choose an empty --out directory")
    out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        dataset_frame(data.client(i)).to_csv(path, index=False)
    return paths
