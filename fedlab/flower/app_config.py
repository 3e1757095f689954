"""Reading a fedlab config from a Flower run config (``flwr run .``, deployments).

``[tool.flwr.app.config]`` in pyproject.toml (or ``flwr run --run-config``) carries
``config`` (a fedlab TOML file, relative to the app directory), ``overrides``
(``section.key=value`` items separated by ``;``), ``out-dir`` and ``resume`` (go on with the run
in ``out-dir`` after its last committed round).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedlab.core.config import RunConfig, load_config
from fedlab.core.errors import ConfigError


def _string(run_config: Mapping[str, Any], key: str, default: str = "") -> str:
    value = run_config.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"run config {key!r} must be a string; got {value!r}")
    return value


def config_from_run_config(run_config: Mapping[str, Any], *, app_root: Path) -> RunConfig:
    """Load the fedlab config a Flower run config points at.

    >>> config_from_run_config({"config": "missing.toml"}, app_root=Path("/nonexistent"))
    Traceback (most recent call last):
    ...
    fedlab.core.errors.ConfigError: config file not found: /nonexistent/missing.toml
    """
    path = Path(_string(run_config, "config"))
    if not path.is_absolute():
        path = app_root / path
    overrides = [item.strip() for item in _string(run_config, "overrides").split(";") if item.strip()]
    return load_config(path, overrides)


def run_dir_from_run_config(run_config: Mapping[str, Any], config: RunConfig) -> Path:
    """The run directory: ``out-dir`` if given, else a fresh one under ``runs/``."""
    out = _string(run_config, "out-dir")
    if out:
        return Path(out)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    return Path("runs") / f"{config.run.name}-{stamp}"


def resume_from_run_config(run_config: Mapping[str, Any]) -> bool:
    """Whether the run config asks to resume the run in ``out-dir`` (``resume = true``).

    >>> resume_from_run_config({"resume": True, "out-dir": "runs/a"}), resume_from_run_config({})
    (True, False)
    """
    value = run_config.get("resume", False)
    if not isinstance(value, bool):
        raise ConfigError(f"run config 'resume' must be true or false; got {value!r}")
    if value and not _string(run_config, "out-dir"):
        raise ConfigError("run config 'resume' needs 'out-dir': the run directory to go on with")
    return value
