"""An inline run SIGKILLed at random moments and resumed each time ends as if never interrupted."""

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from .processes import committed_rounds, kill_tree, process_tree, start_fedlab, wait_until

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("fault_injection.py")
CONFIG = str(REPO / "simulations" / "digits-dp.toml")
ROUNDS = 30


def committed(run: Path) -> int:
    return len(committed_rounds(run))


def ledger_rows(run: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True) as conn:
        return {
            "rounds": conn.execute(
                "SELECT round, num_clients, num_federation FROM rounds ORDER BY round"
            ).fetchall(),
            "client_spend": conn.execute("SELECT * FROM client_spend ORDER BY round, client_id").fetchall(),
            "federation_spend": conn.execute("SELECT * FROM federation_spend ORDER BY round").fetchall(),
        }


def fedlab_args(run: Path, fresh: bool) -> list[str]:
    start = [CONFIG, "--backend", "inline", "--out", str(run)] if fresh else ["--resume", str(run)]
    return ["simulate", *start, "--quiet"]


def run_with_fault(spec: str, run: Path, fresh: bool) -> tuple[int, str, list[psutil.Process]]:
    proc = subprocess.Popen(
        [sys.executable, str(HARNESS), spec, "--", *fedlab_args(run, fresh)],
        cwd=run.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tracked: list[psutil.Process] = []
    while proc.poll() is None:
        tracked = process_tree(proc.pid) or tracked
        time.sleep(0.05)
    return proc.returncode, proc.stdout.read() if proc.stdout else "", tracked


def run_and_kill_in_round(target: int, run: Path, rng: random.Random) -> tuple[int, list[psutil.Process]]:
    """Start (or resume) the run, SIGKILL only its main process at a random moment of round ``target``."""
    proc = start_fedlab(*fedlab_args(run, fresh=False), cwd=run.parent)
    tracked: list[psutil.Process] = []
    assert wait_until(
        lambda: committed(run) >= target - 1 or proc.poll() is not None, timeout=240, interval=0.01
    )
    tracked = process_tree(proc.pid)
    time.sleep(rng.uniform(0.0, 0.1))  # a round takes ~0.1-0.2 s here
    proc.kill()
    proc.wait()
    return proc.returncode, tracked


def alive(tracked: list[psutil.Process]) -> list[str]:
    names = []
    for p in tracked[1:]:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                names.append(" ".join(p.cmdline())[:80])
        except psutil.NoSuchProcess:
            continue
    return names


def leftovers(tracked: list[psutil.Process]) -> list[str]:
    """The killed run's processes still alive 30 s later (workers exit when their pipe closes)."""
    wait_until(lambda: not alive(tracked), timeout=30.0, interval=0.2)
    return alive(tracked)


@pytest.mark.slow
def test_ten_sigkills_at_random_points_then_resume_give_the_uninterrupted_run(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    code, output, _ = run_with_fault("none:0", whole, fresh=True)
    assert code == 0, output

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)  # printed on failure, to replay the same faults
    kinds = ["commit", "model", "metrics", "train", "timer"] * 2
    rng.shuffle(kinds)
    targets = sorted(rng.sample(range(2, ROUNDS - 6), len(kinds)))
    history = []
    for i, (kind, planned) in enumerate(zip(kinds, targets, strict=True)):
        target = max(planned, committed(cut) + 1)  # a timer kill may have landed a round or two later
        if kind == "timer" and i > 0:
            code, tracked = run_and_kill_in_round(target, cut, rng)
        else:
            kind = "commit" if kind == "timer" else kind
            spec = f"{kind}:{target}:{rng.randint(1, 120)}"
            code, output, tracked = run_with_fault(spec, cut, fresh=(i == 0))
        history.append((kind, target, code, committed(cut)))
        assert code == -9, f"seed {seed}: {history}"
        assert leftovers(tracked) == [], f"seed {seed}: processes outlived the SIGKILL: {history}"
        if tracked:
            kill_tree(tracked[0].pid, tracked)
    code, output, _ = run_with_fault("none:0", cut, fresh=False)
    assert code == 0, f"seed {seed}: {history}\n{output}"

    a, b = np.load(whole / "model.npz"), np.load(cut / "model.npz")
    assert a.files == b.files
    assert all(np.array_equal(a[k], b[k]) for k in a.files), f"seed {seed}: weights differ after {history}"
    sa = json.loads((whole / "summary.json").read_text())
    sb = json.loads((cut / "summary.json").read_text())
    assert sb["client_epsilons"] == sa["client_epsilons"]
    assert (sb["rounds_completed"], sb["accuracy"]) == (sa["rounds_completed"], sa["accuracy"])
    assert ledger_rows(cut) == ledger_rows(whole), "every round committed once, with the same spend"
    rounds = [json.loads(line)["round"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, ROUNDS + 1))
