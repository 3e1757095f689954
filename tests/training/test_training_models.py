import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from training_helpers import BACKWARD_HOOK_WARNING, dpsgd, sgd

from fedlab.core.choices import MODELS as MODEL_KINDS
from fedlab.training import LocalTrainer, build_model, get_weights, set_weights

pytestmark = pytest.mark.filterwarnings(BACKWARD_HOOK_WARNING)

IMAGE = (1, 8, 8)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_opacus_accepts_every_model_unchanged(kind):
    model = build_model(kind, feature_shape=IMAGE, num_classes=10, hidden=16)
    assert ModuleValidator.validate(model, strict=True) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_model_trains_under_dp_sgd(kind, digits_like):
    x, y = digits_like
    model = build_model(kind, feature_shape=IMAGE, num_classes=10, hidden=16, seed=3)
    start = get_weights(model)
    trainer = LocalTrainer(
        model=model,
        x=x,
        y=y,
        optim=sgd(lr=0.5, batch_size=32),
        dp=dpsgd(z=0.5),
        device=torch.device("cpu"),
        seed=1,
    )
    result = trainer.train_round(start, round_seed=0)
    assert result.steps == 4
    assert all(np.isfinite(d).all() for d in result.update.arrays)
    assert result.update.l2_norm() > 0.0
    assert np.isfinite(result.loss)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_init_is_a_function_of_the_seed(kind):
    def weights(seed):
        return get_weights(build_model(kind, feature_shape=IMAGE, num_classes=10, hidden=16, seed=seed))

    a, b, c = weights(5), weights(5), weights(6)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert any(not np.array_equal(u, v) for u, v in zip(a, c, strict=True))


def test_building_a_model_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    build_model("cnn", feature_shape=IMAGE, num_classes=10, seed=1)
    assert torch.equal(before, torch.get_rng_state())


def test_init_scale_matches_pytorch_defaults():
    model = build_model("logreg", feature_shape=(100,), num_classes=50, seed=0)
    weight, bias = get_weights(model)
    bound = 1.0 / np.sqrt(100)  # kaiming_uniform(a=sqrt(5)) and bias bounds are both 1/sqrt(fan_in)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.9 * bound
    assert np.abs(bias).max() <= bound


def test_mlp_and_cnn_honour_hidden_and_classes():
    mlp = get_weights(build_model("mlp", feature_shape=(3, 5), num_classes=4, hidden=7))
    assert [w.shape for w in mlp] == [(7, 15), (7,), (7, 7), (7,), (4, 7), (4,)]
    cnn = get_weights(build_model("cnn", feature_shape=(3, 28, 28), num_classes=4, hidden=7))
    assert cnn[-2].shape == (4, 7) and cnn[0].shape[1] == 3


@pytest.mark.parametrize("shape", [(64,), (8, 8), (1, 2, 8), (1, 8, 8, 1)])
def test_cnn_rejects_non_image_shapes(shape):
    with pytest.raises(ValueError, match="cnn needs image"):
        build_model("cnn", feature_shape=shape, num_classes=10)


def test_unknown_kind_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("resnet", feature_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("logreg", feature_shape=(4,), num_classes=1)


def test_weights_round_trip_in_place():
    model = build_model("mlp", feature_shape=(6,), num_classes=3, hidden=5, seed=0)
    params_before = [id(p) for p in model.parameters()]
    target = get_weights(build_model("mlp", feature_shape=(6,), num_classes=3, hidden=5, seed=9))
    set_weights(model, target)
    assert [id(p) for p in model.parameters()] == params_before
    got = get_weights(model)
    assert all(g.dtype == np.float32 and np.array_equal(g, t) for g, t in zip(got, target, strict=True))
    got[0][...] = 123.0  # copies, not views
    assert not np.array_equal(get_weights(model)[0], got[0])


def test_set_weights_names_the_mismatched_tensor():
    model = build_model("mlp", feature_shape=(6,), num_classes=3, hidden=5)
    arrays = get_weights(model)
    arrays[2] = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'3\.weight'.*\(5, 5\).*\(4, 4\)"):
        set_weights(model, arrays)
    with pytest.raises(ValueError, match="expected 6 arrays"):
        set_weights(model, arrays[:-1])
