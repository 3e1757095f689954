"""Deployment commands: ``fedlab certs init``, ``fedlab server``, ``fedlab client``.

Every user error and every refused connection ends with one line on stderr and a
non-zero exit code (2: bad setup detected before launching; 3: refused at runtime
or the run failed), never a traceback.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedlab.cli.common import (
    RUNTIME_ERROR,
    USER_ERROR,
    fail,
    fail_if_run_failed,
    fresh_run_dir,
    refuse_out_with_resume,
)
from fedlab.core.errors import FedlabError

APP_ROOT = Path(__file__).resolve().parents[2]


def _echo(console: Console) -> Any:
    def write(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    return write


def _say(console: Console, text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def git_work_tree(path: Path) -> Path | None:
    """The root of the git work tree holding ``path`` (a parent with ``.git``), or None.

    >>> git_work_tree(Path("/")) is None
    True
    """
    for parent in [path.resolve(), *path.resolve().parents]:
        if (parent / ".git").exists():
            return parent
    return None


def certs_init(
    out_dir: Annotated[
        Path, typer.Argument(metavar="DIR", help="Where to write the CA, server and device keys.")
    ],
    hosts: Annotated[
        list[str] | None,
        typer.Option("--host", help="Server host name or IP for its certificate (repeatable)."),
    ] = None,
    devices: Annotated[int, typer.Option("--devices", help="Number of device key pairs.")] = 3,
) -> None:
    """Create a private CA, a server certificate and per-device keys (development and tests)."""
    from fedlab.flower.deploy import init_certificates

    try:
        files = init_certificates(out_dir, hosts=hosts or ["localhost", "127.0.0.1"], devices=devices)
    except FedlabError as exc:
        fail(str(exc), USER_ERROR)
    console = Console()
    tree = git_work_tree(out_dir)
    if tree is not None:
        Console(stderr=True).print(
            f"warning: {out_dir} is inside the git work tree {tree}: never commit its private keys "
            "(*.key; fedlab's .gitignore ignores certs/, state/, data/, device-state/ and *.key)",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    _say(console, f"server: CA certificate     {files.ca_cert}  (also on every device: --root-cert)")
    _say(console, f"server: certificate       {files.server_cert}  ([deployment] server_cert)")
    _say(console, f"server: private key       {files.server_key}  ([deployment] server_key; keep secret)")
    _say(console, f"offline: CA private key   {files.ca_key}  (only to issue new certificates; keep offline)")
    for private, public in files.device_keys:
        _say(console, f"device {private.stem}: {private}  (on the device only: --key)")
        _say(console, f"server: {public}  (add to [deployment] device_keys)")


def server(
    config: Annotated[Path, typer.Option("--config", help="Federation file (server/federation.toml).")],
    state: Annotated[
        Path | None, typer.Option("--state", help="State directory (overrides the file).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: STATE/runs/NAME-TIME).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a run config key: section.key=value.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", metavar="RUN_DIR", help="Go on with an interrupted run after its last round."
        ),
    ] = None,
) -> None:
    """Start the SuperLink (TLS, node authentication), register devices, run the federation."""
    from fedlab.flower.deploy import load_federation, run_server
    from fedlab.flower.deploy.processes import last_error
    from fedlab.training.run_resume import check_resumable

    console = Console()
    try:
        federation = load_federation(config, state_dir=state, overrides=overrides or [])
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        default = federation.deployment.state_dir / "runs" / f"{federation.config.run.name}-{stamp}"
        refuse_out_with_resume(resume, out)
        if resume is not None:
            run_dir = resume
            done = check_resumable(resume, federation.config)
        else:
            run_dir = fresh_run_dir(federation.config, out if out is not None else default)
    except FedlabError as exc:
        fail(str(exc), USER_ERROR)
    if resume is not None:
        console.print(f"resuming {run_dir} after round {done}", highlight=False)
    else:
        console.print(f"run directory: {run_dir}", highlight=False)
    try:
        result = run_server(
            federation, app_root=APP_ROOT, run_dir=run_dir, log=_echo(console), resume=resume is not None
        )
    except KeyboardInterrupt:
        fail("interrupted: the SuperLink was stopped", 130)
    except FedlabError as exc:
        fail(str(exc), RUNTIME_ERROR)
    logs = federation.deployment.state_dir
    if result.summary is not None:
        fail_if_run_failed(result.summary, f"logs in {logs}")
    if result.summary is None or result.exit_code != 0:
        cause = last_error(logs / "run.log")
        fail(f"the run did not complete: {cause} (logs in {logs})", RUNTIME_ERROR)
    s = result.summary
    eps = s.get("epsilon_max")
    eps_text = f"{eps:.3f}" if isinstance(eps, (int, float)) and math.isfinite(eps) else "-"
    console.print(
        f"run complete: {s['rounds_completed']}/{s['rounds_planned']} rounds, accuracy {s.get('accuracy')}, "
        f"client epsilon max {eps_text}; results in {result.run_dir}",
        highlight=False,
    )


def client(
    server_address: Annotated[
        str | None, typer.Option("--server", help="SuperLink address HOST:PORT.")
    ] = None,
    root_cert: Annotated[Path | None, typer.Option("--root-cert", help="CA certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Device private key (OpenSSH EC).")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Local data: image folder, CSV or Parquet.")
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Budget, logs (default ./fedlab-state).")
    ] = None,
    max_epsilon: Annotated[
        float | None, typer.Option("--max-epsilon", help="Never spend more (default: no limit).")
    ] = None,
    delta: Annotated[
        float | None,
        typer.Option(
            "--delta",
            help="Compute epsilon at this delta, in (0, 0.1] (default 1e-5); refuse runs with a larger one.",
        ),
    ] = None,
    allow_non_private: Annotated[
        bool,
        typer.Option(
            "--allow-non-private",
            help="Also train rounds without DP (dp.mode = none): noiseless releases, infinite epsilon.",
        ),
    ] = False,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Stable identity (default: key name).")
    ] = None,
    settings: Annotated[
        Path | None, typer.Option("--settings", help="Device settings file (clients/device.toml).")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, no node auth (development only).")
    ] = False,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Reconnection attempts.")] = None,
    max_wait_time: Annotated[
        float | None, typer.Option("--max-wait-time", help="Seconds to keep reconnecting.")
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            help="Seconds between heartbeats, 10..1800 (default 10): a crashed device can rejoin after 2.",
        ),
    ] = None,
) -> None:
    """Run this device's client: connect over TLS with its key, train on its data within its budget."""
    from fedlab.flower.deploy import HEARTBEAT_INTERVAL, ClientLaunch, read_device_settings, run_client

    try:
        file: dict[str, Any] = read_device_settings(settings) if settings is not None else {}
    except FedlabError as exc:
        fail(str(exc), USER_ERROR)

    def pick(cli: Any, name: str, default: Any = None) -> Any:
        return cli if cli is not None else file.get(name, default)

    address, data_path, key_path = pick(server_address, "server"), pick(data, "data"), pick(key, "key")
    if address is None or data_path is None:
        fail("--server and --data are required (or set them in --settings)", USER_ERROR)
    key_value = Path(key_path) if key_path is not None else None
    max_eps = pick(max_epsilon, "max_epsilon")
    device_delta = pick(delta, "delta", 1e-5)
    launch = ClientLaunch(
        server=str(address),
        root_cert=Path(pick(root_cert, "root_cert")) if pick(root_cert, "root_cert") is not None else None,
        key=key_value,
        data=Path(data_path),
        state_dir=Path(pick(state_dir, "state_dir", "fedlab-state")),
        device_id=str(pick(device_id, "device_id", key_value.stem if key_value else "device")),
        max_epsilon=float(max_eps) if max_eps is not None else math.inf,
        delta=float(device_delta),
        allow_non_private=allow_non_private or bool(file.get("allow_non_private", False)),
        insecure=insecure,
        max_retries=pick(max_retries, "max_retries"),
        max_wait_time=pick(max_wait_time, "max_wait_time", 300.0),
        feature_shape=str(file.get("feature_shape", "")),
        num_classes=int(file.get("num_classes", 0)),
        label_column=str(file.get("label_column", "label")),
        heartbeat_interval=float(pick(heartbeat_interval, "heartbeat_interval", HEARTBEAT_INTERVAL)),
    )
    console = Console()
    try:
        code = run_client(launch, log=_echo(console))
    except KeyboardInterrupt:
        fail("interrupted: the SuperNode was stopped", 130)
    except FedlabError as exc:
        from fedlab.flower.deploy import DeploymentError

        fail(str(exc), RUNTIME_ERROR if isinstance(exc, DeploymentError) and _runtime(exc) else USER_ERROR)
    raise typer.Exit(code)


def _runtime(exc: FedlabError) -> bool:
    """Whether a deployment error was found at runtime (the server refused), not before launching."""
    text = str(exc)
    return not text.startswith("--")


def register(app: typer.Typer) -> None:
    """Add the deployment commands to the ``fedlab`` app."""
    certs = typer.Typer(no_args_is_help=True, help="Certificates and device keys for a deployment.")
    certs.command("init")(certs_init)
    app.add_typer(certs, name="certs")
    app.command("server")(server)
    app.command("client")(client)
