from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedlab.core.errors import DataError
from fedlab.data import load_local_files


def _write_image(path: Path, value: int, size: tuple[int, int] = (5, 4), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, int, int] = value if mode == "L" else (value, 0, 255)
    Image.new(mode, size, color=color).save(path)


def _table() -> pd.DataFrame:
    return pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "label": ["dog", "cat", "dog", "eel"], "b": [0, 1, 0, 1]})


def test_grayscale_image_folder(tmp_path: Path) -> None:
    _write_image(tmp_path / "zebra" / "1.png", 255)
    _write_image(tmp_path / "ant" / "1.png", 0)
    _write_image(tmp_path / "ant" / "2.jpg", 0)
    (tmp_path / "notes.txt").write_text("ignored")
    d = load_local_files(tmp_path)
    assert d.x.shape == (3, 1, 4, 5) and d.x.dtype == np.float32
    assert d.num_classes == 2 and d.y.tolist() == [0, 0, 1]  # classes in sorted folder order
    assert d.x[2].min() == 1.0 and d.x[0].max() == 0.0


def test_color_images_keep_three_channels(tmp_path: Path) -> None:
    _write_image(tmp_path / "a" / "x.png", 128, mode="RGB")
    _write_image(tmp_path / "b" / "y.png", 10)  # a grayscale image is promoted to RGB
    d = load_local_files(tmp_path)
    assert d.x.shape == (2, 3, 4, 5)
    assert np.allclose(d.x[0, :, 0, 0], [128 / 255, 0.0, 1.0])
    assert np.allclose(d.x[1, :, 0, 0], 10 / 255)


def test_csv_and_parquet_tables(tmp_path: Path) -> None:
    _table().to_csv(tmp_path / "t.csv", index=False)
    _table().to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        d = load_local_files(tmp_path / name)
        assert d.x.shape == (4, 2) and d.x.dtype == np.float32
        assert d.x[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
        assert d.num_classes == 3 and d.y.tolist() == [1, 0, 1, 2]  # cat < dog < eel


def test_custom_label_column(tmp_path: Path) -> None:
    pd.DataFrame({"f": [0.5, 1.5], "target": [3, 7]}).to_csv(tmp_path / "t.csv", index=False)
    d = load_local_files(tmp_path / "t.csv", label_column="target")
    assert d.y.tolist() == [0, 1] and d.x.shape == (2, 1)


def _bad_cases(tmp: Path) -> list[tuple[Path, str, str]]:
    (tmp / "empty").mkdir()
    _write_image(tmp / "sizes" / "a" / "1.png", 0, size=(4, 4))
    _write_image(tmp / "sizes" / "b" / "1.png", 0, size=(8, 8))
    (tmp / "broken" / "a").mkdir(parents=True)
    (tmp / "broken" / "a" / "1.png").write_bytes(b"not a png")
    _table().drop(columns=["label"]).to_csv(tmp / "nolabel.csv", index=False)
    _table().assign(b=["x", "y", "z", "w"]).to_csv(tmp / "text.csv", index=False)
    _table().assign(a=[1.0, None, 2.0, 3.0]).to_parquet(tmp / "gaps.parquet")
    (tmp / "empty.csv").write_text("")
    (tmp / "data.txt").write_text("1,2")
    return [
        (tmp / "missing", "data.path", "does not exist"),
        (tmp / "empty", "data.path", "no image files found"),
        (tmp / "sizes", "data.path", "images differ in size"),
        (tmp / "broken", "data.path", "cannot read image"),
        (tmp / "nolabel.csv", "data.label_column", "column 'label' not in"),
        (tmp / "text.csv", "data.path", "feature column 'b'"),
        (tmp / "gaps.parquet", "data.path", "missing values"),
        (tmp / "empty.csv", "data.path", "empty"),
        (tmp / "data.txt", "data.path", "unsupported file type"),
    ]


def test_bad_inputs_raise_one_line_data_errors(tmp_path: Path) -> None:
    for path, key, phrase in _bad_cases(tmp_path):
        with pytest.raises(DataError) as info:
            load_local_files(path)
        message = str(info.value)
        assert message.startswith(f"{key}: ") and phrase in message, message
        assert "\n" not in message
