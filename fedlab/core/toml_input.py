"""Reading a config's raw tables: a TOML file, and ``section.key=value`` overrides on top.

Nothing here validates keys or values: :mod:`fedlab.core.config` does, once, at the edge.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlab.core.errors import ConfigError


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    except (ValueError, RecursionError):  # an integer of over 4300 digits, arrays nested too deep
        raise ConfigError(f"--set {dotted.strip()!r}: a number too long or nesting too deep") from None
    return parts[0], parts[1], value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``section.key=value`` overrides applied.

    Values are read as TOML literals (``0.5``, ``true``, ``"x"``); anything that is
    not a TOML literal is taken as a string.

    >>> apply_overrides({"run": {"rounds": 3}}, ["run.rounds=5", "model.kind=mlp"])
    {'run': {'rounds': 5}, 'model': {'kind': 'mlp'}}
    """
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for item in overrides:
        section, key, value = _parse_override(item)
        table = merged.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table")
        table[key] = value
    return merged


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning a missing, unreadable or malformed file into a ConfigError."""
    try:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (ValueError, RecursionError):  # an integer of over 4300 digits, arrays nested too deep
        raise ConfigError(f"{path}: invalid TOML: a number too long or nesting too deep") from None
