"""kill -9 a ledger writer mid-commit, many times: every committed round stays whole."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fedlab
from fedlab.privacy import ClientSpend, PrivacyLedger

PAD = "x" * 200  # long client ids make each transaction a few MB: slow enough to be killed inside

WRITER = textwrap.dedent(
    f"""
    import sys
    from pathlib import Path
    from fedlab.privacy import ClientSpend, PrivacyLedger

    def clients(round_num):
        count = 2000 + (round_num * 7919) % 2001
        return [
            ClientSpend(client_id=f"client-{{i:06d}}-{PAD}", noise_multiplier=1.0, sample_rate=0.01,
                        steps=round_num, epsilon=0.01 * round_num)
            for i in range(count)
        ]

    with PrivacyLedger.open(Path(sys.argv[1])) as ledger:
        print("ready", flush=True)
        while True:
            round_num = ledger.last_round() + 1
            batch = clients(round_num)
            print("commit", round_num, flush=True)
            ledger.commit_round(round_num, batch)
            print("done", round_num, flush=True)
    """
)


def expected_clients(round_num: int) -> int:
    return 2000 + (round_num * 7919) % 2001


def check_whole_and_contiguous(path: Path) -> int:
    """Opens the ledger (which itself checks counts and contiguity) and re-checks each round."""
    with PrivacyLedger.open(path) as ledger:
        last = ledger.last_round()
        records = ledger.rounds()
        assert [r.round for r in records] == list(range(1, last + 1))
        for record in records:
            assert record.num_clients == expected_clients(record.round)
            assert record.epsilon_max == pytest.approx(0.01 * record.round)
        conn = ledger._conn  # a direct look at the rows, beyond the public API
        for round_num, rows, steps_min, steps_max in conn.execute(
            "SELECT round, COUNT(*), MIN(steps), MAX(steps) FROM client_spend GROUP BY round ORDER BY round"
        ):
            assert rows == expected_clients(round_num)
            assert steps_min == steps_max == round_num
        return last


def run_and_kill(path: Path, script: Path, rng: random.Random) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(fedlab.__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        return proc.stdout.read().split("\n")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_sigkilled_writer_never_leaves_a_partial_round(tmp_path: Path) -> None:
    path = tmp_path / "privacy.sqlite"
    PrivacyLedger.create(path, run_name="crash", delta=1e-5, config_json="{}").close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(20240607)
    kills = mid_commit_kills = 0
    last = 0
    while kills < 25 and (kills < 6 or mid_commit_kills < 3):
        lines = [line for line in run_and_kill(path, script, rng) if line]
        kills += 1
        new_last = check_whole_and_contiguous(path)
        done = [int(line.split()[1]) for line in lines if line.startswith("done")]
        # Every round the writer reported as committed is in the ledger (durable on return) ...
        assert all(r <= new_last for r in done)
        # ... and nothing beyond the round it was writing when killed.
        assert new_last <= max([last, *done]) + 1
        if lines and lines[-1].startswith("commit"):
            mid_commit_kills += 1  # killed inside commit_round: that round is all there or absent
        last = new_last
    assert mid_commit_kills >= 3, f"only {mid_commit_kills} of {kills} kills landed inside a commit"
    assert last >= 1

    # A new writer continues from last_round() + 1.
    with PrivacyLedger.open(path) as ledger:
        assert ledger.last_round() == last
        clients = [
            ClientSpend(
                client_id=f"client-{i:06d}-{PAD}",
                noise_multiplier=1.0,
                sample_rate=0.01,
                steps=last + 1,
                epsilon=0.01 * (last + 1),
            )
            for i in range(expected_clients(last + 1))
        ]
        ledger.commit_round(ledger.last_round() + 1, clients)
    assert check_whole_and_contiguous(path) == last + 1
