"""``fedlab audit``: a lower bound that never exceeds a correct claim, and that catches broken mechanisms.

The broken mechanisms are reachable only from these tests (monkeypatching fedlab's own code for
the length of one audit): DP-SGD updates that are not clipped, DP-SGD noise seeded from the public
run seed although the audit plays an adversary who knows the config, a DP-FedAvg server whose noise
is seeded from the run seed, and DP-SGD noise silently halved. Each gives a lower bound above the
claim at 95% confidence.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from opacus.optimizers import DPOptimizer
from typer.testing import CliRunner

import fedlab.sim.audit as audit_module
from fedlab.cli.main import app
from fedlab.core.config import config_from_dict, load_config
from fedlab.core.metrics import SilentObserver
from fedlab.sim.audit import AuditSettings, run_audit
from fedlab.training.randomness import StreamDPOptimizer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "simulations" / "digits-dp.toml"
INLINE = 'simulation.backend="inline"'


def dpsgd(epsilon: float, rounds: int = 30, seed: int = 0):
    return load_config(
        DEMO, [INLINE, f"dp.target_epsilon={epsilon}", f"run.rounds={rounds}", f"run.seed={seed}"]
    )


def central(seed: int = 0):
    return config_from_dict(
        {
            "run": {"name": "audit-central", "seed": seed, "rounds": 10},
            "data": {"dataset": "digits", "num_clients": 20, "min_partition_size": 20},
            "model": {"kind": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.5},
            "dp": {"mode": "central", "target_epsilon": 2.0, "delta": 1e-5, "clip_norm": 0.5},
            "server": {"fraction_train": 0.5},
        }
    )


def distributed(seed: int = 0):
    path = REPO / "simulations" / "digits-secagg-ddp.toml"
    return load_config(path, ["run.rounds=5", f"run.seed={seed}", "dp.target_epsilon=2.0"])


def audited(config, tmp_path, name, **settings):
    return run_audit(
        config, AuditSettings(**settings), tmp_path / name, lambda _s: SilentObserver()
    ).to_dict()


def test_a_small_audit_from_the_command_line_writes_its_report(tmp_path):
    out = tmp_path / "audit"
    result = CliRunner().invoke(
        app,
        ["audit", str(DEMO), "--set", INLINE, "--set", "run.rounds=10", "--set", "dp.target_epsilon=4",
         "--canaries", "500", "--threat", "updates", "--out", str(out), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "audit.json").read_text())
    assert report["mode"] == "dpsgd" and report["one_run"]["num_canaries"] == 500
    assert 0.0 <= report["epsilon_lower_bound"] <= report["claimed_epsilon"] <= 4.0
    assert "claimed epsilon" in result.output and "lower bound" in result.output
    for name in ("audit.md", "plots/audit_scores.png", "plots/audit_bound.png", "seed-0/ledger.sqlite"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", 'dp.mode="none"'], "nothing to audit"),
        (["--canaries", "4"], "--canaries"),
        (["--canaries", "100000"], "per client"),
        (["--threat", "everything"], "--threat"),
        (["--set", 'train.optimizer="adam"', "--threat", "server-knows-config"], "plain SGD|'sgd'"),
        (["--set", "secagg.enabled=true", "--threat", "updates"], "secure aggregation"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["audit", str(DEMO), "--set", INLINE, *args, "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "a" / "audit.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "threat"),
    [("dpsgd", "updates"), ("dpsgd", "final-model"), ("dpsgd", "server-knows-config"),
     ("central", "updates"), ("central", "server-knows-config"), ("distributed", "updates")],
)  # fmt: skip
def test_on_correct_mechanisms_the_bound_never_exceeds_the_claim_over_five_seeds(tmp_path, mode, threat):
    for seed in range(5):
        if mode == "dpsgd":
            config, canaries = dpsgd(2.0, rounds=20, seed=seed), 1000
        elif mode == "central":
            config, canaries = central(seed), 300
        else:
            config, canaries = distributed(seed), 100
        report = audited(config, tmp_path, f"{mode}-{threat}-{seed}", threat=threat, canaries=canaries)
        assert report["epsilon_lower_bound"] <= report["claimed_epsilon"], report


@pytest.mark.slow
def test_unclipped_updates_are_caught(tmp_path, monkeypatch):
    clip = DPOptimizer.clip_and_accumulate

    def no_clipping(self):
        bound, self.max_grad_norm = self.max_grad_norm, 1e9  # clip at "infinity"; noise still at z * C
        try:
            clip(self)
        finally:
            self.max_grad_norm = bound

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", no_clipping)
    report = audited(dpsgd(1.0), tmp_path, "unclipped", threat="updates", canaries=1000, magnitude=10.0)
    assert report["epsilon_lower_bound"] > report["claimed_epsilon"], report


@pytest.mark.slow
def test_client_noise_seeded_from_the_public_run_seed_is_caught(tmp_path, monkeypatch):
    # The adversary knows the config and replays the noise; deployed clients draw a secret instead.
    secret = audited(dpsgd(1.0), tmp_path, "secret", threat="server-knows-config", canaries=1000)
    assert secret["epsilon_lower_bound"] <= secret["claimed_epsilon"]
    keep_seeded = audit_module._run_config
    monkeypatch.setattr(audit_module, "_run_config", lambda config, _threat: keep_seeded(config, "updates"))
    seeded = audited(dpsgd(1.0), tmp_path, "seeded", threat="server-knows-config", canaries=1000)
    assert seeded["epsilon_lower_bound"] > seeded["claimed_epsilon"], seeded


@pytest.mark.slow
def test_server_noise_seeded_from_the_public_run_seed_is_caught(tmp_path, monkeypatch):
    from fedlab.sim.hooks import InlineHooks

    def without_secret_server(**kwargs):
        return InlineHooks(**{**kwargs, "secure_server": False})

    monkeypatch.setattr(audit_module, "InlineHooks", without_secret_server)
    report = audited(central(), tmp_path, "seeded-server", threat="server-knows-config", canaries=300)
    assert report["epsilon_lower_bound"] > report["claimed_epsilon"], report


@pytest.mark.slow
def test_halved_noise_is_caught(tmp_path, monkeypatch):
    # The client accounts for noise multiplier z but adds z / 2. The f-DP bound tests the run's own
    # releases (scaled noise) and needs many canaries: 20 runs of 1,000. The claim is the tight one
    # (Opacus' PRV accountant), which the releases' PLD trade-off matches.
    noise = StreamDPOptimizer.add_noise

    def halved(self):
        z, self.noise_multiplier = self.noise_multiplier, self.noise_multiplier / 2
        try:
            noise(self)
        finally:
            self.noise_multiplier = z  # the accountant still records z

    monkeypatch.setattr(StreamDPOptimizer, "add_noise", halved)
    config = load_config(DEMO, [INLINE, "dp.target_epsilon=2", 'dp.accountant="prv"'])
    broken = audited(config, tmp_path, "halved", threat="updates", canaries=1000, seeds=20)
    assert broken["fdp"]["claim_rejected"], broken
    assert broken["epsilon_lower_bound"] > broken["claimed_epsilon"], broken
