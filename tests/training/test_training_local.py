import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from training_helpers import BACKWARD_HOOK_WARNING, blobs, dp_accounting_rdp_epsilon, dpsgd, sgd

from fedlab.core.config import TrainSection
from fedlab.privacy.events import GaussianEvent
from fedlab.training import (
    DpSgdSpec,
    LocalTrainer,
    OptimSpec,
    build_model,
    evaluate,
    get_weights,
    poisson_plan,
    set_weights,
)

pytestmark = pytest.mark.filterwarnings(BACKWARD_HOOK_WARNING)

CPU = torch.device("cpu")


def logreg(features=10, classes=3, seed=0):
    return build_model("logreg", feature_shape=(features,), num_classes=classes, seed=seed)


def trainer_for(x, y, *, optim, dp, model=None, seed=1):
    model = model if model is not None else logreg(x.shape[1], int(y.max()) + 1)
    return LocalTrainer(model=model, x=x, y=y, optim=optim, dp=dp, device=CPU, seed=seed)


def run_rounds(trainer, weights, rounds, history=()):
    """FedAvg with a single client: apply each round's delta to the global weights."""
    result = None
    for r in range(rounds):
        result = trainer.train_round(weights, history=history, round_seed=100 + r)
        weights = [w + d for w, d in zip(weights, result.update.arrays, strict=True)]
        history = result.history
    return result, weights


def batch_sizes_seen(model):
    """Record the batch size of every forward pass through the plain model."""
    sizes = []
    model.register_forward_pre_hook(lambda _module, args: sizes.append(args[0].shape[0]))
    return sizes


# --- accounting -----------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_is_dp_accountings_over_the_true_history(accountant):
    x, y = blobs(120)
    optim = sgd(batch_size=20, local_epochs=2)  # q = 1/6, 6 Poisson steps per epoch
    trainer = trainer_for(x, y, optim=optim, dp=dpsgd(z=1.1, accountant=accountant))
    rounds = 3 if accountant == "rdp" else 2
    result, _ = run_rounds(trainer, get_weights(trainer.model), rounds)

    expected = (GaussianEvent(noise_multiplier=1.1, sample_rate=20 / 120, steps=rounds * 2 * 6),)
    assert result.history == expected
    assert trainer.epsilon(result.history) == result.epsilon
    if accountant == "rdp":  # the same RDP orders, computed by Google's dp_accounting
        assert result.epsilon == pytest.approx(dp_accounting_rdp_epsilon(expected, 1e-5), rel=0.01)
    else:  # Opacus' PRV is an estimate of the tight epsilon: dp_accounting's PLD
        pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
        sampled = dp_accounting.PoissonSampledDpEvent(20 / 120, dp_accounting.GaussianDpEvent(1.1))
        pld.compose(dp_accounting.SelfComposedDpEvent(sampled, rounds * 12))
        assert result.epsilon == pytest.approx(pld.get_epsilon(1e-5), rel=0.02)


def test_history_accumulates_and_the_wrapped_model_is_reused():
    x, y = blobs(60)
    model = logreg()
    trainer = trainer_for(x, y, optim=sgd(batch_size=15), dp=dpsgd(), model=model)
    wrapped = trainer.model
    assert wrapped is not model  # Opacus' GradSampleModule around it
    weights = get_weights(model)

    first = trainer.train_round(weights, round_seed=1)
    second = trainer.train_round(weights, history=first.history, round_seed=2)

    assert first.steps == second.steps == 4
    assert [s.steps for s in first.history] == [4]
    assert [s.steps for s in second.history] == [8]
    assert second.epsilon > first.epsilon
    assert trainer.model is wrapped
    # the caller's module is the one trained, in place, and evaluates like the wrapper
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(model), get_weights(wrapped), strict=True))
    assert evaluate(wrapped, x, y) == evaluate(model, x, y)


def test_a_carried_history_is_kept_and_extended():
    x, y = blobs(60)
    trainer = trainer_for(x, y, optim=sgd(batch_size=15), dp=dpsgd(z=1.1))
    earlier = (GaussianEvent(noise_multiplier=2.0, sample_rate=0.5, steps=7),)
    result = trainer.train_round(get_weights(trainer.model), history=earlier, round_seed=0)
    assert result.history == (*earlier, GaussianEvent(noise_multiplier=1.1, sample_rate=0.25, steps=4))


def test_steps_follow_opacus_poisson_epochs_not_rounding():
    x, y = blobs(70)
    optim = sgd(batch_size=20, local_epochs=2)  # 1/q = 3.5: Opacus' int(1/q) = 3 steps per epoch
    trainer = trainer_for(x, y, optim=optim, dp=dpsgd())
    result = trainer.train_round(get_weights(trainer.model), round_seed=0)
    assert poisson_plan(70, optim) == (20 / 70, 6)
    assert result.steps == trainer.steps_per_round == 6
    assert result.sample_rate == 20 / 70
    assert result.history[0].steps == 6


def test_zero_noise_is_reported_as_infinite_epsilon():
    x, y = blobs(40)
    trainer = trainer_for(x, y, optim=sgd(batch_size=10), dp=dpsgd(z=0.0))
    result = trainer.train_round(get_weights(trainer.model), round_seed=0)
    assert result.epsilon == math.inf and result.private


# --- weights and deltas -----------------------------------------------------------


@pytest.mark.parametrize("dp", [None, dpsgd()], ids=["plain", "dp"])
def test_received_weights_are_loaded_and_the_delta_is_against_them(dp):
    x, y = blobs(64)
    trainer = trainer_for(x, y, optim=sgd(lr=0.5, batch_size=16), dp=dp, model=logreg(seed=0))
    received = get_weights(logreg(seed=1))

    result = trainer.train_round(received, round_seed=3)
    local = get_weights(trainer.model)
    for r, d, w in zip(received, result.update.arrays, local, strict=True):
        assert d.dtype == np.float32
        np.testing.assert_allclose(r + d, w, atol=1e-6)
    assert result.update.l2_norm() > 1e-3
    assert result.update.num_examples == 64 and result.update.weight == 64.0


@pytest.mark.parametrize("dp", [None, dpsgd(z=1.0)], ids=["plain", "dp"])
def test_a_vanishing_learning_rate_gives_a_vanishing_delta(dp):
    x, y = blobs(64)
    trainer = trainer_for(x, y, optim=sgd(lr=1e-10, batch_size=16), dp=dp, model=logreg(seed=0))
    received = get_weights(logreg(seed=1))
    result = trainer.train_round(received, round_seed=3)
    assert result.update.l2_norm() < 1e-6
    for r, w in zip(received, get_weights(trainer.model), strict=True):
        np.testing.assert_allclose(w, r, atol=1e-6)  # the received weights, not the model's own


def test_received_weights_of_the_wrong_shape_are_rejected():
    x, y = blobs(32)
    trainer = trainer_for(x, y, optim=sgd(), dp=dpsgd())
    with pytest.raises(ValueError, match=r"'1\.weight'"):
        trainer.train_round(get_weights(logreg(features=11)), round_seed=0)


# --- DP-SGD clipping -------------------------------------------------------------


def clipping_setup(z):
    """One Poisson step (n=40, expected batch b=30) where every per-sample gradient is
    identical and far above the clip C: the clipped sum is then exactly B*C, so the bound
    ||delta|| <= lr * C * B / b is tight (B = realised batch size, Binomial(40, 0.75))."""
    n, b, lr, clip = 40, 30, 0.3, 0.5
    x = np.full((n, 10), 100.0, dtype=np.float32)
    y = np.zeros(n, dtype=np.int64)
    model = logreg()
    sizes = batch_sizes_seen(model)
    trainer = trainer_for(x, y, optim=sgd(lr=lr, batch_size=b), dp=dpsgd(z=z, clip=clip), model=model)
    assert trainer.steps_per_round == 1
    return trainer, sizes, lr * clip / b


def test_one_clipped_step_moves_at_most_lr_times_clip_times_batch_over_expected_batch():
    trainer, sizes, lr_clip_over_b = clipping_setup(z=0.0)
    start = get_weights(trainer.model)
    above_expected = 0
    for seed in range(6):
        sizes.clear()
        norm = trainer.train_round(start, round_seed=seed).update.l2_norm()
        (batch,) = sizes
        bound = lr_clip_over_b * batch
        assert norm <= bound * (1 + 1e-6)
        assert norm >= bound * 0.999  # aligned gradients: the bound is attained
        if batch > 30:
            above_expected += 1
            assert norm > lr_clip_over_b * 30  # so "lr * C" alone is not a bound under Poisson sampling
    assert above_expected > 0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_with_noise_the_step_is_not_bounded_by_clipping():
    trainer, sizes, lr_clip_over_b = clipping_setup(z=20.0)
    start = get_weights(trainer.model)
    for seed in range(3):
        sizes.clear()
        norm = trainer.train_round(start, round_seed=seed).update.l2_norm()
        assert norm > 2 * lr_clip_over_b * sizes[0]


def test_empty_poisson_batches_are_taken_as_noisy_steps():
    x, y = blobs(20)
    model = logreg()
    sizes = batch_sizes_seen(model)
    trainer = trainer_for(x, y, optim=sgd(batch_size=1), dp=dpsgd(z=1.0), model=model)  # q = 0.05
    result = trainer.train_round(get_weights(model), round_seed=0)
    assert 0 in sizes and len(sizes) == 20
    assert result.steps == 20 and result.history[0].steps == 20
    assert all(np.isfinite(a).all() for a in result.update.arrays)
    assert np.isfinite(result.loss)


# --- reproducibility ----------------------------------------------------------------


@pytest.mark.parametrize(
    "optim",
    [
        sgd(batch_size=8, momentum=0.9),
        OptimSpec(optimizer="adam", lr=0.01, momentum=0.0, local_epochs=1, batch_size=8),
    ],
    ids=["sgd-momentum", "adam"],
)
def test_same_round_seed_same_result_different_seed_different_noise(optim):
    x, y = blobs(48)

    def fresh():
        return trainer_for(x, y, optim=optim, dp=dpsgd(z=1.0), model=logreg(), seed=1)

    trainer = fresh()
    start = get_weights(trainer.model)
    a = trainer.train_round(start, round_seed=5)
    again = trainer.train_round(start, round_seed=5)  # optimizer state and generators reset
    other_trainer = fresh().train_round(start, round_seed=5)
    different = trainer.train_round(start, round_seed=6)
    other_client = trainer_for(x, y, optim=optim, dp=dpsgd(z=1.0), model=logreg(), seed=2).train_round(
        start, round_seed=5
    )

    for same in (again, other_trainer):
        assert all(np.array_equal(p, q) for p, q in zip(a.update.arrays, same.update.arrays, strict=True))
        assert same.loss == a.loss
    for other in (different, other_client):
        assert not np.array_equal(a.update.arrays[0], other.update.arrays[0])


# --- without DP ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_plain_training_learns_a_separable_problem(kind):
    x, y = blobs(300, seed=4)
    model = build_model(kind, feature_shape=(10,), num_classes=3, hidden=16, seed=0)
    trainer = trainer_for(x[:240], y[:240], optim=sgd(lr=0.1, batch_size=16), dp=None, model=model)
    result, weights = run_rounds(trainer, get_weights(model), rounds=4)

    assert result.steps == 15 and result.history == () and result.epsilon == 0.0 and not result.private
    assert result.noise_multiplier == 0.0 and result.sample_rate == 0.0
    set_weights(model, weights)
    loss, accuracy = evaluate(model, x[240:], y[240:])
    assert accuracy >= 0.95 and loss < 0.3


def test_evaluate_on_a_tiny_known_case():
    model = build_model("logreg", feature_shape=(2,), num_classes=2)
    set_weights(model, [np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32)])  # logits = x
    x = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]], dtype=np.float32)
    y = np.array([0, 1, 1], dtype=np.int64)
    expected_loss = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-3)) + math.log1p(math.exp(1))) / 3

    loss, accuracy = evaluate(model, x, y, batch_size=2)

    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert accuracy == pytest.approx(2 / 3)
    assert model.training  # mode restored


# --- specs and validation -----------------------------------------------------------


def test_specs_from_config():
    optim = OptimSpec.from_config(TrainSection(batch_size=8, lr=0.2, local_epochs=3))
    assert (optim.batch_size, optim.lr, optim.local_epochs, optim.optimizer) == (8, 0.2, 3, "sgd")


def test_float_dp_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        DpSgdSpec(1.0, 1.0, 1e-5, "rdp")  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": -0.1},
        {"max_grad_norm": 0.0},
        {"delta": 0.0},
        {"accountant": "gdp"},
    ],
)
def test_dp_spec_validation(kwargs):
    args = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "rdp"} | kwargs
    with pytest.raises(ValueError):
        DpSgdSpec(**args)


def test_trainer_rejects_misuse():
    x, y = blobs(20)
    with pytest.raises(ValueError, match="batch_size"):
        trainer_for(x, y, optim=sgd(batch_size=21), dp=dpsgd())
    plain = trainer_for(x, y, optim=sgd(), dp=None)
    with pytest.raises(ValueError, match="without DP"):
        plain.train_round(
            get_weights(plain.model),
            history=(GaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1),),
            round_seed=0,
        )
    with pytest.raises(ValueError, match="round_seed"):
        plain.train_round(get_weights(plain.model), round_seed=-1)
    private = trainer_for(x, y, optim=sgd(), dp=dpsgd())
    with pytest.raises(ValueError, match="plain module"):
        trainer_for(x, y, optim=sgd(), dp=dpsgd(), model=private.model)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (np.full((4, 3), np.nan, dtype=np.float32), np.zeros(4, dtype=np.int64)),
        (np.zeros((4, 3), dtype=np.float32), np.zeros(4, dtype=np.float32)),
        (np.zeros((4, 3), dtype=np.float32), np.zeros(5, dtype=np.int64)),
        (np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64)),
        (np.zeros((4, 3), dtype=np.float32), -np.ones(4, dtype=np.int64)),
    ],
)
def test_bad_data_is_rejected(x, y):
    with pytest.raises(ValueError):
        LocalTrainer(model=logreg(3, 2), x=x, y=y, optim=sgd(), dp=None, device=CPU, seed=0)


# --- secret randomness (deployment) ---------------------------------------------


def test_a_secret_round_adds_noise_of_std_z_c_over_b_that_no_seed_reproduces():
    # q = 1 (batch = n): both rounds clip and sum the same gradients, so their updates differ by
    # lr * (noise_1 - noise_2) / B per coordinate, std lr * sqrt(2) * z * C / B.
    x, y = blobs(40, features=30, classes=5)
    z, clip, lr = 2.0, 0.5, 1.0
    trainer = trainer_for(x, y, optim=sgd(lr=lr, batch_size=40), dp=dpsgd(z=z, clip=clip))
    start = get_weights(trainer.model)
    one = trainer.train_round(start, secret=bytes(range(32)))
    again = trainer.train_round(start, secret=bytes(range(32)))
    other = trainer.train_round(start, secret=bytes(range(1, 33)))
    flat = [np.concatenate([a.ravel() for a in r.update.arrays]) for r in (one, again, other)]
    np.testing.assert_array_equal(flat[0], flat[1])  # the secret alone decides every draw
    gap = flat[0] - flat[2]
    expected = lr * math.sqrt(2.0) * z * clip / 40
    assert gap.size == 30 * 5 + 5
    assert np.std(gap) == pytest.approx(expected, rel=0.15)
    assert abs(np.mean(gap)) < 4 * expected / math.sqrt(gap.size)
    assert one.history == again.history and one.epsilon == again.epsilon  # accounting is unchanged
    seeded = [trainer.train_round(start, round_seed=s).update.arrays for s in range(20)]
    for arrays in seeded:
        assert not np.allclose(np.concatenate([a.ravel() for a in arrays]), flat[0], atol=1e-6)


def test_a_round_takes_exactly_one_source_of_randomness():
    x, y = blobs(40)
    trainer = trainer_for(x, y, optim=sgd(batch_size=10), dp=dpsgd())
    start = get_weights(trainer.model)
    with pytest.raises(ValueError, match="exactly one"):
        trainer.train_round(start)
    with pytest.raises(ValueError, match="exactly one"):
        trainer.train_round(start, round_seed=1, secret=bytes(32))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        trainer.train_round(start, secret=bytes(16))
