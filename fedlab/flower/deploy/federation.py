"""The federation file: its ``[deployment]`` table plus a fedlab run config."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlab.core.config import RunConfig, config_from_dict
from fedlab.core.errors import ConfigError
from fedlab.flower.deploy.certificates import check_public_key

DEFAULT_PORT = 9092
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class DeploymentSection:
    """The ``[deployment]`` table of a federation file (paths resolved).

    Attributes:
        host: Address the SuperLink binds (loopback unless allowed otherwise).
        port: Its one HTTPS port (Fleet, Control and Runtime APIs in flwr 1.41).
        ca_cert: CA certificate.
        server_cert: Server certificate.
        server_key: Server private key.
        device_keys: Public keys of the devices allowed to join.
        state_dir: SuperLink database, private FLWR_HOME, staged app and runs.
        min_clients: Devices the server waits for (up to ``server.timeout``) before round 1.
        allow_public_control_api: Bind beyond loopback even though the Control API is exposed.
    """

    host: str
    port: int
    ca_cert: Path
    server_cert: Path
    server_key: Path
    device_keys: tuple[Path, ...]
    state_dir: Path
    min_clients: int
    allow_public_control_api: bool = False


@dataclass(frozen=True)
class Federation:
    """A parsed federation file: the deployment and the fedlab run config."""

    deployment: DeploymentSection
    config: RunConfig
    raw_config: dict[str, Any] = field(repr=False)


_DEPLOYMENT_KEYS = (
    "host",
    "port",
    "ca_cert",
    "server_cert",
    "server_key",
    "device_keys",
    "state_dir",
    "min_clients",
    "allow_public_control_api",
)


def _key_error(key: str, problem: str) -> ConfigError:
    return ConfigError(f"deployment.{key}: {problem}")


def _path(table: Mapping[str, Any], key: str, base: Path, default: str | None = None) -> Path:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise _key_error(key, f"must be a non-empty path string; got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def parse_deployment(table: Any, *, base: Path, state_override: Path | None = None) -> DeploymentSection:
    """Validate a ``[deployment]`` table; relative paths are relative to ``base``.

    >>> parse_deployment({"port": 0}, base=Path("/x"))
    Traceback (most recent call last):
    ...
    fedlab.core.errors.ConfigError: deployment.port: must be an integer in 1..65535; got 0
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"deployment: must be a table; got {type(table).__name__}")
    for key in table:
        if key not in _DEPLOYMENT_KEYS:
            raise _key_error(key, f"unknown key (known: {', '.join(sorted(_DEPLOYMENT_KEYS))})")
    host = table.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise _key_error("host", f"must be a non-empty string; got {host!r}")
    port = table.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _key_error("port", f"must be an integer in 1..65535; got {port!r}")
    allow = table.get("allow_public_control_api", False)
    if not isinstance(allow, bool):
        raise _key_error("allow_public_control_api", f"must be true or false; got {allow!r}")
    if host not in LOOPBACK and not allow:
        raise _key_error(
            "host",
            f"{host!r} would expose the unauthenticated Control API (flwr 1.41 serves it on the Fleet "
            "port); use 127.0.0.1, or set allow_public_control_api = true behind a proxy "
            "forwarding only /v1/fleet/",
        )
    keys = table.get("device_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise _key_error("device_keys", f"must be a list of public key paths; got {keys!r}")
    device_keys = tuple(_path({"k": k}, "k", base) for k in keys)
    for key_path in device_keys:
        check_public_key(key_path)
    min_clients = table.get("min_clients", len(device_keys))
    if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
        raise _key_error("min_clients", f"must be an integer >= 1; got {min_clients!r}")
    return DeploymentSection(
        host=host,
        port=port,
        ca_cert=_path(table, "ca_cert", base),
        server_cert=_path(table, "server_cert", base),
        server_key=_path(table, "server_key", base),
        device_keys=device_keys,
        state_dir=state_override.resolve() if state_override else _path(table, "state_dir", base, "state"),
        min_clients=min_clients,
        allow_public_control_api=allow,
    )


def load_federation(
    path: Path, *, state_dir: Path | None = None, overrides: Sequence[str] = ()
) -> Federation:
    """Read a federation file: ``[deployment]`` here, everything else is a fedlab run config.

    ``data.num_clients`` of the run is set to ``deployment.min_clients``: the ServerApp
    waits for that many nodes (at most ``server.timeout`` seconds) before round 1.

    Raises:
        ConfigError: On a missing file, bad TOML, or any invalid key (one line).
    """
    from fedlab.core.config import apply_overrides

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if "deployment" not in raw:
        raise ConfigError(f"{path}: missing the [deployment] table (address, certificates, device keys)")
    deployment = parse_deployment(raw.pop("deployment"), base=path.resolve().parent, state_override=state_dir)
    fedlab_raw = apply_overrides(raw, overrides)
    data = dict(fedlab_raw.get("data", {}))
    data["num_clients"] = deployment.min_clients
    fedlab_raw["data"] = data
    config = config_from_dict(fedlab_raw)
    for key, p in (
        ("ca_cert", deployment.ca_cert),
        ("server_cert", deployment.server_cert),
        ("server_key", deployment.server_key),
    ):
        if not p.is_file():
            raise _key_error(key, f"file not found: {p}")
    return Federation(deployment=deployment, config=config, raw_config=fedlab_raw)
