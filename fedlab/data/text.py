"""Text as next-token prediction: a folder of text files, or the Python standard library's source.

Every top-level entry of the corpus is one client (natural per-user splits): a file is a client,
and so is a subfolder (every file beneath it, in sorted path order). The standard library corpus
is the running Python's own ``Lib`` folder: a client per module (``name.py``) or package (a folder
with ``__init__.py``, its ``.py`` files), without the test suite; it ships with every Python, so
it needs no download, and it differs between Python versions.

A client's text is read up to ``text_max_bytes``, turned into tokens (bytes, or characters of a
fixed public alphabet) and cut once: the first ``1 - test_fraction`` is its training text, the rest
goes to the central test set. An example is ``context_length`` tokens (float32 token ids) labelled
with the token that follows them, one example every ``text_stride`` tokens.
"""

from __future__ import annotations

import itertools
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedlab.core.config import DataSection
from fedlab.core.errors import DataError
from fedlab.data.types import ArrayDataset, PartitionedData

TEXT_DATASETS = ("text", "stdlib")
"""The ``data.dataset`` values whose examples are token windows."""
BYTE_VOCAB = 256
_CHAR_ALPHABET = "\t\n" + "".join(chr(c) for c in range(32, 127))
CHAR_VOCAB = len(_CHAR_ALPHABET) + 1
"""Character level: tab, newline and printable ASCII, plus one token (0) for any other character."""
_CHAR_INDEX = {ch: i + 1 for i, ch in enumerate(_CHAR_ALPHABET)}
_STDLIB_SKIP = frozenset({"test", "idlelib", "site-packages", "__pycache__", "lib2to3", "turtledemo"})


def vocab_size(level: str) -> int:
    """The number of token ids at ``level`` (``"byte"`` or ``"char"``).

    >>> vocab_size("byte"), vocab_size("char")
    (256, 98)
    """
    if level == "byte":
        return BYTE_VOCAB
    if level == "char":
        return CHAR_VOCAB
    raise ValueError(f"unknown text level {level!r}; expected byte or char")


def encode(raw: bytes, level: str) -> NDArray[np.int64]:
    r"""Token ids of ``raw``: its bytes, or its UTF-8 characters in the fixed alphabet.

    >>> encode(b"Hi", "byte").tolist()
    [72, 105]
    >>> encode("a\n\u00e9".encode(), "char").tolist()
    [68, 2, 0]
    """
    if level == "byte":
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if level != "char":
        raise ValueError(f"unknown text level {level!r}; expected byte or char")
    text = raw.decode("utf-8", errors="replace")
    return np.fromiter((_CHAR_INDEX.get(ch, 0) for ch in text), dtype=np.int64, count=len(text))


def windows(
    tokens: NDArray[np.int64], *, context: int, stride: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Examples of ``context`` tokens each labelled with the next token, one every ``stride`` tokens.

    >>> x, y = windows(np.arange(6), context=2, stride=2)
    >>> x.tolist(), y.tolist()
    ([[0.0, 1.0], [2.0, 3.0]], [2, 4])
    """
    starts = np.arange(0, max(len(tokens) - context, 0), stride)
    x = np.stack([tokens[s : s + context] for s in starts]) if len(starts) else np.zeros((0, context))
    return x.astype(np.float32), tokens[starts + context].astype(np.int64)


def corpus_clients(section: DataSection) -> list[tuple[str, list[Path]]]:
    """Every client of the configured corpus, in name order: its name and its files.

    Raises:
        DataError: If the folder does not exist or holds no files.

    >>> clients = corpus_clients(DataSection(dataset="stdlib"))
    >>> "json" in dict(clients) and "test" not in dict(clients)
    True
    """
    if section.dataset == "stdlib":
        return _stdlib_clients(Path(sysconfig.get_paths()["stdlib"]))
    folder = Path(section.path)
    if not folder.is_dir():
        raise DataError(f"data.path: not a folder of text files: {folder}")
    clients = []
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        files = [entry] if entry.is_file() else _files_below(entry, "*")
        if files:
            clients.append((entry.name, files))
    if not clients:
        raise DataError(f"data.path: no text files in {folder}")
    return clients


def _stdlib_clients(lib: Path) -> list[tuple[str, list[Path]]]:
    clients = []
    for entry in sorted(lib.iterdir()):
        if entry.name in _STDLIB_SKIP or entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".py":
            clients.append((entry.stem, [entry]))
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            clients.append((entry.name, _files_below(entry, "*.py")))
    if not clients:
        raise DataError(f"data.dataset: no Python source in the standard library folder {lib}")
    return clients


def _files_below(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` beneath ``folder``, none hidden or in a ``__pycache__`` below it."""
    return sorted(
        p for p in folder.rglob(pattern)
        if p.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(folder).parts)
    )  # fmt: skip


def read_client(files: list[Path], max_bytes: int) -> bytes:
    r"""The first ``max_bytes`` bytes of ``files`` joined in order, a newline between files.

    Raises:
        DataError: If a file cannot be read.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     a, b = Path(tmp) / "a", Path(tmp) / "b"
    ...     _ = a.write_bytes(b"one"), b.write_bytes(b"two")
    ...     read_client([a, b], 6)
    b'one\ntw'
    """
    parts: list[bytes] = []
    size = 0
    for path in files:
        try:
            with path.open("rb") as handle:
                chunk = handle.read(max_bytes - size)
        except OSError as exc:
            raise DataError(f"data.path: cannot read {path}: {exc.strerror or exc}") from None
        parts.append(chunk)
        size += len(chunk) + 1
        if size >= max_bytes:
            break
    return b"\n".join(parts)[:max_bytes]


def load_text(section: DataSection) -> PartitionedData:
    """Build the configured text corpus as a federated next-token prediction task.

    The first ``section.num_clients`` clients (in name order) with at least
    ``min_partition_size`` training examples take part; the test set pools every chosen
    client's held-out tail.

    Raises:
        DataError: If the corpus is missing or too small for the configuration.

    >>> data = load_text(DataSection(dataset="stdlib", num_clients=3, context_length=8))
    >>> data.num_clients, data.feature_shape, data.num_classes
    (3, (8,), 256)
    """
    vocab, context = vocab_size(section.text_level), section.context_length
    chosen = list(itertools.islice(_eligible(section), section.num_clients))
    if len(chosen) < section.num_clients:
        raise DataError(
            f"data.num_clients: {section.num_clients} requested but the corpus has {len(chosen)} clients "
            f"with >= {section.min_partition_size} examples of context_length {context} "
            f"(raise data.text_max_bytes or lower data.text_stride)"
        )
    held_out = _concat([t for _, t in chosen], vocab)
    if len(held_out) == 0:
        raise DataError("data.test_fraction: the held-out text is too short for one test example")
    sizes = [len(train) for train, _ in chosen]
    bounds = np.cumsum([0, *sizes])
    partitions = tuple(np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(len(sizes)))
    train_pool = _concat([t for t, _ in chosen], vocab)
    return PartitionedData(train=train_pool, partitions=partitions, test=held_out)


def public_text(section: DataSection) -> tuple[ArrayDataset, int]:
    """The corpus' public split and its number of clients: every client the federation leaves out.

    The clients after the federation's (:func:`load_text`), their training and held-out text
    alike, pooled; the federation's clients and test set are never part of it.

    Raises:
        DataError: If the federation takes every client of the corpus.

    >>> public, clients = public_text(DataSection(dataset="stdlib", num_clients=3, text_max_bytes=400))
    >>> clients > 10 and public.num_classes == 256
    True
    """
    vocab = vocab_size(section.text_level)
    rest = list(itertools.islice(_eligible(section), section.num_clients, None))
    if not rest:
        raise DataError(
            f"data.num_clients: the federation's {section.num_clients} clients leave no public "
            "client in the corpus to pre-train on"
        )
    return _concat([part for pair in rest for part in pair], vocab), len(rest)


def _eligible(section: DataSection) -> Iterator[tuple[ArrayDataset, ArrayDataset]]:
    """Each client with enough training examples, in name order: its training and held-out windows."""
    vocab = vocab_size(section.text_level)
    context, stride = section.context_length, section.text_stride
    for _, files in corpus_clients(section):
        tokens = encode(read_client(files, section.text_max_bytes), section.text_level)
        cut = round(len(tokens) * (1.0 - section.test_fraction))
        train = ArrayDataset(*windows(tokens[:cut], context=context, stride=stride), vocab)
        if len(train) >= section.min_partition_size:
            yield train, ArrayDataset(*windows(tokens[cut:], context=context, stride=stride), vocab)


def _concat(parts: list[ArrayDataset], vocab: int) -> ArrayDataset:
    """One data set of ``parts`` (at least one), in order."""
    return ArrayDataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), vocab)
