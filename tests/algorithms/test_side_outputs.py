"""F7: what leaves a client, or reaches the run directory, without noise under DP.

The adversary reads the client's reply (the server) or the run directory. Under DP a client sends
no training loss (computed from its data without noise); under user-level DP no example or step
count and, under adaptive clipping, only the indicator b_i (never its norm); the run directory's
``fraction_clipped`` is the noised estimate the clip moves by, not the server's re-clip count
(always 0 because clients clip first).
"""

from __future__ import annotations

import json
import math

import numpy as np

from fedlab.core.config import config_from_dict
from fedlab.core.metrics import SilentObserver
from fedlab.data.federated import build_federated_data
from fedlab.sim.inline import simulate_inline
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.models import build_model, get_weights


def config(dp, **extra):
    raw = {
        "run": {"name": "side", "seed": 3, "rounds": 3},
        "data": {"dataset": "digits", "num_clients": 20, "min_partition_size": 20},
        "model": {"kind": "logreg"},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.5},
        "dp": dp,
        "server": {"fraction_train": 0.5},
        "simulation": {"backend": "inline", "workers": 0},
    }
    raw.update(extra)
    return config_from_dict(raw)


def one_report(cfg, **train):
    fed = build_federated_data(cfg.data, seed=cfg.run.seed)
    data = ClientData("2", fed.client(2), fed.num_classes, fed.feature_shape)
    model = build_model("logreg", feature_shape=fed.feature_shape, num_classes=fed.num_classes, seed=0)
    report, _ = ClientRuntime().train(cfg, data, get_weights(model), history=(), round_seed=1, **train)
    return report


def test_a_dp_client_sends_no_training_loss_and_user_level_clients_no_counts():
    plain = one_report(config({"mode": "none"}))
    assert math.isfinite(plain.train_loss) and plain.update.num_examples > 0 and plain.steps > 0
    dpsgd = one_report(config({"mode": "dpsgd", "noise_multiplier": 1.0}))
    assert math.isnan(dpsgd.train_loss)
    assert dpsgd.update.num_examples > 0  # FedAvg's weight: treated as public under DP-SGD
    central = one_report(config({"mode": "central", "noise_multiplier": 1.0, "clip_norm": 0.1}))
    assert math.isnan(central.train_loss)
    assert (central.update.num_examples, central.steps, central.clip_indicator) == (0, 0, None)
    adaptive = one_report(
        config({"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1e-4, "adaptive_clipping": True}),
        clip_norm=1e-4,
    )
    assert adaptive.clip_indicator == -0.5  # its norm was above the clip: the sign, never the norm


def test_fraction_clipped_is_the_noised_estimate_that_moves_the_clip(tmp_path):
    # A clip far below every update: all clients are clipped, the adaptive bound grows.
    cfg = config(
        {
            "mode": "central", "noise_multiplier": 1.0, "delta": 1e-3, "clip_norm": 1e-4,
            "adaptive_clipping": True, "clip_learning_rate": 0.2, "clipped_count_stddev": 1.0,
        },
        run={"name": "side", "seed": 3, "rounds": 6},
    )  # fmt: skip
    simulate_inline(cfg, tmp_path / "run", SilentObserver())
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    clips = [r["clip_norm"] for r in rows]
    fractions = [r["fraction_clipped"] for r in rows]
    assert clips == sorted(clips) and clips[-1] > clips[0]  # the bound grew every round
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert np.mean(fractions) > 0.7, fractions  # all were clipped (the estimate's noise std is 0.1)
    assert all(r["train_loss"] is None for r in rows)
