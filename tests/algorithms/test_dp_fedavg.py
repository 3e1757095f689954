"""User-level DP-FedAvg through the real round loop, client runtime and ledger (in-process)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedlab.algorithms.runs import central_settings
from fedlab.algorithms.sampling import sample_poisson
from fedlab.core.config import config_from_dict
from fedlab.core.metrics import SilentObserver
from fedlab.privacy.accountants import epsilon_of
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.ledger import PrivacyLedger
from fedlab.sim.inline import simulate_inline


def central_config(**dp):
    return config_from_dict(
        {
            "run": {"name": "central", "seed": 3, "rounds": dp.pop("rounds", 3)},
            "data": {"dataset": "digits", "num_clients": 20, "min_partition_size": 20},
            "model": {"kind": "logreg"},
            "train": {"local_epochs": 1, "batch_size": 16, "lr": dp.pop("lr", 0.1)},
            "dp": {"mode": "central", "delta": 1e-3, "clip_norm": 0.5, **dp},
            "server": {"fraction_train": 0.5},
            "simulation": {"backend": "inline"},
        }
    )


def weights(path: Path) -> list[np.ndarray]:
    saved = np.load(path)
    return [saved[k] for k in saved.files]


def test_server_noise_has_the_calibrated_standard_deviation(tmp_path):
    # Clients barely move (lr 1e-9), so the change of the global model is the server's noise.
    config = central_config(noise_multiplier=2.0, lr=1e-9, rounds=1)
    start = simulate_inline(
        config.replace(run=config.run.__class__(name="c", seed=3, rounds=1)), tmp_path / "a", SilentObserver()
    )
    assert start["rounds_completed"] == 1
    from fedlab.training.models import build_model, get_weights

    initial = get_weights(build_model("logreg", feature_shape=(1, 8, 8), num_classes=10, seed=3))
    after = weights(tmp_path / "a" / "model.npz")
    noise = np.concatenate([(a - b).ravel() for a, b in zip(after, initial, strict=True)]).astype(np.float64)
    expected_std = 2.0 * 0.5 / (0.5 * 20)  # z * C / (q * N)
    n = noise.size
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], df=n)
    measured = float(np.sum(noise**2))
    assert low <= measured / expected_std**2 <= high, (np.std(noise), expected_std)
    assert abs(float(np.mean(noise))) < 6 * expected_std / np.sqrt(n)


def test_user_level_epsilon_is_committed_per_round_and_matches_an_independent_accountant(tmp_path):
    config = central_config(noise_multiplier=1.2, rounds=3)
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    expected = epsilon_of(
        [GaussianEvent(noise_multiplier=1.2, sample_rate=0.5, steps=3)], delta=1e-3, accountant="pld"
    )
    assert summary["epsilon_user"] == pytest.approx(expected, rel=1e-6)
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        totals = ledger.federation_totals()
        assert ledger.last_round() == 3
    assert len(totals) == 1 and totals[0].mechanism == "dp-fedavg"
    assert totals[0].epsilon == pytest.approx(expected, rel=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epsilon_max"] < rows[1]["epsilon_max"] < rows[2]["epsilon_max"] == pytest.approx(expected)
    assert all(r["clip_norm"] == 0.5 for r in rows)
    # Who took part stays out of the run directory: no counts, no client rows (F4).
    assert all(r["clients"] is None and "rejected" not in r and "sampled" not in r for r in rows)
    assert all(r["train_loss"] is None for r in rows)
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.client_totals() == []
    assert summary["client_epsilons"] == {}


def test_target_epsilon_is_calibrated_and_never_overshot(tmp_path):
    config = central_config(target_epsilon=2.0, rounds=4)
    settings = central_settings(config, num_clients=20)
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    assert summary["epsilon_user"] <= 2.0
    assert settings.noise_multiplier > 0.0


def test_budget_guard_stops_before_the_round_that_would_exceed(tmp_path):
    per_round = [
        epsilon_of(
            [GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=t)], delta=1e-3, accountant="pld"
        )
        for t in (1, 2, 3)
    ]
    budget = (per_round[1] + per_round[2]) / 2  # room for two rounds, not three
    config = central_config(noise_multiplier=1.0, rounds=6, max_epsilon=budget)
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    assert summary["rounds_completed"] == 2
    assert "round 3 would raise epsilon" in summary["stopped_because"]
    assert summary["epsilon_user"] <= budget
    assert (tmp_path / "run" / "model.npz").exists()
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.last_round() == 2
        assert ledger.federation_totals()[0].epsilon == pytest.approx(per_round[1], rel=1e-6)


def test_adaptive_clipping_moves_the_bound_and_keeps_the_budget(tmp_path):
    config = central_config(
        noise_multiplier=1.0, rounds=5, adaptive_clipping=True, clip_norm=0.01, clipped_count_stddev=2.0
    )
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    clips = [r["clip_norm"] for r in rows]
    assert clips[-1] > clips[0], "every update exceeds 0.01, so the bound must grow"
    expected = epsilon_of(
        [GaussianEvent(noise_multiplier=1.0, sample_rate=0.5, steps=5)], delta=1e-3, accountant="pld"
    )
    assert summary["epsilon_user"] == pytest.approx(expected, rel=1e-6), "the count noise is inside z"


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-clip", "adaptive-clip"])
def test_a_client_whose_training_diverges_is_rejected_and_the_run_goes_on(tmp_path, caplog, adaptive):
    # lr 1e38 drives every client's delta to NaN or infinity: nothing to clip on the client, so it
    # goes unclipped and the server's screen rejects it; the run ends normally and commits its rounds.
    extra = {"adaptive_clipping": True, "clipped_count_stddev": 2.0} if adaptive else {}
    config = central_config(noise_multiplier=1.0, rounds=2, lr=1e38, **extra)
    config = config.replace(train=config.train.__class__(local_epochs=5, batch_size=16, lr=1e38))
    summary = simulate_inline(config, tmp_path / "run", SilentObserver())
    assert summary["rounds_completed"] == 2 and summary["stopped_because"] == "completed all rounds"
    assert "(non_finite)" in caplog.text
    with PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite") as ledger:
        assert ledger.last_round() == 2
    assert all(np.isfinite(w).all() for w in weights(tmp_path / "run" / "model.npz"))


def test_poisson_sampling_has_the_right_mean_and_is_seeded():
    ids = [str(i) for i in range(10_000)]
    a = sample_poisson(ids, rate=0.1, rng=np.random.default_rng(0))
    assert a == sample_poisson(ids, rate=0.1, rng=np.random.default_rng(0))
    assert abs(len(a) - 1000) < 5 * np.sqrt(10_000 * 0.1 * 0.9)
