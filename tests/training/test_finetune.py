"""Checkpoints and LoRA: loading fits or fails clearly, only the adapters train and travel."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from training_helpers import BACKWARD_HOOK_WARNING, dpsgd, sgd

from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError
from fedlab.training import LocalTrainer, build_model, get_weights
from fedlab.training.finetune import add_lora, load_checkpoint
from fedlab.training.models import model_for
from fedlab.training.recorder import save_model

pytestmark = pytest.mark.filterwarnings(BACKWARD_HOOK_WARNING)

VOCAB, CONTEXT = 13, 6


def transformer(seed=0, hidden=8):
    return build_model(
        "transformer", feature_shape=(CONTEXT,), num_classes=VOCAB, hidden=hidden, seed=seed, vocab=VOCAB,
        layers=2, heads=2,
    )  # fmt: skip


def tokens(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (n, CONTEXT)).astype(np.float32), rng.integers(0, VOCAB, n)


def lora_transformer(seed=0):
    return add_lora(transformer(seed), rank=2, generator=torch.Generator().manual_seed(5))


def test_fedlab_npz_and_torch_state_dicts_load_into_a_fresh_model(tmp_path):
    trained, fresh_npz, fresh_pt = transformer(seed=1), transformer(seed=2), transformer(seed=3)
    save_model(tmp_path / "model.npz", get_weights(trained))
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    load_checkpoint(fresh_npz, tmp_path / "model.npz")
    load_checkpoint(fresh_pt, tmp_path / "model.pt")
    for a, b, c in zip(get_weights(trained), get_weights(fresh_npz), get_weights(fresh_pt), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_a_checkpoint_that_does_not_fit_is_one_clear_config_error(tmp_path):
    save_model(tmp_path / "wide.npz", get_weights(transformer(hidden=16)))
    with pytest.raises(
        ConfigError, match=r"model\.init: .* does not fit .* tensor 'embed\.weight' is \(13, 16\) there"
    ):
        load_checkpoint(transformer(), tmp_path / "wide.npz")
    save_model(tmp_path / "short.npz", get_weights(transformer())[:3])
    with pytest.raises(ConfigError, match=r"3 arrays for a model of \d+ tensors"):
        load_checkpoint(transformer(), tmp_path / "short.npz")
    torch.save({"other.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"missing tensors \['blocks"):
        load_checkpoint(transformer(), tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"model\.init: cannot read"):
        load_checkpoint(transformer(), tmp_path / "junk.pt")


def test_lora_starts_at_the_checkpoint_and_only_adapters_are_weights():
    base = transformer(seed=4)
    x, _ = tokens(3)
    before = base(torch.from_numpy(x)).detach()
    adapted = add_lora(base, rank=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adapted(torch.from_numpy(x)), before)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(("down.weight", "up.weight")) for name in trainable)
    assert len(get_weights(adapted)) == len(trainable)
    assert ModuleValidator.validate(adapted, strict=True) == []


def test_lora_per_sample_gradients_equal_microbatches_of_one():
    model = lora_transformer()
    x, y = (torch.from_numpy(a) for a in tokens(4))
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    reference = lora_transformer()
    for i in range(len(y)):
        reference.zero_grad()
        F.cross_entropy(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for name, param in reference.named_parameters():
            if param.requires_grad:
                torch.testing.assert_close(per_sample[name][i], param.grad, atol=1e-5, rtol=1e-4)


def test_dp_sgd_on_lora_moves_only_the_adapters_and_spends_what_full_training_spends():
    x, y = tokens(64)
    full_model, lora_model = (
        transformer(seed=6),
        add_lora(transformer(seed=6), rank=2, generator=torch.Generator().manual_seed(0)),
    )
    frozen = {n: p.detach().clone() for n, p in lora_model.named_parameters() if not p.requires_grad}
    results = []
    for model in (full_model, lora_model):
        trainer = LocalTrainer(
            model=model, x=x, y=y, optim=sgd(lr=0.5, batch_size=16), dp=dpsgd(z=1.0),
            device=torch.device("cpu"), seed=2,
        )  # fmt: skip
        results.append(trainer.train_round(get_weights(model), round_seed=0))
    full, lora = results
    for name, param in lora_model.named_parameters():
        if not param.requires_grad:
            torch.testing.assert_close(param.detach(), frozen[name], rtol=0, atol=0)
    assert len(lora.update.arrays) < len(full.update.arrays)
    assert lora.update.l2_norm() > 0.0
    assert lora.epsilon == full.epsilon and lora.history == full.history  # accounting unchanged


def test_the_transformer_config_sends_at_least_ten_times_fewer_bytes_under_lora():
    raw = {
        "data": {"dataset": "stdlib"},
        "model": {"kind": "transformer", "hidden": 64, "layers": 2, "heads": 4},
    }
    full = model_for(config_from_dict(raw), feature_shape=(32,), num_classes=256)
    lora = model_for(
        config_from_dict({**raw, "train": {"finetune": "lora"}}), feature_shape=(32,), num_classes=256
    )
    full_bytes = sum(w.nbytes for w in get_weights(full))
    lora_bytes = sum(w.nbytes for w in get_weights(lora))
    assert full_bytes >= 10 * lora_bytes


def test_model_init_and_lora_keys_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.init: does not exist"):
        config_from_dict({"model": {"init": str(tmp_path / "missing.npz")}})
    with pytest.raises(ConfigError, match=r"train\.finetune"):
        config_from_dict({"train": {"finetune": "adapters"}})
    with pytest.raises(ConfigError, match=r"train\.lora_rank"):
        config_from_dict({"train": {"lora_rank": 0}})


def test_the_auditors_canary_directions_live_in_the_space_of_a_lora_update():
    from fedlab.training.canaries import canary_directions, make_canaries

    model = lora_transformer()
    canaries = make_canaries(
        feature_shape=(CONTEXT,), coordinates=[0, 2], num_classes=VOCAB, count=3, magnitude=1.0
    )
    directions = canary_directions(model, canaries, first_layer_only=False)
    assert directions.shape == (3, sum(w.size for w in get_weights(model)))
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
