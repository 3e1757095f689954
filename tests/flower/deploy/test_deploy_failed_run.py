"""A deployment whose devices never join: one error line with its cause, and a summary.json."""

from __future__ import annotations

import json

import pytest

from .conftest import free_port, run_fedlab, write_federation


@pytest.mark.slow
def test_a_server_without_devices_fails_with_its_cause_once_and_writes_its_summary(tmp_path, certs):
    state = tmp_path / "state"
    fed = write_federation(
        tmp_path / "federation.toml", certs=certs, state=state, port=free_port(), devices=[1], timeout=5
    )
    out = tmp_path / "run"
    result = run_fedlab("server", "--config", str(fed), "--out", str(out), home=tmp_path / "h", timeout=240)
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "only 0 of 1 client nodes connected within 5 s" in errors[0], errors
    assert "Traceback" not in output
    assert output.count("only 0 of 1 client nodes connected") == 1, "the cause is said once"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_because"] == "failed: only 0 of 1 client nodes connected within 5 s"
    assert summary["rounds_completed"] == 0
