"""Server optimizers (Reddi et al. 2021): known answers and properties, and resuming from their state."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.algorithms.fedavg import apply_delta
from fedlab.algorithms.server_optimizer import ServerOptimizer
from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError
from fedlab.core.server_config import ServerOptimizerSettings


def run(settings: ServerOptimizerSettings, deltas: list[np.ndarray], start: float = 0.0) -> np.ndarray:
    opt = ServerOptimizer(settings)
    weights = [np.full(deltas[0].shape, start, dtype=np.float32)]
    for d in deltas:
        weights = opt.step(weights, [d])
    return weights[0].astype(np.float64)


def test_plain_fedavg_is_the_model_plus_the_delta_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(3, 4)).astype(np.float32)]
    d = [rng.normal(size=(3, 4))]
    assert np.array_equal(ServerOptimizer(ServerOptimizerSettings()).step(w, d)[0], apply_delta(w, d)[0])


def test_fedavg_with_a_server_learning_rate_scales_the_step() -> None:
    out = run(ServerOptimizerSettings("fedavg", lr=0.25), [np.array([4.0, -8.0])])
    np.testing.assert_allclose(out, [1.0, -2.0])


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_fedavgm_under_a_constant_delta_moves_by_the_geometric_sum(beta: float) -> None:
    k, d = 6, np.array([0.1, -0.3])
    out = run(ServerOptimizerSettings("fedavgm", lr=0.5, momentum=beta), [d] * k)
    # m_j = d (1 - beta^j) / (1 - beta); the model moves by lr * sum_j m_j.
    total = sum((1 - beta**j) / (1 - beta) for j in range(1, k + 1))
    np.testing.assert_allclose(out, 0.5 * total * d, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_steps_do_not_depend_on_the_scale_of_the_delta(kind: str) -> None:
    """The step is lr * m / sqrt(v) per coordinate: deltas 1000 times larger change nothing (|d| >> tau)."""
    rng = np.random.default_rng(1)
    deltas = [rng.normal(size=5) for _ in range(4)]
    settings = ServerOptimizerSettings(kind, lr=0.01, tau=1e-9)
    small = run(settings, deltas)
    large = run(settings, [1000.0 * d for d in deltas])
    np.testing.assert_allclose(small, large, rtol=1e-5)


def test_the_first_adam_step_is_lr_times_the_sign_scaled_by_the_bias_of_the_moments() -> None:
    """From zero moments: m = (1 - b1) d, v ~ (1 - b2) d^2: the step is lr (1 - b1) / sqrt(1 - b2) sign(d)."""
    d = np.array([3.0, -0.02, 50.0])
    out = run(ServerOptimizerSettings("fedadam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-9), [d])
    np.testing.assert_allclose(out, 0.1 * 0.1 / np.sqrt(0.01) * np.sign(d), rtol=1e-4)


def test_adagrad_under_a_constant_delta_takes_shrinking_steps() -> None:
    d = np.array([1.0])
    settings = ServerOptimizerSettings("fedadagrad", lr=1.0, beta1=0.0, tau=1e-9)
    positions = [run(settings, [d] * k)[0] for k in range(1, 6)]
    steps = np.diff([0.0, *positions])
    # v_k = k d^2, m_k = d: step k is 1 / sqrt(k).
    np.testing.assert_allclose(steps, [1 / np.sqrt(k) for k in range(1, 6)], rtol=1e-5)


def test_yogi_grows_its_second_moment_additively_then_stays_near_d_squared() -> None:
    """Yogi: v - (1 - b2) d^2 sign(v - d^2): +0.1 d^2 per round while below d^2, then within 0.1 d^2 of it."""
    opt = ServerOptimizer(ServerOptimizerSettings("fedyogi", lr=0.01, beta2=0.9, tau=1e-3))
    w = [np.zeros(2, np.float32)]
    d2 = np.array([4.0, 0.25])
    seen = []
    for _ in range(40):
        w = opt.step(w, [np.sqrt(d2)])
        seen.append(opt.state_arrays()[1][0])
    np.testing.assert_allclose(seen[4], 1e-6 + 5 * 0.1 * d2)  # five additive steps, still below d^2
    assert all((v >= 0).all() for v in seen)
    assert all((np.abs(v - d2) <= 0.1 * d2 + 1e-12).all() for v in seen[12:])


@pytest.mark.parametrize("kind", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_an_optimizer_restored_from_its_state_goes_on_as_the_uninterrupted_one(kind: str) -> None:
    rng = np.random.default_rng(2)
    deltas = [[rng.normal(size=(2, 3)), rng.normal(size=2)] for _ in range(6)]
    settings = ServerOptimizerSettings(kind, lr=0.1)
    whole = ServerOptimizer(settings)
    w: list[np.ndarray] = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]
    for d in deltas:
        w = whole.step(w, d)
    first = ServerOptimizer(settings)
    cut: list[np.ndarray] = [np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]
    for d in deltas[:3]:
        cut = first.step(cut, d)
    second = ServerOptimizer(settings)
    second.restore(first.state())
    for d in deltas[3:]:
        cut = second.step(cut, d)
    assert all(np.array_equal(a, b) for a, b in zip(w, cut, strict=True))


def test_another_optimizers_state_or_a_malformed_one_is_refused() -> None:
    adam = ServerOptimizer(ServerOptimizerSettings("fedadam"))
    adam.step([np.zeros(1, np.float32)], [np.ones(1)])
    with pytest.raises(ValueError, match="fedadam"):
        ServerOptimizer(ServerOptimizerSettings("fedyogi")).restore(adam.state())
    with pytest.raises(ValueError, match="malformed"):
        ServerOptimizer(ServerOptimizerSettings("fedadam")).restore(
            {"kind": "fedadam", "m": ["@@"], "v": None}
        )


@pytest.mark.parametrize(
    ("server", "match"),
    [
        ({"optimizer": "sgd"}, "server.optimizer"),
        ({"lr": 0.0}, "server.lr"),
        ({"beta2": 1.0}, "server.beta2"),
        ({"momentum": -0.1}, "server.momentum"),
        ({"tau": float("inf")}, "server.tau"),
    ],
)
def test_bad_server_optimizer_keys_are_config_errors(server: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"run": {"name": "x"}, "data": {"dataset": "digits"}, "server": server})
