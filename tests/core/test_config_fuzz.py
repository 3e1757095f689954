"""Fuzzing the config loader: whatever a TOML file or ``--set`` says, the answer is a config or a ConfigError.

The shipped configs (``simulations/*.toml``) are mutated (keys dropped, added or misspelled, values of
the wrong type, out of range, NaN, infinite, huge, empty, unicode, tables where scalars belong,
unknown sections) as dicts (``config_from_dict``), as TOML text written to a file (``read_toml``,
``load_config``, bytes flipped and cut as well) and as ``section.key=value`` overrides
(``apply_overrides``). Only :class:`~fedlab.core.errors.ConfigError` may escape, with a one-line
message, and whatever is accepted is accepted again from its own ``to_dict()``.

Inputs that once crashed the loader (integers beyond a float, names the OS refuses as paths, keys
with line breaks) are in the strategies and have their own tests at the end.
"""

from __future__ import annotations

import dataclasses
import datetime
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from fedlab.core import choices
from fedlab.core.config import RunConfig, apply_overrides, config_from_dict, load_config, read_toml
from fedlab.core.errors import ConfigError
from tests.secagg.test_secagg_wire_fuzz import FUZZ, REPLACEMENT_TOKENS, decoded_or_refused, mutate_bytes

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "simulations").glob("*.toml"))
SHIPPED_RAW = [tomllib.loads(path.read_text(encoding="utf-8")) for path in SHIPPED]
SHIPPED_TEXT = [path.read_bytes() for path in SHIPPED]

SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}
KEYS = {
    section.name: [f.name for f in dataclasses.fields(getattr(RunConfig(), section.name))]
    for section in dataclasses.fields(RunConfig)
}
"""Every section and key a config may name (read from the config's own dataclasses)."""

MAX_INT = 2**4000
"""Beyond a float and beyond 64 bits (tomllib reads integers of up to 4,300 digits)."""
MAX_TEXT = 200
"""Random text; path-length edge cases (5,000 characters) are among ``WORDS``."""

TOKENS = REPLACEMENT_TOKENS


def names(max_size: int) -> st.SearchStrategy[str]:
    """Section and key names, line breaks included."""
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


WORDS = sorted(
    {
        *choices.DATASETS,
        *choices.PARTITIONERS,
        *choices.MODELS,
        *choices.TRAINERS,
        *choices.OPTIMIZERS,
        *choices.SECAGG_WEIGHTINGS,
        *choices.DP_MODES,
        *choices.SERVER_ACCOUNTANTS,
        *choices.SAMPLING,
        *choices.BACKENDS,
        *choices.CLIENT_RANDOMNESS,
        *choices.DEVICE_MODELS,
        *(kind.value for kind in choices.AggregationKind),
        "auto",
        "cpu",
        "cuda",
        "cuda:1",
        "cuda:",
        "",
        " ",
        "\x00",
        "é",
        "\U0001f600",
        "/",
        "/nonexistent/file.csv",
        "x" * 5000,
        str(REPO / "simulations" / "digits.toml"),
    }
)
"""Strings the config looks for, so that mutations reach the choices and path checks."""

EDGE_NUMBERS = [0, 1, -1, 2, 7, 8, 62, 63, 10**6, 2**31, 2**63, -(2**63), 2**64, 10**300, MAX_INT]
EDGE_NUMBERS += [0.0, -0.0, 0.5, 0.7, 1.0, 1e-300, 5e-324, 1e308, float("nan"), float("inf"), float("-inf")]

config_scalars = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    st.integers(-MAX_INT, MAX_INT),
    st.floats(),
    st.booleans(),
    st.sampled_from(WORDS),
    st.text(max_size=MAX_TEXT),
    st.datetimes() | st.dates() | st.times(),  # TOML has dates and times too
)
config_values = st.recursive(
    config_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names(8), inner, max_size=3),
    max_leaves=6,
)
"""What a TOML file may give for a key: scalars, arrays and (inline) tables."""

sections = st.sampled_from(sorted(SECTIONS)) | st.sampled_from(["training", "DP", "", "run.x"])


@st.composite
def mutated_configs(draw: Callable[..., Any]) -> dict[str, Any]:
    """A shipped config with one to four edits: a key set, dropped or added, a section replaced."""
    raw = {name: dict(table) for name, table in draw(st.sampled_from(SHIPPED_RAW)).items()}
    edits = ["set", "set", "set", "drop-key", "drop-section", "section-value"]
    for edit in draw(st.lists(st.sampled_from(edits), min_size=1, max_size=4)):
        section = draw(sections)
        table = raw.setdefault(section, {}) if edit == "set" else raw.get(section)
        if edit == "set" and isinstance(table, dict):
            key = draw(st.sampled_from(KEYS.get(section) or ["x"]) | names(8))
            table[key] = draw(config_values)
        elif edit == "drop-key" and isinstance(table, dict) and table:
            del table[draw(st.sampled_from(sorted(table)))]
        elif edit == "drop-section":
            raw.pop(section, None)
        elif edit == "section-value":
            raw[section] = draw(config_values)
    return raw


# ---- the contract -------------------------------------------------------------------------------------


def assert_well_formed(config: RunConfig | None) -> None:
    if config is not None:
        assert isinstance(config, RunConfig)
        assert config_from_dict(config.to_dict()) == config  # accepted once, accepted again


@pytest.fixture(scope="module")
def toml_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-fuzz") / "fuzz.toml"


def load_text(path: Path, text: bytes, overrides: tuple[str, ...] = ()) -> RunConfig | None:
    path.write_bytes(text)
    return decoded_or_refused(lambda: load_config(path, overrides), ConfigError)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_the_shipped_configs_load(path: Path) -> None:
    assert_well_formed(load_config(path))


@FUZZ
@given(mutated_configs())
def test_a_mutated_config_is_valid_or_a_config_error(raw: dict[str, Any]) -> None:
    assert_well_formed(decoded_or_refused(lambda: config_from_dict(raw), ConfigError))


@FUZZ
@given(st.dictionaries(sections, config_values | st.dictionaries(names(12), config_values)))
def test_any_nested_dict_is_valid_or_a_config_error(raw: dict[str, Any]) -> None:
    assert_well_formed(decoded_or_refused(lambda: config_from_dict(raw), ConfigError))


@FUZZ
@given(mutated_configs())
def test_a_mutated_toml_file_loads_or_is_a_config_error(toml_file: Path, raw: dict[str, Any]) -> None:
    assert_well_formed(load_text(toml_file, tomli_w.dumps(raw).encode()))


@FUZZ
@given(st.sampled_from(SHIPPED_TEXT), st.data())
def test_a_damaged_toml_file_loads_or_is_a_config_error(
    toml_file: Path, text: bytes, data: st.DataObject
) -> None:
    assert_well_formed(load_text(toml_file, mutate_bytes(data.draw, text, TOKENS)))


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_random_bytes_are_not_a_config(toml_file: Path, text: bytes) -> None:
    toml_file.write_bytes(text)
    raw = decoded_or_refused(lambda: read_toml(toml_file), ConfigError)
    assert raw is None or isinstance(raw, dict)
    assert_well_formed(load_text(toml_file, text))


def test_a_missing_file_and_a_directory_are_config_errors(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path):
        with pytest.raises(ConfigError, match="not found"):
            read_toml(path)


# ---- overrides -------------------------------------------------------------------------------------


def toml_text(value: Any) -> str:
    """``value`` as a TOML literal (the right-hand side of ``key = value``), tables inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_text(str(k))} = {toml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


override_values = st.one_of(
    config_values.map(toml_text),
    st.text(max_size=20),
    st.sampled_from([t.decode("latin1") for t in TOKENS]),
    st.sampled_from(["9" * 5000, "0x" + "f" * 200, '"unterminated', "1\n[x]", "1\nv = 2", "[1,", "{a = "]),
)
overrides = st.one_of(
    st.builds(
        lambda section, key, value: f"{section}.{key}={value}",
        sections,
        st.sampled_from(sorted({k for keys in KEYS.values() for k in keys})) | names(8),
        override_values,
    ),
    names(40),
)


@FUZZ
@given(st.sampled_from(SHIPPED_RAW), st.lists(overrides, max_size=3))
def test_overrides_give_a_config_or_a_config_error(raw: dict[str, Any], items: list[str]) -> None:
    merged = decoded_or_refused(lambda: apply_overrides(raw, items), ConfigError)
    if merged is not None:
        assert_well_formed(decoded_or_refused(lambda: config_from_dict(merged), ConfigError))


@FUZZ
@given(st.sampled_from(SHIPPED_TEXT), st.lists(overrides, min_size=1, max_size=3))
def test_load_config_with_overrides_gives_a_config_or_a_config_error(
    toml_file: Path, text: bytes, items: list[str]
) -> None:
    assert_well_formed(load_text(toml_file, text, tuple(items)))


# ---- inputs that once crashed the loader ---------------------------------------------------------------


def test_a_key_with_a_line_break_gets_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": {"x\ny": 1}})
    assert "\n" not in str(caught.value)


def test_a_huge_integer_for_a_float_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.lr"):
        config_from_dict({"train": {"lr": 10**400}})


def test_a_huge_integer_in_a_toml_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_text("[run]\nrounds = 1" + "0" * 400 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        load_config(path)


def test_a_too_long_data_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"data\.path"):
        config_from_dict({"data": {"dataset": "files", "path": "x" * 5000}})


def test_a_too_long_device_trace_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"simulation\.device_trace"):
        config_from_dict({"simulation": {"devices": "trace", "device_trace": "x" * 5000}})


def test_a_date_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match=r"run\.seed"):
        config_from_dict({"run": {"seed": datetime.date(2024, 1, 1)}})
