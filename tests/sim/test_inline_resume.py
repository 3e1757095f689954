"""Resuming an inline run: the same model, epsilons and ledger as a run never interrupted."""

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.checkpoint import Checkpoint
from fedlab.core.config import load_config
from fedlab.core.errors import ConfigError
from fedlab.core.metrics import SilentObserver
from fedlab.privacy.ledger import PrivacyLedger
from fedlab.sim.hooks import InlineHooks
from fedlab.sim.inline import simulate_inline

REPO = Path(__file__).resolve().parents[2]


class SimulatedCrashError(Exception):
    pass


class CrashAfter(SilentObserver):
    """Raises once round ``at`` was released: the run dies with its state as a crash leaves it."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_round(self, metrics) -> None:
        if metrics.round == self.at:
            raise SimulatedCrashError


def config(name: str, *overrides: str):
    return load_config(
        REPO / "simulations" / f"{name}.toml",
        ['simulation.backend="inline"', "simulation.workers=0", *overrides],
    )


def interrupted(cfg, run: Path, crashes: tuple[int, ...], hooks: InlineHooks | None = None) -> dict:
    for at in crashes:
        with pytest.raises(SimulatedCrashError):
            simulate_inline(cfg, run, CrashAfter(at), hooks=hooks, resume=(run / "ledger.sqlite").exists())
    return simulate_inline(cfg, run, SilentObserver(), hooks=hooks, resume=True)


def rows(run: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("client_spend", "federation_spend")
        }


def assert_same_run(a: Path, b: Path, sa: dict, sb: dict) -> None:
    wa, wb = np.load(a / "model.npz"), np.load(b / "model.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files), "final weights differ"
    for key in (
        "client_epsilons",
        "epsilon_max",
        "epsilon_user",
        "accuracy",
        "rounds_completed",
        "stopped_because",
    ):
        assert sb[key] == sa[key], key
    assert rows(b) == rows(a)
    rounds = [json.loads(line)["round"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, sa["rounds_completed"] + 1))


CENTRAL = (
    "run.rounds=8", 'dp.mode="central"', "dp.noise_multiplier=1.0", "dp.clip_norm=1.0", "dp.delta=1e-3",
    'dp.accountant="rdp"', 'server.sampling="poisson"', "server.fraction_train=0.5",
    "dp.clipped_count_stddev=1.0",
)  # fmt: skip
CASES = {
    "fedavg": ("digits", ("run.rounds=6",), (2, 4)),
    "dpsgd-cohort": ("digits-dp", ("run.rounds=8", 'simulation.trainer="cohort"'), (1, 5)),
    "secagg-ddp": ("digits-secagg-ddp", ("run.rounds=6",), (3,)),
    "central-adaptive": ("digits", (*CENTRAL, "dp.adaptive_clipping=true"), (4, 6)),
    "fedadam": ("digits", ("run.rounds=5", 'server.optimizer="fedadam"', "server.lr=0.05"), (2,)),
    "central-fedyogi": ("digits", (*CENTRAL, 'server.optimizer="fedyogi"', "server.lr=0.05"), (3,)),
    "secagg-ddp-fedavgm": ("digits-secagg-ddp", ("run.rounds=4", 'server.optimizer="fedavgm"'), (2,)),
    "devices": (
        "digits-dp",
        ("run.rounds=8", "simulation.dropout=0.3", "simulation.round_deadline=30.0"),
        (3, 6),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_crashed_and_resumed_equals_the_uninterrupted_run(tmp_path, case):
    name, overrides, crashes = CASES[case]
    cfg = config(name, *overrides)
    whole = simulate_inline(cfg, tmp_path / "whole", SilentObserver())
    resumed = interrupted(cfg, tmp_path / "cut", crashes)
    assert_same_run(tmp_path / "whole", tmp_path / "cut", whole, resumed)


def test_a_changed_config_is_refused_naming_the_change(tmp_path):
    cfg = config("digits", "run.rounds=3")
    with pytest.raises(SimulatedCrashError):
        simulate_inline(cfg, tmp_path / "run", CrashAfter(1))
    changed = config("digits", "run.rounds=3", "train.lr=0.5")
    with pytest.raises(ConfigError, match=r"train\.lr \(.* -> 0\.5\)"):
        simulate_inline(changed, tmp_path / "run", SilentObserver(), resume=True)
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.last_round() == 1, "the refused resume wrote nothing"


def test_a_run_recorded_before_keys_were_added_resumes_with_their_defaults(tmp_path):
    """An older fedlab wrote config.json and the ledger without the keys added since (server.optimizer...)."""
    cfg = config("digits", "run.rounds=3")
    whole = simulate_inline(cfg, tmp_path / "whole", SilentObserver())
    run = tmp_path / "old"
    with pytest.raises(SimulatedCrashError):
        simulate_inline(cfg, run, CrashAfter(1))
    older = json.loads((run / "config.json").read_text())
    del older["run"]["tensorboard"]
    for key in ("optimizer", "lr", "momentum", "beta1", "beta2", "tau"):
        del older["server"][key]
    (run / "config.json").write_text(json.dumps(older))
    with sqlite3.connect(run / "ledger.sqlite") as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'config_json'", (json.dumps(older, sort_keys=True),)
        )
    resumed = simulate_inline(cfg, run, SilentObserver(), resume=True)
    assert_same_run(tmp_path / "whole", run, whole, resumed)
    changed = config("digits", "run.rounds=3", 'server.optimizer="fedadam"')
    with pytest.raises(ConfigError, match=r"server\.optimizer \('fedavg' -> 'fedadam'\)"):
        simulate_inline(changed, run, SilentObserver(), resume=True)


def test_a_finished_run_resumes_to_the_same_summary(tmp_path):
    cfg = config("digits", "run.rounds=3")
    first = simulate_inline(cfg, tmp_path / "run", SilentObserver())
    again = simulate_inline(cfg, tmp_path / "run", SilentObserver(), resume=True)
    for key in ("accuracy", "rounds_completed", "best_accuracy", "client_epsilons"):
        assert again[key] == first[key]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_resumed_deployed_server_keeps_no_generator_state_in_the_run_directory(tmp_path):
    """Someone holding the run directory of a server with secret randomness learns no stream state.

    The checkpoint of a seeded simulation holds its generators' states (anyone with config.json can
    replay them anyway); with secret streams it holds none, and a resumed run draws fresh ones.
    """
    # logreg: with secret (unreplayable) noise of z = 1 on 5 expected clients, the CNN of
    # digits.toml can diverge to NaN updates in some draws (once in a fresh-clone CI run here);
    # the checkpoint is what is checked.
    cfg = config("digits", *CENTRAL, 'model.kind="logreg"')
    run = tmp_path / "run"
    interrupted(cfg, run, (2,), hooks=InlineHooks(secure_server=True))
    with PrivacyLedger.open(run / "ledger.sqlite") as ledger:
        blob = ledger.checkpoint()
    assert blob is not None
    state = Checkpoint.from_bytes(blob).state
    assert state["loop"]["sampling"] is None and state["loop"]["noise"] is None
    assert "clients" not in json.dumps(state["metrics"]) or state["metrics"]["clients"] is None

    seeded = tmp_path / "seeded"
    interrupted(cfg, seeded, (2,))
    with PrivacyLedger.open(seeded / "ledger.sqlite") as ledger:
        seeded_state = Checkpoint.from_bytes(ledger.checkpoint()).state
    assert seeded_state["loop"]["sampling"] is not None  # the refusal above is not vacuous


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("digits", ()),
        ("digits", CENTRAL),
        ("digits-secagg-ddp", ()),
    ],
    ids=["fedavg-loop", "central-dp-loop", "secure-loop"],
)
def test_every_round_loop_moves_the_model_by_the_server_lr_times_the_aggregate(tmp_path, name, overrides):
    """One round from the same start: w(lr) = w0 + lr * d, so w(1) - w(1/2) = 2 (w(1/2) - w(1/4))."""
    finals = {}
    for lr in (1.0, 0.5, 0.25):
        cfg = config(name, *overrides, "run.rounds=1", f"server.lr={lr}")
        simulate_inline(cfg, tmp_path / str(lr), SilentObserver())
        with np.load(tmp_path / str(lr) / "model.npz") as archive:
            finals[lr] = [archive[k].astype(np.float64) for k in archive.files]
    for w1, wh, wq in zip(finals[1.0], finals[0.5], finals[0.25], strict=True):
        assert np.abs(w1 - wh).max() > 1e-4, "the round moved the model"
        np.testing.assert_allclose(w1 - wh, 2 * (wh - wq), atol=1e-5)
