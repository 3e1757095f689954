"""The LSTM and Transformer: Opacus accepts them, their per-sample gradients are the real ones."""

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
from fedlab.training.models import model_for
from fedlab.training.sequence_models import CausalSelfAttention

pytestmark = pytest.mark.filterwarnings(BACKWARD_HOOK_WARNING)

SEQUENCE_KINDS = ("lstm", "transformer")
VOCAB = 11
CONTEXT = 6


def token_model(kind, *, layers=2, seed=0):
    return build_model(
        kind,
        feature_shape=(CONTEXT,),
        num_classes=VOCAB,
        hidden=8,
        seed=seed,
        vocab=VOCAB,
        layers=layers,
        heads=2,
    )


def tokens(n, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.integers(0, VOCAB, (n, CONTEXT)), dtype=torch.float32), torch.tensor(
        rng.integers(0, VOCAB, n)
    )


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
@pytest.mark.parametrize("shape", [(CONTEXT,), (5, 3), (1, 8, 8)])
def test_opacus_validator_accepts_sequence_models_on_tokens_and_features(kind, shape):
    vocab = VOCAB if shape == (CONTEXT,) else 0
    model = build_model(kind, feature_shape=shape, num_classes=4, hidden=8, vocab=vocab, layers=2, heads=2)
    assert ModuleValidator.validate(model, strict=True) == []
    x = torch.zeros(3, *shape)
    assert tuple(model(x).shape) == (3, 4)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_per_sample_gradients_equal_microbatches_of_one(kind):
    """Opacus' per-sample gradients (hooks) against one backward pass per example (plain autograd)."""
    model = token_model(kind)
    x, y = tokens(5)
    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(x), y, reduction="sum").backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    per_sample = {n: p.grad_sample.detach().clone() for n, p in model.named_parameters()}
    wrapped.zero_grad()
    reference = token_model(kind)  # the same weights: the same seed
    for i in range(len(y)):
        reference.zero_grad()
        F.cross_entropy(reference(x[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        for name, param in reference.named_parameters():
            torch.testing.assert_close(per_sample[name][i], param.grad, atol=1e-5, rtol=1e-4)
    assert len(names) == len(per_sample) > 4
    # not vacuous: the examples' gradients differ
    assert not torch.allclose(per_sample[names[0]][0], per_sample[names[0]][1])


def test_attention_is_causal():
    attention = CausalSelfAttention(8, heads=2)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    changed[:, 3] += 1.0
    before, after = attention(x), attention(changed)
    torch.testing.assert_close(before[:, :3], after[:, :3])
    assert not torch.allclose(before[:, 3:], after[:, 3:])


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_an_empty_poisson_batch_takes_a_step(kind):
    """DP-SGD's Poisson batches can be empty; the sequence models forward and backward them."""
    model = token_model(kind, layers=1)
    x, y = tokens(40)
    trainer = LocalTrainer(
        model=model,
        x=x.numpy(),
        y=y.numpy(),
        optim=sgd(lr=0.1, batch_size=1),
        dp=dpsgd(z=1.0),
        device=torch.device("cpu"),
        seed=3,
    )
    result = trainer.train_round(get_weights(model), round_seed=0)
    # sample rate 1/40 over 40 steps: some batches are empty (P = (39/40)^40 ~ 0.36 each)
    assert result.steps == 40
    assert all(np.isfinite(d).all() for d in result.update.arrays)
    assert result.epsilon > 0


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_the_run_config_builds_token_models_for_text_only(kind):
    text = config_from_dict({"model": {"kind": kind, "hidden": 8, "heads": 2}, "data": {"dataset": "stdlib"}})
    assert type(model_for(text, feature_shape=(16,), num_classes=256).embed).__name__ == "Embedding"
    digits = config_from_dict({"model": {"kind": kind, "hidden": 8, "heads": 2}})
    model = model_for(digits, feature_shape=(1, 8, 8), num_classes=10)
    assert not any(isinstance(m, torch.nn.Embedding) and m.num_embeddings == 256 for m in model.modules())


def test_a_transformer_width_that_the_heads_do_not_divide_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.hidden: must be a multiple of model.heads \(4\); got 10"):
        config_from_dict({"model": {"kind": "transformer", "hidden": 10}})
    config_from_dict({"model": {"kind": "lstm", "hidden": 10}})  # heads are the Transformer's only


def test_token_inputs_must_be_one_sequence():
    with pytest.raises(ValueError, match="token inputs"):
        build_model("lstm", feature_shape=(2, 3), num_classes=4, vocab=5)


@pytest.mark.parametrize("kind", SEQUENCE_KINDS)
def test_the_cohort_trainer_leaves_sequence_models_to_the_sequential_one(kind):
    from fedlab.sim.trainer import resolve_trainer

    model = token_model(kind)
    auto = config_from_dict({"simulation": {"trainer": "auto"}})
    assert resolve_trainer(auto, model).simulation.trainer == "sequential"
    with pytest.raises(ConfigError, match=r"simulation\.trainer: the cohort trainer cannot train this run"):
        resolve_trainer(config_from_dict({"simulation": {"trainer": "cohort"}}), model)
