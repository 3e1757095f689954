"""The device side: validate a launch, build the SuperNode command, run it until it exits."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedlab.flower.deploy.certificates import check_device_key, check_root_cert
from fedlab.flower.deploy.errors import DeploymentError
from fedlab.flower.deploy.processes import (
    PARENT_PIPE_ENV,
    LineSink,
    file_sink,
    flower_env,
    free_port,
    last_line,
    pump_lines,
    start_process,
    stop_process,
)
from fedlab.flower.run_end import clear_run_ended, read_run_ended

HEARTBEAT_INTERVAL = 10.0
"""Seconds between a device's heartbeats (flwr 1.41 accepts 10..1800; its SuperNode has 30 fixed).

The SuperLink holds a node online for 2 intervals after its last heartbeat and refuses to
activate the same key meanwhile, so a crashed device can rejoin ``2 * HEARTBEAT_INTERVAL``
seconds after its last heartbeat at the latest (a minute with Flower's 30 s).
"""
HEARTBEAT_BOUNDS = (10.0, 1800.0)
SUPERNODE_MODULE = "fedlab.flower.deploy"  # run with ``python -m`` (see its ``__main__``)


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
        SUPERNODE_MODULE,
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


PLAINTEXT_REFUSED = "plaintext refused: the server requires TLS (use --root-cert instead of --insecure)"

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
    ("Server disconnected without sending a response", PLAINTEXT_REFUSED),
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


def server_speaks_tls(address: str, *, timeout: float = 5.0) -> bool:
    """Whether the server at ``HOST:PORT`` completes a TLS handshake (certificate not checked).

    Tells a plaintext client refused by a TLS server apart from an unreachable server:
    a plaintext SuperNode reports either one as a failed connection, with varying
    messages. Nothing is sent after the handshake.

    Example:
        >>> server_speaks_tls("127.0.0.1:1", timeout=1.0)
        False
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host or None),
        ):
            return True
    except (OSError, ValueError):
        return False


# SuperNode output lines after which it will not recover (it may hang instead of exiting).
FATAL_MARKERS = ("Exit Code:", "Giving up reconnection")


@dataclass
class _Tail:
    lines: list[str] = field(default_factory=list)
    fatal: threading.Event = field(default_factory=threading.Event)
    run_ended: str | None = None  # why the server said the run ended

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        del self.lines[:-200]
        if any(marker in line for marker in FATAL_MARKERS):
            self.fatal.set()


ACTIVATION_REFUSED = "Failed to activate SuperNode"
SESSION_EXPIRY_HEARTBEATS = 2
"""The SuperLink keeps a node's lost session online for this many heartbeat intervals."""
RUN_END_GRACE = 2.0
"""Seconds the SuperNode may still run once the server ended the run (to acknowledge it)."""


def run_client(launch: ClientLaunch, *, log: LineSink) -> int:
    """Run the device's SuperNode until it exits; return 0 or raise DeploymentError with one line.

    The SuperNode reconnects with backoff (``max_retries``, ``max_wait_time``) and
    rejoins with the same node id (tied to its key) and device id. After a crash the
    SuperLink keeps the old session online until its heartbeat expires (2 heartbeat
    intervals, at most ``2 * launch.heartbeat_interval`` s) and refuses to activate the
    node meanwhile: fedlab relaunches the SuperNode with backoff for up to that long (plus
    5 s) after the first refusal, or ``max_wait_time`` if shorter; refused after that, the
    key is not registered, and that is the error.
    Once the SuperNode reports a fatal error it is stopped by PID (flwr 1.41 can hang
    after giving up). When the server ends the run it tells the device why (the ClientApp
    writes ``run-ended.json`` into the state directory, see :mod:`fedlab.flower.run_end`): the
    SuperNode is stopped ``RUN_END_GRACE`` s later and the client returns 0.

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
    clear_run_ended(launch.state_dir)
    env = flower_env(launch.state_dir / "flwr-home")
    file_log = file_sink(launch.state_dir / "supernode.log")
    budget = launch.max_wait_time if launch.max_wait_time is not None else math.inf
    deadline = time.monotonic() + budget
    delay = 2.0
    expiry = SESSION_EXPIRY_HEARTBEATS * launch.heartbeat_interval + 5.0
    while True:
        tail = _Tail()
        code = _supernode_once(launch, env, [tail, file_log, log], tail, log)
        if tail.run_ended is not None or (code == 0 and not tail.fatal.is_set()):
            return 0
        refused = any(ACTIVATION_REFUSED in line for line in tail.lines)
        if refused and deadline > time.monotonic() + expiry:
            # A previous session of this device stays online for at most 2 heartbeat intervals;
            # still refused after that, the key is not registered.
            deadline = time.monotonic() + expiry
        if refused and time.monotonic() + delay < deadline:
            log(
                f"activation refused: a previous session of this device may still be online; "
                f"retrying in {delay:g} s (for up to {expiry:g} s; refused after that, the key is "
                "not registered)"
            )
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            continue
        reason = explain_client_failure(tail.lines)
        if launch.insecure and reason != PLAINTEXT_REFUSED and server_speaks_tls(launch.server):
            reason = PLAINTEXT_REFUSED
        if reason is None:
            reason = f"the SuperNode exited with code {code}: {last_line(chr(10).join(tail.lines))}"
        raise DeploymentError(reason)


def _supernode_once(
    launch: ClientLaunch, env: Mapping[str, str], sinks: list[LineSink], tail: _Tail, log: LineSink
) -> int:
    watched, lifeline = os.pipe()  # only this process holds ``lifeline``: the SuperNode dies with it
    try:
        proc = start_process(
            supernode_command(launch, runtime_port=free_port()),
            {**env, PARENT_PIPE_ENV: str(watched)},
            pass_fds=(watched,),
        )
    except BaseException:
        os.close(lifeline)
        raise
    finally:
        os.close(watched)
    log(f"SuperNode (pid {proc.pid}) for device {launch.device_id!r} connecting to {launch.server}")
    pump = pump_lines(proc.stdout, sinks) if proc.stdout else None
    try:
        while proc.poll() is None:
            if tail.fatal.wait(timeout=0.5):
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    break
            tail.run_ended = read_run_ended(launch.state_dir)
            if tail.run_ended is not None:
                time.sleep(RUN_END_GRACE)  # the SuperNode sends the acknowledgement meanwhile
                log(f"the server ended the run ({tail.run_ended}); stopping the SuperNode")
                break
    finally:
        stop_process(proc, grace=5)
        os.close(lifeline)
    if pump is not None:
        pump.join(timeout=5)
    return proc.returncode if proc.returncode is not None else -1
