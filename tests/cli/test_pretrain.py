"""``fedlab pretrain`` then a private fine-tune from its checkpoint, full or LoRA, and their bad input."""

import json
import math
from pathlib import Path

import pytest

from .test_cli_errors import assert_one_line_error, run_fedlab

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "simulations" / "stdlib-transformer.toml"
SMALL = [
    "data.num_clients=3", "data.text_max_bytes=1500", "data.min_partition_size=32", "model.hidden=16",
    "model.layers=1", "model.heads=2", "train.batch_size=32", "run.rounds=1",
]  # fmt: skip
DPSGD = ['dp.mode="dpsgd"', "dp.target_epsilon=4.0", "dp.max_grad_norm=1.0"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "public.npz"
    result = run_fedlab(
        "pretrain", str(CONFIG), "--out", str(out), "--epochs", "2", *sets(*SMALL), cwd=out.parent
    )
    assert result.returncode == 0, result.stderr
    assert "public clients" in result.stdout and out.is_file()
    return out


def test_fine_tuning_from_pretraining_starts_ahead_and_lora_sends_less(tmp_path, pretrained):
    runs = {}
    for name, extra in {
        "scratch": [],
        "full": [f'model.init="{pretrained}"'],
        "lora": [f'model.init="{pretrained}"', 'train.finetune="lora"', "train.lora_rank=2"],
    }.items():
        result = run_fedlab(
            "simulate", str(CONFIG), "--quiet", "--out", str(tmp_path / name), *sets(*SMALL, *DPSGD, *extra),
            cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[name] = rows(tmp_path / name)[0]
    assert runs["full"]["loss"] < runs["scratch"]["loss"] - 0.5
    assert runs["lora"]["loss"] < runs["scratch"]["loss"] - 0.5
    assert runs["lora"]["update_bytes"] * 3 < runs["full"]["update_bytes"] == runs["scratch"]["update_bytes"]
    assert runs["lora"]["epsilon_max"] == pytest.approx(runs["full"]["epsilon_max"])  # accounting unchanged
    assert all(math.isfinite(r["perplexity"]) for r in runs.values())


def test_a_checkpoint_of_another_shape_is_one_line_and_exit_2(tmp_path, pretrained):
    result = run_fedlab(
        "simulate", str(CONFIG), "--out", str(tmp_path / "run"),
        *sets(*SMALL, "model.hidden=32", f'model.init="{pretrained}"'), cwd=tmp_path,
    )  # fmt: skip
    assert_one_line_error(result, "model.init", "does not fit", "embed.weight")
    assert not (tmp_path / "run").exists()


def test_pretrain_refuses_a_data_set_without_a_public_split_and_an_existing_out(tmp_path, pretrained):
    digits = REPO / "simulations" / "digits.toml"
    assert_one_line_error(
        run_fedlab("pretrain", str(digits), "--out", str(tmp_path / "m.npz"), cwd=tmp_path),
        "needs text or stdlib",
    )
    assert_one_line_error(
        run_fedlab("pretrain", str(CONFIG), "--out", str(pretrained), cwd=tmp_path), "--out", "new .npz"
    )
