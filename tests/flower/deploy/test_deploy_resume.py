"""``fedlab server --resume``: refused in one line before anything starts unless the run can go on."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.flower.deploy.superlink import _follow_metrics, run_command
from fedlab.sim.inline import simulate_inline

from .conftest import free_port, run_fedlab, write_federation

REPO = Path(__file__).resolve().parents[3]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_the_submitted_run_asks_the_server_app_to_resume(tmp_path):
    assert run_command(tmp_path, tmp_path / "run", resume=True)[-1].endswith("resume=true")
    assert run_command(tmp_path, tmp_path / "run")[-1].endswith("resume=false")


def test_resume_of_no_run_or_of_another_configs_run_is_one_line_and_exit_2(tmp_path, certs):
    state = tmp_path / "state"
    fed = write_federation(
        tmp_path / "federation.toml", certs=certs, state=state, port=free_port(), devices=[1]
    )
    none = run_fedlab(
        "server", "--config", str(fed), "--resume", str(tmp_path / "nothing"), home=tmp_path / "h1"
    )
    assert none.returncode == 2
    assert error_lines(none.stderr) == [
        f"error: --resume {tmp_path / 'nothing'}: not a run directory (no ledger.sqlite)"
    ]

    other = tmp_path / "other"
    config = load_config(
        REPO / "simulations" / "digits.toml", ['simulation.backend="inline"', "run.rounds=1"]
    )
    simulate_inline(config, other, SilentObserver())
    changed = run_fedlab("server", "--config", str(fed), "--resume", str(other), home=tmp_path / "h2")
    assert changed.returncode == 2
    [line] = error_lines(changed.stderr)
    assert line.startswith(f"error: --resume {other}: the config differs from the run's: ")
    assert "run.name ('digits' -> 'edge-test')" in line
    assert not (state / "superlink.sqlite").exists(), "nothing was started"

    both = run_fedlab(
        "server",
        "--config",
        str(fed),
        "--resume",
        str(other),
        "--out",
        str(tmp_path / "x"),
        home=tmp_path / "h3",
    )
    assert both.returncode == 2 and len(error_lines(both.stderr)) == 1


def test_the_round_lines_say_what_the_epsilon_is(tmp_path):
    """Under DP-SGD a device reports its budget across runs: the line calls it its lifetime epsilon."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"round": 1, "accuracy": 0.5, "epsilon_max": 1.25}) + "\n")
    done = threading.Event()
    done.set()
    lines: list[str] = []
    _follow_metrics(metrics, 3, lines.append, done, label="device lifetime epsilon max")
    assert lines == ["round 1/3: accuracy 0.5000, device lifetime epsilon max 1.250"]
