"""Local data sets: a folder of images per class, or a CSV / Parquet table with a label column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from fedlab.core.errors import DataError
from fedlab.data.types import ArrayDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".csv", ".parquet")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_MAX_PIXEL = 255.0


def load_local_files(
    path: Path, *, label_column: str = "label", num_classes: int | None = None
) -> ArrayDataset:
    """Load a local data set.

    Two layouts are understood:

    - a folder with one subfolder per class (the subfolder name is the class; classes
      numbered in sorted name order) holding ``.png`` / ``.jpg`` / ``.jpeg`` images of
      one common size. ``x`` has shape ``(n, C, H, W)`` in ``[0, 1]``: ``C = 1`` when
      every image is grayscale, else ``C = 3`` (RGB; alpha is dropped);
    - a ``.csv`` or ``.parquet`` file with a label column; every other column is a
      numeric feature (``x`` of shape ``(n, f)``) and the distinct labels are
      numbered ``0 .. K-1`` in sorted order; with ``num_classes``, whole-number labels in
      ``0 .. num_classes-1`` keep their value (a device's table that lacks some classes keeps
      the task's label numbers).

    Args:
        path: The folder or file.
        label_column: Name of the label column in a table.
        num_classes: The task's number of classes, when a table may lack some (None: the
            distinct labels found).

    Raises:
        DataError: On a missing path, an empty folder, unreadable or differently sized
            images, a missing label column or non-numeric or missing features.

    """
    if not path.exists():
        raise DataError(f"data.path: does not exist: {path}")
    if path.is_dir():
        return _load_image_folder(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(
            f"data.path: unsupported file type {suffix or '(none)'!r} in {path} "
            "(expected a folder of images, .csv or .parquet)"
        )
    return _table_to_dataset(_read_table(path), path, label_column, num_classes)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """Map each class subfolder name to its image files; subfolders without images are skipped."""
    classes = {d.name: _image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    found = {name: files for name, files in classes.items() if files}
    if not found:
        raise DataError(f"data.path: no image files found in {root}")
    return found


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"data.path: cannot read image {path}: {_one_line(exc)}") from None


def _load_image_folder(root: Path) -> ArrayDataset:
    classes = _class_folders(root)
    files = [f for names in classes.values() for f in names]
    labels = np.concatenate([np.full(len(fs), c, dtype=np.int64) for c, fs in enumerate(classes.values())])
    images = [_open_image(f) for f in files]
    _check_same_size(images, files)
    mode = "L" if all(im.mode in _GRAY_MODES for im in images) else "RGB"
    x = np.stack([_to_chw(im.convert(mode)) for im in images])
    return ArrayDataset(x, labels, num_classes=len(classes))


def _check_same_size(images: list[Image.Image], files: list[Path]) -> None:
    first = images[0].size
    for image, file in zip(images, files, strict=True):
        if image.size != first:
            raise DataError(
                f"data.path: images differ in size: {files[0]} is {first[0]}x{first[1]}, "
                f"{file} is {image.size[0]}x{image.size[1]}"
            )


def _to_chw(image: Image.Image) -> NDArray[np.float32]:
    """Return a single-mode (``L`` or ``RGB``) image as a float32 ``(C, H, W)`` array in [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(_MAX_PIXEL)
    if pixels.ndim == 2:
        return pixels[np.newaxis]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"data.path: file is empty: {path}") from None
    except (pd.errors.ParserError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"data.path: cannot read {path}: {_one_line(exc)}") from None


def _table_to_dataset(
    frame: pd.DataFrame, path: Path, label_column: str, num_classes: int | None = None
) -> ArrayDataset:
    if label_column not in frame.columns:
        raise DataError(f"data.label_column: column {label_column!r} not in {path}")
    if len(frame) == 0:
        raise DataError(f"data.path: no rows in {path}")
    features = frame.drop(columns=[label_column])
    if features.shape[1] == 0:
        raise DataError(f"data.path: no feature columns besides {label_column!r} in {path}")
    _check_features(features, path)
    codes, classes = _encode_labels(frame[label_column], path, label_column, num_classes)
    return ArrayDataset(features.to_numpy(dtype=np.float32), codes, num_classes=classes)


def _check_features(features: pd.DataFrame, path: Path) -> None:
    for name in features.columns:
        column = features[name]
        if not pd.api.types.is_numeric_dtype(column):
            raise DataError(f"data.path: feature column {name!r} in {path} is not numeric")
        if column.isna().any():
            raise DataError(f"data.path: feature column {name!r} in {path} has missing values")


def _encode_labels(
    labels: pd.Series, path: Path, label_column: str, num_classes: int | None = None
) -> tuple[NDArray[np.int64], int]:
    """The labels as class numbers, and the number of classes.

    Whole-number labels in ``0 .. num_classes-1`` keep their value when ``num_classes`` is given;
    otherwise the distinct labels are numbered ``0 .. K-1`` in sorted order.
    """
    if labels.isna().any():
        raise DataError(f"data.label_column: column {label_column!r} in {path} has missing values")
    values = labels.to_numpy()
    if num_classes is not None and pd.api.types.is_numeric_dtype(labels):
        whole = np.all(np.mod(values, 1) == 0)
        if whole and values.min() >= 0 and values.max() < num_classes:
            return values.astype(np.int64).reshape(-1), num_classes
        raise DataError(
            f"data.label_column: column {label_column!r} in {path} must hold whole numbers "
            f"0..{num_classes - 1} (num_classes {num_classes})"
        )
    try:
        classes, codes = np.unique(labels.to_numpy(), return_inverse=True)
    except TypeError:
        raise DataError(f"data.label_column: column {label_column!r} in {path} mixes label types") from None
    return codes.astype(np.int64).reshape(-1), int(classes.shape[0])
