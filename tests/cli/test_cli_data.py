"""``fedlab data split``: the files a device reads hold exactly its simulated partition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedlab.core.config import load_config
from fedlab.data.federated import build_federated_data
from fedlab.data.files import load_local_files

from .test_cli_errors import DEMO, assert_one_line_error, run_fedlab

DIRICHLET = ['data.partitioner="dirichlet"', "data.dirichlet_alpha=0.1", "data.num_clients=6"]


def test_each_file_is_the_clients_partition_with_the_tasks_class_numbers(tmp_path: Path) -> None:
    out = tmp_path / "devices"
    sets = [arg for item in DIRICHLET for arg in ("--set", item)]
    done = run_fedlab("data", "split", str(DEMO), "--out", str(out), *sets, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert 'feature_shape = "1,8,8", num_classes = 10' in done.stdout
    config = load_config(DEMO, DIRICHLET)
    data = build_federated_data(config.data, seed=config.run.seed)
    assert sorted(p.name for p in out.iterdir()) == [f"client-{i}.csv" for i in range(6)]
    lacking = 0
    for i in range(6):
        expected = data.client(i)
        device = load_local_files(out / f"client-{i}.csv", num_classes=10)
        assert np.array_equal(device.x, expected.x.reshape(len(expected), -1))  # same scaling, exactly
        assert np.array_equal(device.y, expected.y) and device.num_classes == 10
        lacking += len(set(range(10)) - set(expected.y.tolist())) > 0
    assert lacking > 0  # alpha 0.1: some device lacks a class and still keeps the class numbers


def test_a_table_lacking_classes_keeps_its_label_numbers_only_with_num_classes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"f": [0.1, 0.2, 0.3], "label": [2, 7, 7]}).to_csv(path, index=False)
    assert load_local_files(path, num_classes=10).y.tolist() == [2, 7, 7]
    assert load_local_files(path).y.tolist() == [0, 1, 1]  # no task given: the labels found


def test_split_refuses_to_overwrite_and_bad_config_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "devices"
    out.mkdir()
    (out / "client-0.csv").write_text("kept")
    taken = run_fedlab("data", "split", str(DEMO), "--out", str(out), cwd=tmp_path)
    assert_one_line_error(taken, "client-0.csv exists")
    assert (out / "client-0.csv").read_text() == "kept"
    bad = run_fedlab(
        "data", "split", str(DEMO), "--out", str(tmp_path / "x"), "--set", "data.num_clients=0", cwd=tmp_path
    )
    assert_one_line_error(bad, "num_clients")
