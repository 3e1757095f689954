"""Launching a real deployment: certificates, the SuperLink, SuperNodes and ``flwr run``.

This is the only module that knows the command-line flags of ``flower-superlink``,
``flower-supernode`` and ``flwr`` (they change between Flower releases; this file
targets flwr 1.41, whose SuperLink serves its Fleet, Control and Runtime APIs over
HTTP(S) on one ``--host/--port``).

Threat model of a fedlab deployment (what each piece stops):

- **TLS** (private CA, server certificate): stops eavesdropping and tampering on the
  device-server link and devices talking to an impostor server. It does not
  authenticate devices (no mTLS in Flower 1.41).
- **SuperNode authentication** (registered EC public keys, signed requests): stops
  unregistered devices from joining and a device from taking another's node id.
  It does not stop a registered device from sending poisoned updates.
- **Control API on loopback**: in flwr 1.41 the Control API (submit runs, register
  keys) has no authentication and shares the Fleet port, so fedlab binds to loopback
  unless the federation file sets ``allow_public_control_api = true`` (then put a
  reverse proxy that forwards only ``/v1/fleet/`` in front of it).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tomli_w
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedlab.core.config import RunConfig, config_from_dict
from fedlab.core.errors import ConfigError, FedlabError

CONNECTION = "fedlab"  # the SuperLink connection name in the private FLWR_HOME
RUN_CONFIG_FILE = "fedlab-run.toml"
APP_FILES = ("pyproject.toml", "server", "clients")
DEFAULT_PORT = 9092
HEARTBEAT_INTERVAL = 10.0
"""Seconds between a device's heartbeats (flwr 1.41 accepts 10..1800; its SuperNode has 30 fixed).

The SuperLink holds a node online for 2 intervals after its last heartbeat and refuses to
activate the same key meanwhile, so a crashed device can rejoin ``2 * HEARTBEAT_INTERVAL``
seconds after its last heartbeat at the latest (a minute with Flower's 30 s).
"""
HEARTBEAT_BOUNDS = (10.0, 1800.0)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LineSink = Callable[[str], None]


class DeploymentError(FedlabError):
    """A deployment cannot start or was refused (one line, non-zero exit)."""


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertificateFiles:
    """What ``fedlab certs init`` wrote and where each file goes.

    Attributes:
        ca_cert: The CA certificate: on the server and on every device (``--root-cert``).
        ca_key: The CA private key: keep offline; only needed to issue new certificates.
        server_cert: The server certificate (``[deployment] server_cert``).
        server_key: The server private key (``[deployment] server_key``), server only.
        device_keys: Per device, (private key, public key): the private key goes on the
            device (``--key``), the public key into ``[deployment] device_keys``.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    device_keys: tuple[tuple[Path, Path], ...]


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def init_certificates(
    out_dir: Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1"), devices: int = 3, days: int = 365
) -> CertificateFiles:
    """Create a private CA, a server certificate for ``hosts`` and ``devices`` device key pairs.

    Keys are EC P-384. Device keys are in OpenSSH format, which Flower's SuperNode
    authentication reads (``--auth-supernode-private-key``, ``flwr supernode register``).
    For development and tests: an organisation should use its own CA (see the README).

    Security: the server certificate lets devices refuse an impostor server; device
    keys let the server refuse unregistered devices. Does not protect the CA key or
    device private keys once copied off this machine (files are written mode 0600).

    Raises:
        ConfigError: If ``out_dir`` already holds certificates (never overwritten), no
            host is given or ``devices`` is negative.
    """
    if not hosts:
        raise ConfigError("--host: give at least one host name or IP address for the server certificate")
    if devices < 0:
        raise ConfigError(f"--devices must be >= 0; got {devices}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CertificateFiles(
        ca_cert=out_dir / "ca.pem",
        ca_key=out_dir / "ca.key",
        server_cert=out_dir / "server.pem",
        server_key=out_dir / "server.key",
        device_keys=tuple(
            (out_dir / "devices" / f"device-{i}.key", out_dir / "devices" / f"device-{i}.pub")
            for i in range(1, devices + 1)
        ),
    )
    existing = [p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key) if p.exists()]
    existing += [p for pair in files.device_keys for p in pair if p.exists()]
    if existing:
        raise ConfigError(f"{existing[0]}: already exists; certs init never overwrites keys (use a new DIR)")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedlab private CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem, pkcs8, none = (
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    _write_private(files.ca_key, ca_key.private_bytes(pem, pkcs8, none))
    files.server_cert.write_bytes(server_cert.public_bytes(pem))
    _write_private(files.server_key, server_key.private_bytes(pem, pkcs8, none))
    if files.device_keys:
        (out_dir / "devices").mkdir(exist_ok=True)
    for private_path, public_path in files.device_keys:
        key = ec.generate_private_key(ec.SECP384R1())
        _write_private(private_path, key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, none))
        public_path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            + b"\n"
        )
    return files


def check_root_cert(path: Path) -> None:
    """Refuse a missing or unreadable CA certificate with one line."""
    if not path.is_file():
        raise DeploymentError(f"--root-cert: certificate file not found: {path}")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise DeploymentError(f"--root-cert: not a PEM certificate: {path}") from None


def check_device_key(path: Path) -> None:
    """Refuse a missing key or one Flower's node authentication cannot use (EC, OpenSSH)."""
    if not path.is_file():
        raise DeploymentError(f"--key: device private key not found: {path}")
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, UnsupportedAlgorithm):
        raise DeploymentError(
            f"--key: not an OpenSSH EC private key (as written by `fedlab certs init`): {path}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DeploymentError(f"--key: node authentication needs an EC (NIST curve) key: {path}")


def _check_public_key(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"deployment.device_keys: public key not found: {path}")
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"deployment.device_keys: not an OpenSSH public key: {path}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"deployment.device_keys: not an EC public key: {path}")


# --------------------------------------------------------------------------- federation file


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
        _check_public_key(key_path)
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


# --------------------------------------------------------------------------- processes


def _flower_bin(name: str) -> str:
    """The Flower executable next to this Python (the venv), else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name} not found: install flwr 1.41 (pip install 'flwr==1.41.0')")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower processes: private FLWR_HOME, no telemetry, no runtime installs."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _children(pid: int) -> list[int]:
    """Descendants of ``pid`` (Linux /proc; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process(proc: subprocess.Popen[str], *, grace: float = 10.0) -> None:
    """Stop ``proc`` and its descendants by PID: SIGTERM, then SIGKILL after ``grace`` s."""
    tree = [proc.pid, *_children(proc.pid)]
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
    if proc.poll() is None:
        proc.wait(timeout=grace)


def _start(command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def _pump(stream: IO[str], sinks: Sequence[LineSink]) -> threading.Thread:
    def run() -> None:
        for line in stream:
            for sink in sinks:
                sink(line.rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _file_sink(path: Path) -> LineSink:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", buffering=1)

    def write(line: str) -> None:
        handle.write(line + "\n")

    return write


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[str], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeploymentError(f"the SuperLink exited with code {proc.returncode} (see its log)")
        with socket.socket(socket.AF_INET6 if ":" in connect_host else socket.AF_INET) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((connect_host, port)) == 0:
                return
        time.sleep(0.2)
    raise DeploymentError(f"the SuperLink did not open {host}:{port} within {timeout:g} s")


def free_port() -> int:
    """A free TCP port on loopback (for a SuperNode's local Runtime API)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def superlink_command(d: DeploymentSection, database: Path) -> list[str]:
    """The flower-superlink command line: TLS, node authentication, SQLite state."""
    return [
        _flower_bin("flower-superlink"),
        "--ssl-ca-certfile",
        str(d.ca_cert),
        "--ssl-certfile",
        str(d.server_cert),
        "--ssl-keyfile",
        str(d.server_key),
        "--enable-supernode-auth",
        "--database",
        str(database),
        "--host",
        d.host,
        "--port",
        str(d.port),
        "--disable-runtime-dependency-installation",
    ]


def write_flwr_config(flwr_home: Path, d: DeploymentSection) -> None:
    """Point the private FLWR_HOME's default SuperLink connection at our SuperLink (over TLS)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    address_host = "127.0.0.1" if d.host in ("0.0.0.0", "::") else d.host
    connection = {"address": f"{address_host}:{d.port}", "root-certificates": str(d.ca_cert)}
    (flwr_home / "config.toml").write_text(
        tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}})
    )


def register_device_keys(d: DeploymentSection, env: Mapping[str, str], log: LineSink) -> None:
    """Register every configured device public key with the SuperLink (Control API).

    Raises:
        DeploymentError: If the SuperLink refuses a key (other than "already registered").
    """
    for key in d.device_keys:
        result = subprocess.run(
            [_flower_bin("flwr"), "supernode", "register", str(key), CONNECTION, "--format", "json"],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            reply = json.loads(result.stdout[result.stdout.index("{") :])
        except ValueError:
            raise DeploymentError(
                f"cannot register {key}: {_last_line(result.stdout + result.stderr)}"
            ) from None
        if reply.get("success"):
            log(f"registered device key {key.name} (node {reply.get('node-id')})")
        elif "already in use" in str(reply.get("error-message", "")):
            log(f"device key {key.name} already registered")
        else:
            raise DeploymentError(f"cannot register {key}: {_last_line(str(reply.get('error-message')))}")


def stage_app(source_root: Path, app_dir: Path, raw_config: Mapping[str, Any]) -> None:
    """Copy the Flower app (pyproject, server/, clients/) and write the run's fedlab config into it.

    The config travels inside the app bundle, so every SuperNode reads the same one.
    """
    if app_dir.exists():
        shutil.rmtree(app_dir)
    app_dir.mkdir(parents=True)
    for name in APP_FILES:
        src = source_root / name
        if not src.exists():
            raise DeploymentError(f"app file missing: {src}")
        if src.is_dir():
            shutil.copytree(src, app_dir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, app_dir / name)
    (app_dir / RUN_CONFIG_FILE).write_text(tomli_w.dumps(_without_none(raw_config)))


def _without_none(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, Mapping) else v for k, v in raw.items() if v is not None}


def run_command(app_dir: Path, run_dir: Path) -> list[str]:
    """The ``flwr run`` command submitting the staged app with its config and run directory."""
    run_config = f"config='{RUN_CONFIG_FILE}' overrides='' out-dir='{run_dir}'"
    return [_flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", run_config]


@dataclass(frozen=True)
class ServerResult:
    """How a ``fedlab server`` run ended."""

    run_dir: Path
    summary: dict[str, Any] | None
    exit_code: int


def run_server(
    federation: Federation,
    *,
    app_root: Path,
    run_dir: Path,
    log: LineSink,
    startup_timeout: float = 60.0,
    verbose: bool = False,
) -> ServerResult:
    """Start the SuperLink, register devices, submit the run, stream it, stop everything.

    The SuperLink (and anything it spawned) is stopped by PID when the run ends, fails
    or on Ctrl-C.
    """
    d = federation.deployment
    state = d.state_dir
    state.mkdir(parents=True, exist_ok=True)
    flwr_home = state / "flwr-home"
    write_flwr_config(flwr_home, d)
    env = flower_env(flwr_home)
    link_log = _file_sink(state / "superlink.log")
    superlink = _start(superlink_command(d, state / "superlink.sqlite"), env)
    if superlink.stdout is not None:
        _pump(superlink.stdout, [link_log])
    stream = log if verbose else _important(log)
    runner: subprocess.Popen[str] | None = None
    try:
        _wait_for_port(d.host, d.port, superlink, timeout=startup_timeout)
        log(f"SuperLink (pid {superlink.pid}) listening on https://{d.host}:{d.port}; state in {state}")
        register_device_keys(d, env, log)
        app_dir = state / "app"
        stage_app(app_root, app_dir, federation.raw_config)
        run_dir = run_dir.resolve()
        runner = _start(run_command(app_dir, run_dir), env, cwd=state)
        run_log = _file_sink(state / "run.log")
        pump = _pump(runner.stdout, [run_log, stream]) if runner.stdout else None
        done = threading.Event()
        progress = threading.Thread(
            target=_follow_metrics,
            args=(run_dir / "metrics.jsonl", federation.config.run.rounds, log, done),
            daemon=True,
        )
        progress.start()
        runner.wait()
        done.set()
        progress.join(timeout=5)
        if pump is not None:
            pump.join(timeout=5)
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        code = 0 if summary is not None and runner.returncode == 0 else 1
        return ServerResult(run_dir=run_dir, summary=summary, exit_code=code)
    finally:
        if runner is not None:
            stop_process(runner, grace=5)
        stop_process(superlink)


def _important(log: LineSink) -> LineSink:
    """Pass on warnings, errors and run status from ``flwr run --stream``; drop message chatter."""
    keep = (
        "WARNING",
        "ERROR",
        "dropped a reply",
        "refuses",
        "Successfully started run",
        "Traceback",
        "Error",
    )

    def write(line: str) -> None:
        if any(word in line for word in keep) and "fraction_evaluate" not in line:
            log(line)

    return write


def _follow_metrics(path: Path, rounds: int, log: LineSink, done: threading.Event) -> None:
    """Print one line per finished round as the ServerApp appends to ``metrics.jsonl``."""
    seen = 0
    while True:
        finished = done.is_set()
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines[seen:]:
            try:
                row = json.loads(line)
            except ValueError:
                break
            seen += 1
            eps = row.get("epsilon_max")
            eps_text = f"{eps:.3f}" if isinstance(eps, (int, float)) else "-"
            # Under user-level DP the run directory withholds the counts: nothing to print then.
            counts = (
                ""
                if row.get("clients") is None
                else (f", {row.get('clients')} clients, {row.get('failures')} failures")
            )
            log(
                f"round {row.get('round')}/{rounds}: accuracy {row.get('accuracy', float('nan')):.4f}, "
                f"epsilon max {eps_text}{counts}"
            )
        if finished:
            return
        done.wait(1.0)


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ClientLaunch:
    """Everything ``fedlab client`` needs, validated before launching.

    Attributes:
        server: SuperLink address ``HOST:PORT``.
        root_cert: CA certificate that signed the server's certificate.
        key: The device's node-authentication private key (OpenSSH EC).
        data: The device's local data.
        state_dir: Its budget, Flower home and logs.
        device_id: Its stable identity (default: the key file's name).
        max_epsilon: Its maximum epsilon (``inf``: no limit).
        delta: The delta its epsilon is computed at, in (0, 0.1]; runs with a larger ``dp.delta``
            are refused.
        allow_non_private: Also release rounds without DP (``dp.mode = "none"``); with a finite
            ``max_epsilon`` they are over budget anyway (infinite epsilon).
        insecure: Plaintext (development only; no node authentication).
        max_retries: Reconnection attempts (``None``: unlimited).
        max_wait_time: Seconds to keep reconnecting (``None``: unlimited).
        feature_shape: Reshape examples (``"1,8,8"``), or empty.
        num_classes: Classes of the task (0: as found in the data).
        label_column: Label column of a table.
        heartbeat_interval: Seconds between heartbeats (see :data:`HEARTBEAT_INTERVAL`).
    """

    server: str
    root_cert: Path | None
    key: Path | None
    data: Path
    state_dir: Path
    device_id: str
    max_epsilon: float = math.inf
    delta: float = 1e-5
    allow_non_private: bool = False
    insecure: bool = False
    max_retries: int | None = None
    max_wait_time: float | None = 300.0
    feature_shape: str = ""
    num_classes: int = 0
    label_column: str = "label"
    heartbeat_interval: float = HEARTBEAT_INTERVAL


_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")


def check_client_launch(launch: ClientLaunch) -> None:
    """Detect what can be detected before launching (one line each).

    Raises:
        DeploymentError: Bad address, missing or unusable certificate or key, missing data, a
            maximum epsilon, delta or heartbeat interval out of range.
    """
    if not _ADDRESS.match(launch.server):
        raise DeploymentError(f"--server: expected HOST:PORT; got {launch.server!r}")
    if not launch.insecure:
        if launch.root_cert is None:
            raise DeploymentError("--root-cert: required (the CA certificate that signed the server's)")
        check_root_cert(launch.root_cert)
        if launch.key is None:
            raise DeploymentError("--key: required (the device's private key registered with the server)")
        check_device_key(launch.key)
    if not launch.data.exists():
        raise DeploymentError(f"--data: data not found: {launch.data}")
    if not (launch.max_epsilon > 0):
        raise DeploymentError(f"--max-epsilon: must be > 0; got {launch.max_epsilon!r}")
    if not (0.0 < launch.delta <= 0.1):
        raise DeploymentError(f"--delta: must be in (0, 0.1]; got {launch.delta!r}")
    low, high = HEARTBEAT_BOUNDS
    if not low <= launch.heartbeat_interval <= high:
        raise DeploymentError(
            f"--heartbeat-interval: must be in [{low:g}, {high:g}] seconds; got {launch.heartbeat_interval!r}"
        )


def _toml_string(value: str) -> str:
    return json.dumps(value)


def node_config(launch: ClientLaunch) -> str:
    """The SuperNode's ``--node-config``: the device settings the ClientApp reads.

    Its budget rule (``max-epsilon``, 0 for no limit; ``delta``; ``allow-non-private``) travels
    here, set by the device's owner, never in the run config the server stages.
    """
    items = [
        f"data-path={_toml_string(str(launch.data.resolve()))}",
        f"state-dir={_toml_string(str(launch.state_dir.resolve()))}",
        f"device-id={_toml_string(launch.device_id)}",
        f"max-epsilon={0.0 if math.isinf(launch.max_epsilon) else float(launch.max_epsilon)!r}",
        f"delta={float(launch.delta)!r}",
        f"allow-non-private={'true' if launch.allow_non_private else 'false'}",
        f"label-column={_toml_string(launch.label_column)}",
    ]
    if launch.feature_shape:
        items.append(f"feature-shape={_toml_string(launch.feature_shape)}")
    if launch.num_classes:
        items.append(f"num-classes={int(launch.num_classes)}")
    return " ".join(items)


def supernode_command(launch: ClientLaunch, *, runtime_port: int) -> list[str]:
    """The command running a device's SuperNode: flower-supernode's flags, through :func:`supernode_main`."""
    command = [
        sys.executable,
        "-m",
        __name__,
        "supernode",
        "--heartbeat-interval",
        repr(float(launch.heartbeat_interval)),
        "--superlink",
        launch.server,
    ]
    if launch.insecure:
        command.append("--insecure")
    else:
        command += [
            "--root-certificates",
            str(launch.root_cert),
            "--auth-supernode-private-key",
            str(launch.key),
        ]
    if launch.max_retries is not None:
        command += ["--max-retries", str(launch.max_retries)]
    if launch.max_wait_time is not None:
        command += ["--max-wait-time", str(launch.max_wait_time)]
    command += [
        "--node-config",
        node_config(launch),
        "--host",
        "127.0.0.1",
        "--port",
        str(runtime_port),
    ]
    return command


# Known SuperNode failures, turned into one line each (matched on its output).
CLIENT_FAILURES: tuple[tuple[str, str], ...] = (
    (
        "CERTIFICATE_VERIFY_FAILED",
        "TLS refused: the server's certificate is not signed by --root-cert "
        "(wrong CA, or not the fedlab server)",
    ),
    ("Hostname mismatch", "TLS refused: the server's certificate does not name the address in --server"),
    (
        "Failed to activate SuperNode",
        "node authentication refused: this device's key is not registered "
        "with the server (add its .pub to [deployment] device_keys)",
    ),
    ("Unable to parse the private key", "--key: Flower cannot parse the device private key"),
    (
        "Server disconnected without sending a response",
        "plaintext refused: the server requires TLS (use --root-cert instead of --insecure)",
    ),
    ("SSL", "TLS handshake with the server failed (wrong --server port or protocol?)"),
    ("Giving up reconnection", "gave up reconnecting: the server at --server is not reachable"),
    ("Connection refused", "cannot reach the server at --server (not running, or wrong address)"),
    ("ConnectError", "cannot reach the server at --server (not running, or wrong address)"),
)


def explain_client_failure(lines: Iterable[str]) -> str | None:
    """The one-line explanation of a SuperNode's failure, from its output."""
    text = "\n".join(lines)
    for needle, message in CLIENT_FAILURES:
        if needle in text:
            return message
    return None


# SuperNode output lines after which it will not recover (it may hang instead of exiting).
FATAL_MARKERS = ("Exit Code:", "Giving up reconnection")


@dataclass
class _Tail:
    lines: list[str] = field(default_factory=list)
    fatal: threading.Event = field(default_factory=threading.Event)

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        del self.lines[:-200]
        if any(marker in line for marker in FATAL_MARKERS):
            self.fatal.set()


ACTIVATION_REFUSED = "Failed to activate SuperNode"


def run_client(launch: ClientLaunch, *, log: LineSink) -> int:
    """Run the device's SuperNode until it exits; return 0 or raise DeploymentError with one line.

    The SuperNode reconnects with backoff (``max_retries``, ``max_wait_time``) and
    rejoins with the same node id (tied to its key) and device id. After a crash the
    SuperLink keeps the old session online until its heartbeat expires (2 heartbeat
    intervals, at most ``2 * launch.heartbeat_interval`` s) and refuses to activate the
    node meanwhile: fedlab relaunches the SuperNode with backoff until ``max_wait_time``.
    Once the SuperNode reports a fatal error it is stopped by PID (flwr 1.41 can hang
    after giving up).

    Security: the refusal messages distinguish a wrong CA (impostor server or wrong
    ``--root-cert``) from an unregistered key, so an operator does not "fix" a TLS
    failure by disabling TLS. Does not stop anything by itself: TLS and node
    authentication are enforced by Flower.

    Raises:
        DeploymentError: The connection was refused (TLS, authentication, plaintext),
            or the SuperNode failed; the message says why in one line.
    """
    check_client_launch(launch)
    launch.state_dir.mkdir(parents=True, exist_ok=True)
    env = flower_env(launch.state_dir / "flwr-home")
    file_log = _file_sink(launch.state_dir / "supernode.log")
    budget = launch.max_wait_time if launch.max_wait_time is not None else math.inf
    deadline = time.monotonic() + budget
    delay = 2.0
    while True:
        tail = _Tail()
        code = _supernode_once(launch, env, [tail, file_log, log], tail, log)
        if code == 0 and not tail.fatal.is_set():
            return 0
        refused = any(ACTIVATION_REFUSED in line for line in tail.lines)
        if refused and time.monotonic() + delay < deadline:
            log(
                f"activation refused (unregistered key, or the previous session is still online); "
                f"retrying in {delay:g} s"
            )
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            continue
        reason = explain_client_failure(tail.lines)
        if reason is None:
            reason = f"the SuperNode exited with code {code}: {_last_line(chr(10).join(tail.lines))}"
        raise DeploymentError(reason)


def _supernode_once(
    launch: ClientLaunch, env: Mapping[str, str], sinks: list[LineSink], tail: _Tail, log: LineSink
) -> int:
    proc = _start(supernode_command(launch, runtime_port=free_port()), env)
    log(f"SuperNode (pid {proc.pid}) for device {launch.device_id!r} connecting to {launch.server}")
    pump = _pump(proc.stdout, sinks) if proc.stdout else None
    try:
        while proc.poll() is None:
            if tail.fatal.wait(timeout=0.5):
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    break
    finally:
        stop_process(proc, grace=5)
    if pump is not None:
        pump.join(timeout=5)
    return proc.returncode if proc.returncode is not None else -1


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


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


# --------------------------------------------------------------------------- SuperNode launcher

# Flower 1.41 modules that read the SuperNode heartbeat interval (a module constant, no flag):
# fleet_http_connection sends it to the SuperLink (ActivateNode, SendNodeHeartbeat), heartbeat
# paces the HeartbeatSender thread with it.
HEARTBEAT_MODULES = ("flwr.supernode.fleet_http_connection", "flwr.supercore.heartbeat")


def supernode_main(argv: Sequence[str]) -> int:
    """Run flower-supernode in this process with fedlab's heartbeat interval.

    ``argv`` is ``supernode --heartbeat-interval SECONDS`` followed by flower-supernode's own
    flags. Flower 1.41 has no flag for the interval; it is a protocol field the SuperLink accepts
    per node (10..1800 s), read from ``HEARTBEAT_DEFAULT_INTERVAL`` in :data:`HEARTBEAT_MODULES`,
    which this sets before starting the SuperNode.

    Raises:
        DeploymentError: On a malformed command line, or a Flower without those module constants.
    """
    import importlib

    if len(argv) < 3 or argv[0] != "supernode" or argv[1] != "--heartbeat-interval":
        raise DeploymentError("usage: python -m fedlab.flower.deploy supernode --heartbeat-interval S ...")
    try:
        interval = float(argv[2])
    except ValueError:
        raise DeploymentError(f"--heartbeat-interval: not a number: {argv[2]!r}") from None
    for name in HEARTBEAT_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise DeploymentError(f"{name}.HEARTBEAT_DEFAULT_INTERVAL not found: fedlab needs flwr 1.41")
        setattr(module, "HEARTBEAT_DEFAULT_INTERVAL", interval)  # noqa: B010
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[3:]]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(supernode_main(sys.argv[1:]))
