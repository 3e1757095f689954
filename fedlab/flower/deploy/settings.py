"""A device settings file (``clients/device.toml``): the ``[device]`` table ``fedlab client`` reads."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedlab.core.errors import ConfigError


def read_device_settings(path: Path) -> dict[str, Any]:
    """Read a device settings file (``clients/device.toml``): its ``[device]`` table.

    Raises:
        ConfigError: On a missing file, bad TOML, unknown keys, or ``delta`` / ``allow_non_private``
            of the wrong type.
    """
    known = {
        "server",
        "root_cert",
        "key",
        "data",
        "state_dir",
        "device_id",
        "max_epsilon",
        "delta",
        "allow_non_private",
        "max_retries",
        "max_wait_time",
        "feature_shape",
        "num_classes",
        "label_column",
        "heartbeat_interval",
    }
    if not path.is_file():
        raise ConfigError(f"--settings: file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table = raw.get("device", {})
    if not isinstance(table, dict):
        raise ConfigError("device: must be a table")
    for key in table:
        if key not in known:
            raise ConfigError(f"device.{key}: unknown key (known: {', '.join(sorted(known))})")
    delta = table.get("delta", 1e-5)
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise ConfigError(f"device.delta: must be a number in (0, 0.1]; got {delta!r}")
    allow = table.get("allow_non_private", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"device.allow_non_private: must be true or false; got {allow!r}")
    base = path.resolve().parent
    for key in ("root_cert", "key", "data", "state_dir"):
        if key in table:
            value = Path(str(table[key])).expanduser()
            table[key] = value if value.is_absolute() else base / value
    return dict(table)
