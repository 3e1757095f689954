"""F2: distributed DP's reported epsilon against the chi-square energy distinguisher.

Under add/remove (participation) adjacency an absent client adds no noise share: without
correction the released sums of a round with and without the client differ in variance over
every coordinate, not only in mean, and the Skellam bound (which assumes the same noise in both)
does not cover it. The adversary here knows every other input, so the residual (released sum
minus the other inputs) is the target's input plus the noise. Its energy over T rounds and all
coordinates is a scaled chi-square in each world; the best threshold test on it gives an
epsilon lower bound: ln((P_in(S) - delta) / P_out(S)) over sets S = {E > tau} and {E < tau}.
The variances are measured on the real client encoder and server decoder, not assumed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from fedlab.algorithms.runs import secure_settings
from fedlab.core.config import load_config
from fedlab.privacy.skellam import SkellamAccountant, decode_sum, encode_client, reduce_mod

REPO = Path(__file__).resolve().parents[2]
DELTA = 1e-5
TRIALS = 240  # released rounds measured per world: 240 x 650 residual values


def shipped_settings():
    config = load_config(REPO / "simulations" / "digits-secagg-ddp.toml")
    # digits logreg: 64 x 10 weights + 10 biases = 650 parameters, 40 clients, q = 1.
    return config, secure_settings(config, num_clients=config.data.num_clients, dim=650)


def reported_epsilon(settings, rounds):
    accountant = SkellamAccountant()
    for _ in range(rounds):
        accountant.compose(settings.round_event())
    return accountant.epsilon(delta=DELTA)


def release(total, included, params, seed, rng):
    """What leaves the server for a round whose sum holds ``included`` inputs."""
    del included, rng
    return decode_sum(total, params, seed=seed)


def residual_variance(params, survivors, rng):
    """Variance per released coordinate when ``survivors`` clients (inputs 0, known) are summed."""
    residuals = []
    for trial in range(TRIALS):
        seed = 1000 + trial
        encodings = [
            encode_client(np.zeros(params.dim), params, seed=seed, rng=rng).values for _ in range(survivors)
        ]
        total = reduce_mod(np.sum(encodings, axis=0), bits=params.bits)
        residuals.append(release(total, survivors, params, seed, rng))
    return float(np.var(np.concatenate(residuals)))


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
    var_in = residual_variance(params, survivors, rng)  # the target took part: its noise share too
    var_out = residual_variance(params, survivors - 1, rng)  # the target is absent
    coords = rounds * params.dim  # the released model: d values per round
    bound = energy_lower_bound(var_in, var_out, coords)
    reported = reported_epsilon(settings, rounds)
    assert bound <= reported, (
        f"the energy distinguisher proves epsilon >= {bound:.2f} (variance ratio {var_in / var_out:.4f}) "
        f"but {reported:.4f} is reported"
    )
