"""F2: distributed DP's reported epsilon against the chi-square energy distinguisher.

Under add/remove (participation) adjacency an absent client adds no noise share: without
correction the released sums of a round with and without the client differ in variance over
every coordinate, not only in mean, and the Skellam bound (which assumes the same noise in both)
does not cover it. The adversary here knows every other input, so the residual (released sum
minus the other inputs) is the target's input plus the noise. Its energy over T rounds and all
coordinates is a scaled chi-square in each world; the best threshold test on it gives an
epsilon lower bound: ln((P_in(S) - delta) / P_out(S)) over sets S = {E > tau} and {E < tau}.
The variances are measured on the real client encoder and server release, not assumed.

The fix (:mod:`fedlab.privacy.skellam_release`): the server tops the noise up to the cohort cap
before it releases a sum, so the released noise no longer depends on who took part; against
the server itself, which knows who took part, the claim is zero-out adjacency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedlab.algorithms.runs import secure_settings
from fedlab.core.config import load_config
from fedlab.privacy.skellam import SkellamAccountant, centre, encode_client, reduce_mod
from fedlab.privacy.skellam_release import RELEASED_VIEW, SERVER_VIEW, released_sum

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5
TRIALS = 240  # released rounds measured per world: 240 x 650 residual values


def shipped_settings():
    config = load_config(REPO / "simulations" / "digits-secagg-ddp.toml")
    # digits logreg: 64 x 10 weights + 10 biases = 650 parameters, 40 clients, q = 1.
    return config, secure_settings(config, num_clients=config.data.num_clients, dim=650)


def reported_epsilons(settings, rounds):
    """Each view's epsilon after ``rounds`` released rounds, as the run loop reports it."""
    epsilons = {}
    for name, event in settings.round_events().items():
        accountant = SkellamAccountant()
        for _ in range(rounds):
            accountant.compose(event)
        epsilons[name] = accountant.epsilon(delta=DELTA)
    return epsilons


def summed(params, survivors, seed, rng, target=None):
    """The modular sum of ``survivors`` encodings: zeros (known inputs), the first one ``target``."""
    inputs = [np.zeros(params.dim) for _ in range(survivors)]
    if target is not None:
        inputs[0] = target
    encodings = [encode_client(x, params, seed=seed, rng=rng).values for x in inputs]
    return reduce_mod(np.sum(encodings, axis=0), bits=params.bits)


def released_variance(params, survivors, rng):
    """Variance per released coordinate when ``survivors`` clients (inputs 0, known) are summed."""
    residuals = []
    for trial in range(TRIALS):
        seed = 1000 + trial
        total = summed(params, survivors, seed, rng)
        residuals.append(released_sum(total, params, num_included=survivors, seed=seed, rng=rng))
    return float(np.var(np.concatenate(residuals)))


def server_view_energy(params, survivors, rng, target=None):
    """Mean squared value per coordinate of the sum the server unmasks (rotated, unscaled, d')."""
    residuals = []
    for trial in range(TRIALS // 4):
        total = summed(params, survivors, 1000 + trial, rng, target)
        residuals.append(centre(total, bits=params.bits) / params.scale)
    return float(np.mean(np.concatenate(residuals) ** 2))


def energy_lower_bound(var_in, var_out, coords, *, shift_energy=0.0, delta=DELTA):
    """Best epsilon lower bound of a threshold test on the residual energy E (see module docstring)."""
    inside = stats.ncx2(coords, shift_energy / var_in) if shift_energy > 0 else stats.chi2(coords)
    outside = stats.chi2(coords)
    lo = min(var_in * inside.ppf(1e-15), var_out * outside.ppf(1e-15))
    hi = max(var_in * inside.isf(1e-15), var_out * outside.isf(1e-15))
    best = 0.0
    for tau in np.linspace(lo, hi, 4001):
        tails = (
            (inside.logsf(tau / var_in), outside.logsf(tau / var_out)),
            (inside.logcdf(tau / var_in), outside.logcdf(tau / var_out)),
        )
        for log_in, log_out in tails:
            for a, b in ((log_in, log_out), (log_out, log_in)):
                if np.exp(a) > delta:
                    best = max(best, float(np.log(np.exp(a) - delta) - b))
    return best


def test_released_models_are_private_under_add_remove_against_the_energy_distinguisher():
    config, settings = shipped_settings()
    params, rounds = settings.ddp, config.run.rounds
    survivors = params.min_survivors
    rng = np.random.default_rng(7)
    var_in = released_variance(params, survivors, rng)  # the target took part: its noise share too
    var_out = released_variance(params, survivors - 1, rng)  # the target is absent
    assert var_in / var_out == pytest.approx(1.0, abs=0.012)  # without the top-up: 28/27 = 1.037
    coords = rounds * params.dim  # the released model: d values per round
    bound = energy_lower_bound(var_in, var_out, coords)
    claimed = reported_epsilons(settings, rounds)
    assert bound <= claimed[RELEASED_VIEW] <= claimed[SERVER_VIEW], (
        f"the energy distinguisher proves epsilon >= {bound:.2f} (variance ratio {var_in / var_out:.4f}) "
        f"but {claimed} is reported"
    )


def test_the_server_view_is_private_under_zero_out_against_the_energy_distinguisher():
    # The server knows who took part. Zero-out: the target's noise share is in the sum either way;
    # its input is a clipped update (norm C) or zero.
    config, settings = shipped_settings()
    params, rounds = settings.ddp, config.run.rounds
    survivors = params.min_survivors
    rng = np.random.default_rng(11)
    target = np.zeros(params.dim)
    target[0] = params.clip
    with_update = server_view_energy(params, survivors, rng, target)
    noise = server_view_energy(params, survivors, rng)  # the same shares, input zero
    assert with_update / noise == pytest.approx(1.0, abs=0.03)  # same noise: only the mean moves
    bound = energy_lower_bound(
        noise, noise, rounds * params.padded_dim, shift_energy=rounds * params.l2_sensitivity**2
    )
    claimed = reported_epsilons(settings, rounds)[SERVER_VIEW]
    assert bound <= claimed, f"energy distinguisher: epsilon >= {bound:.2f}, reported {claimed:.4f}"


def test_the_shipped_config_is_calibrated_against_the_server():
    config, settings = shipped_settings()
    claimed = reported_epsilons(settings, config.run.rounds)
    # q = 1: the server view (28 shares, no amplification) is what the target is calibrated for.
    assert claimed[SERVER_VIEW] <= config.dp.target_epsilon
    assert claimed[SERVER_VIEW] == pytest.approx(config.dp.target_epsilon, rel=0.01)
    assert claimed[RELEASED_VIEW] < claimed[SERVER_VIEW]  # 40 topped-up shares
