"""The LSTM and the Transformer train on the standard library corpus: without DP, DP-SGD, central DP."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedlab.core.config import load_config
from fedlab.core.metrics import SilentObserver
from fedlab.data.federated import build_federated_data
from fedlab.sim.inline import simulate_inline
from fedlab.training.models import get_weights, model_for
from fedlab.training.recorder import save_model

from .processes import run_to_end

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "simulations" / "stdlib-transformer.toml"
SMALL = [
    "data.num_clients=4",
    "data.text_max_bytes=3000",
    "model.hidden=16",
    "model.layers=1",
    "model.heads=2",
]
DP = {
    "dpsgd": ["dp.mode=dpsgd", "dp.target_epsilon=8.0", "dp.max_grad_norm=1.0"],
    "central": ["dp.mode=central", "dp.noise_multiplier=0.8", "dp.clip_norm=0.5"],
}


def run(out: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    summary = simulate_inline(load_config(CONFIG, overrides), out, SilentObserver(), wait_for_workers=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("mode", ["dpsgd", "central"])
def test_sequence_models_train_privately_on_the_stdlib_corpus(tmp_path, kind, mode):
    summary, rows = run(tmp_path / "run", [*SMALL, "run.rounds=2", f'model.kind="{kind}"', *DP[mode]])
    assert [r["round"] for r in rows] == [1, 2]
    assert 0.0 < summary["epsilon_max"] < math.inf
    if mode == "dpsgd":
        assert summary["epsilon_max"] <= 8.0 + 1e-9
    for row in rows:
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
    model = np.load(tmp_path / "run" / "model.npz")
    assert all(np.isfinite(model[k]).all() for k in model.files)


def test_the_transformer_beats_the_most_frequent_byte(tmp_path):
    """Without DP, 4 rounds take next-byte accuracy above always predicting the commonest test byte."""
    summary, rows = run(tmp_path / "run", ["data.num_clients=6", "run.rounds=4"])
    test_labels = build_federated_data(load_config(CONFIG, ["data.num_clients=6"]).data, seed=0).test.y
    baseline = np.bincount(test_labels).max() / len(test_labels)
    assert summary["accuracy"] > baseline + 0.03
    assert rows[-1]["perplexity"] < rows[0]["perplexity"]


@pytest.mark.slow
def test_lora_from_a_checkpoint_gives_the_same_model_inline_and_on_flowers_engine(tmp_path):
    """The Flower ClientApps build the same text model, read the same checkpoint, send only adapters."""
    base = [*SMALL, "data.num_clients=3", "run.rounds=2"]
    checkpoint = tmp_path / "init.npz"
    config = load_config(CONFIG, [*base, "run.seed=5"])
    data = build_federated_data(config.data, seed=5)
    save_model(checkpoint, get_weights(model_for(config, feature_shape=data.feature_shape, num_classes=256)))
    extra = [*base, f'model.init="{checkpoint}"', 'train.finetune="lora"', "train.lora_rank=2"]
    models = {}
    for backend in ("inline", "flower"):
        args = [a for item in [*extra, f'simulation.backend="{backend}"'] for a in ("--set", item)]
        code, output = run_to_end(
            "simulate", str(CONFIG), *args, "--quiet", "--out", str(tmp_path / backend), cwd=tmp_path
        )
        assert code == 0, output
        models[backend] = np.load(tmp_path / backend / "model.npz")
    assert models["inline"].files == models["flower"].files
    for key in models["inline"].files:
        np.testing.assert_allclose(models["inline"][key], models["flower"][key], rtol=1e-5, atol=1e-6)
    full = model_for(load_config(CONFIG, base), feature_shape=(32,), num_classes=256)
    assert len(models["inline"].files) < len(get_weights(full))  # the adapters only
