"""The server side: start the SuperLink, register device keys, submit and follow ``flwr run``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedlab.core.errors import FAILED_RUN_LINE
from fedlab.flower.deploy.errors import DeploymentError
from fedlab.flower.deploy.federation import DeploymentSection, Federation
from fedlab.flower.deploy.processes import (
    LineSink,
    file_sink,
    flower_bin,
    flower_env,
    last_line,
    pump_lines,
    start_process,
    stop_process,
)

CONNECTION = "fedlab"  # the SuperLink connection name in the private FLWR_HOME
RUN_CONFIG_FILE = "fedlab-run.toml"
APP_FILES = ("pyproject.toml", "server", "clients")


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


def superlink_command(d: DeploymentSection, database: Path) -> list[str]:
    """The flower-superlink command line: TLS, node authentication, SQLite state."""
    return [
        flower_bin("flower-superlink"),
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
            [flower_bin("flwr"), "supernode", "register", str(key), CONNECTION, "--format", "json"],
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
                f"cannot register {key}: {last_line(result.stdout + result.stderr)}"
            ) from None
        if reply.get("success"):
            log(f"registered device key {key.name} (node {reply.get('node-id')})")
        elif "already in use" in str(reply.get("error-message", "")):
            log(f"device key {key.name} already registered")
        else:
            raise DeploymentError(f"cannot register {key}: {last_line(str(reply.get('error-message')))}")


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


def run_command(app_dir: Path, run_dir: Path, *, resume: bool = False) -> list[str]:
    """The ``flwr run`` command submitting the staged app with its config and run directory."""
    run_config = f"config='{RUN_CONFIG_FILE}' overrides='' out-dir='{run_dir}' resume={str(resume).lower()}"
    return [flower_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", run_config]


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
    resume: bool = False,
) -> ServerResult:
    """Start the SuperLink, register devices, submit the run, stream it, stop everything.

    The SuperLink (and anything it spawned) is stopped by PID when the run ends, fails
    or on Ctrl-C. With ``resume`` the ServerApp goes on with the run in ``run_dir`` after its last
    committed round.
    """
    d = federation.deployment
    state = d.state_dir
    state.mkdir(parents=True, exist_ok=True)
    flwr_home = state / "flwr-home"
    write_flwr_config(flwr_home, d)
    env = flower_env(flwr_home)
    link_log = file_sink(state / "superlink.log")
    superlink = start_process(superlink_command(d, state / "superlink.sqlite"), env)
    if superlink.stdout is not None:
        pump_lines(superlink.stdout, [link_log])
    stream = log if verbose else _important(log)
    runner: subprocess.Popen[str] | None = None
    try:
        _wait_for_port(d.host, d.port, superlink, timeout=startup_timeout)
        log(f"SuperLink (pid {superlink.pid}) listening on https://{d.host}:{d.port}; state in {state}")
        register_device_keys(d, env, log)
        app_dir = state / "app"
        stage_app(app_root, app_dir, federation.raw_config)
        run_dir = run_dir.resolve()
        runner = start_process(run_command(app_dir, run_dir, resume=resume), env, cwd=state)
        run_log = file_sink(state / "run.log")
        pump = pump_lines(runner.stdout, [run_log, stream]) if runner.stdout else None
        done = threading.Event()
        progress = threading.Thread(
            target=_follow_metrics,
            args=(
                run_dir / "metrics.jsonl",
                federation.config.run.rounds,
                log,
                done,
                _epsilon_label(federation),
            ),
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
        # A failed run's cause: fedlab server says it once, from summary.json.
        if FAILED_RUN_LINE in line:
            return
        if any(word in line for word in keep) and "fraction_evaluate" not in line:
            log(line)

    return write


def _epsilon_label(federation: Federation) -> str:
    """What a round line's epsilon is: under DP-SGD each device reports its budget across runs."""
    return "device lifetime epsilon max" if federation.config.dp.dpsgd else "epsilon"


def _follow_metrics(
    path: Path, rounds: int, log: LineSink, done: threading.Event, label: str = "epsilon max"
) -> None:
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
                f"{label} {eps_text}{counts}"
            )
        if finished:
            return
        done.wait(1.0)
