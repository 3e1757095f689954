"""Every bad-config case ends with one line naming the problem and exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "simulations" / "digits-dp.toml"


def run_fedlab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(DEMO.read_text() + "\n" + extra)
    return path


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.momentum_typo=0.9", ("train.momentum_typo", "unknown key")),
        ('train.batch_size="big"', ("train.batch_size", "type int")),
        ("dp.noise_multiplier=-1.0", ("dp.noise_multiplier",)),
        ("dp.delta=1.5", ("dp.delta", "(0, 1)")),
        ("data.num_clients=0", ("data.num_clients", ">= 1")),
        ("train.batch_size=100000", ("train.batch_size", "larger than the smallest client partition")),
        ('model.kind="rnn"', ("model.kind", "lstm, transformer", "'rnn'")),
        ("model.layers=0", ("model.layers", ">= 1")),
        ('data.dataset="text"', ("data.path", "required when data.dataset = 'text'")),
        ('data.text_level="word"', ("data.text_level", "byte, char")),
    ],
)
def test_bad_override_gives_one_line_and_exit_2(tmp_path, override, fragments):
    result = run_fedlab(
        "simulate", str(DEMO), "--set", override, "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists(), "nothing is written for a bad config"


def test_noise_multiplier_negative_in_file(tmp_path):
    text = DEMO.read_text().replace("target_epsilon = 8.0", "noise_multiplier = -2.0")
    path = tmp_path / "neg.toml"
    path.write_text(text)
    assert_one_line_error(run_fedlab("simulate", str(path), cwd=tmp_path), "dp.noise_multiplier", ">= 0")


def test_missing_data_path(tmp_path):
    path = tmp_path / "files.toml"
    text = DEMO.read_text().replace('dataset = "digits"', 'dataset = "files"\npath = "no/such/folder"')
    path.write_text(text)
    assert_one_line_error(run_fedlab("simulate", str(path), cwd=tmp_path), "data.path", "does not exist")


def test_a_text_folder_without_files(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / ".hidden").write_text("not a client")
    path = write_config(tmp_path, "")
    text = path.read_text().replace('dataset = "digits"', 'dataset = "text"\npath = "corpus"')
    path.write_text(text)
    assert_one_line_error(run_fedlab("simulate", str(path), cwd=tmp_path), "data.path", "no text files in")


def test_an_unreachable_hub_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network: no retries either
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    result = run_fedlab(
        "simulate",
        str(DEMO),
        "--set",
        'data.dataset="hub"',
        "--set",
        'data.hub_name="nobody/nothing"',
        cwd=tmp_path,
    )
    assert_one_line_error(result, "data.hub_name", "cannot load 'nobody/nothing'")


def test_missing_config_file(tmp_path):
    assert_one_line_error(
        run_fedlab("simulate", "nowhere.toml", cwd=tmp_path), "config file not found", "nowhere.toml"
    )


def test_out_dir_holding_a_run_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.sqlite").write_bytes(b"")
    result = run_fedlab("simulate", str(DEMO), "--out", str(out), cwd=tmp_path)
    assert_one_line_error(result, "already holds a run")
    assert (out / "ledger.sqlite").read_bytes() == b"", "an existing ledger is never touched"


def test_ledger_of_a_missing_run(tmp_path):
    assert_one_line_error(run_fedlab("privacy", "ledger", str(tmp_path / "none"), cwd=tmp_path), "ledger")
