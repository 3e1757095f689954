"""Text corpora as next-token prediction: natural per-file and per-folder clients, a held-out tail."""

import numpy as np
import pytest

from fedlab.core.config import DataSection
from fedlab.core.errors import ConfigError, DataError
from fedlab.data.federated import build_federated_data
from fedlab.data.text import CHAR_VOCAB, corpus_clients, encode, load_text, windows

WORDS = ["alpha", "beta", "gamma", "delta"]


def text_of(i: int, size: int = 600) -> bytes:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size)).encode()[:size]


def as_bytes(row: np.ndarray) -> bytes:
    return bytes(int(v) for v in row)


def section(path, **keys):
    base = {"dataset": "text", "path": str(path), "num_clients": 3, "context_length": 8, "text_stride": 4}
    return DataSection(**{**base, **keys})


@pytest.fixture
def folder(tmp_path):
    for i, name in enumerate(["c.txt", "a.txt", "b.txt"]):
        (tmp_path / name).write_bytes(text_of(i))
    return tmp_path


def test_windows_label_each_context_with_the_token_that_follows():
    tokens = np.arange(10, dtype=np.int64) * 3
    x, y = windows(tokens, context=4, stride=3)
    assert x.dtype == np.float32
    assert x.tolist() == [[0, 3, 6, 9], [9, 12, 15, 18]]
    assert y.tolist() == [12, 21]
    assert windows(tokens[:4], context=4, stride=1)[0].shape == (0, 4)


def test_a_client_per_file_in_name_order_each_holding_only_its_file(folder):
    data = load_text(section(folder, test_fraction=0.25))
    assert data.num_clients == 3 and data.num_classes == 256 and data.feature_shape == (8,)
    for client, name in enumerate(["a.txt", "b.txt", "c.txt"]):
        raw = (folder / name).read_bytes()
        cut = round(len(raw) * 0.75)
        train = data.client(client)
        assert len(train) == (cut - 8 + 3) // 4  # starts 0, 4, ... below cut - 8
        for row, label in zip(train.x, train.y, strict=True):
            assert as_bytes(row) + bytes([label]) in raw[:cut]
    tails = [
        (folder / n).read_bytes()[round(len((folder / n).read_bytes()) * 0.75) :]
        for n in ["a.txt", "b.txt", "c.txt"]
    ]
    for row, label in zip(data.test.x, data.test.y, strict=True):
        assert any(as_bytes(row) + bytes([label]) in tail for tail in tails)


def test_a_subfolder_is_one_client_over_its_files(tmp_path):
    (tmp_path / "user1").mkdir()
    (tmp_path / "user1" / "one.txt").write_bytes(b"x" * 300)
    (tmp_path / "user1" / "two.txt").write_bytes(b"y" * 300)
    (tmp_path / "user2.txt").write_bytes(b"z" * 300)
    (tmp_path / "user1" / ".hidden").write_bytes(b"q" * 300)
    (tmp_path / ".notes").write_bytes(b"q" * 300)
    clients = corpus_clients(section(tmp_path))
    assert [name for name, _ in clients] == ["user1", "user2.txt"]
    data = load_text(section(tmp_path, num_clients=2, test_fraction=0.1))
    seen = set(data.client(0).y.tolist())
    assert seen == {ord("x"), ord("y"), ord("\n")} or seen == {ord("x"), ord("y")}
    assert set(data.client(1).y.tolist()) == {ord("z")}


def test_text_max_bytes_bounds_each_client(folder):
    small = load_text(section(folder, text_max_bytes=200, test_fraction=0.5))
    assert small.client_size(0) == (100 - 8 + 3) // 4


def test_character_level_uses_a_fixed_public_alphabet(tmp_path):
    (tmp_path / "u.txt").write_text("caf\u00e9 au lait\n" * 40, encoding="utf-8")
    data = load_text(section(tmp_path, num_clients=1, text_level="char"))
    assert data.num_classes == CHAR_VOCAB == 98
    assert 0 in set(data.client(0).x.ravel().astype(int).tolist())  # the unknown character
    assert encode(b"\t\n ~", "char").tolist() == [1, 2, 3, 97]


def test_clients_too_small_are_skipped_and_too_few_is_one_clear_error(folder):
    (folder / "0-tiny.txt").write_bytes(b"hi")
    data = load_text(section(folder))
    assert data.num_clients == 3  # the tiny one is not a client
    with pytest.raises(DataError, match=r"data.num_clients: 4 requested but the corpus has 3 clients"):
        load_text(section(folder, num_clients=4))


def test_an_empty_or_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no text files in"):
        load_text(section(tmp_path))
    with pytest.raises(ConfigError, match=r"data\.path"):
        section(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"data\.path: required"):
        DataSection(dataset="text")


def test_the_standard_library_corpus_is_a_client_per_module_or_package():
    clients = dict(corpus_clients(DataSection(dataset="stdlib")))
    assert "json" in clients and all(p.suffix == ".py" for p in clients["json"])
    assert len(clients["json"]) > 1  # a package: all its modules
    assert clients["os"][0].name == "os.py"
    assert "test" not in clients
    data = build_federated_data(DataSection(dataset="stdlib", num_clients=5, context_length=16), seed=0)
    again = build_federated_data(DataSection(dataset="stdlib", num_clients=5, context_length=16), seed=7)
    assert data.num_clients == 5 and data.num_classes == 256
    np.testing.assert_array_equal(data.train.x, again.train.x)  # the natural split: no seed
