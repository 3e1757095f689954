"""Every shipped DP config reports an epsilon within 1% of an independent computation.

The same mechanism and adjacency, computed by another route: Google's dp_accounting built
directly from DpEvents (RDP for DP-SGD's Opacus numbers, PLD for DP-FedAvg, compared with fedlab's
per-round PLD self-composition and its own numpy PRV accountant), and for distributed DP the
Gaussian limit of the Skellam mechanism (noise sqrt(mu) over the rounded sensitivity D2) in
dp_accounting's RDP. The planned final epsilon is what a full run reports (the run tests check
that runs report these numbers).
"""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from opacus.accountants import RDPAccountant

from fedlab.algorithms.runs import central_settings, secure_settings
from fedlab.core.config import load_config
from fedlab.data.federated import build_federated_data
from fedlab.privacy.accountants import RepeatedEventAccountant
from fedlab.privacy.events import GaussianEvent
from fedlab.privacy.skellam import SkellamAccountant
from fedlab.training.accounting import epsilon_from_history
from fedlab.training.client_runtime import dp_spec, optim_spec
from fedlab.training.local import poisson_plan

SIMULATIONS = Path(__file__).resolve().parents[2] / "simulations"


def shipped(mode):
    configs = [load_config(path) for path in sorted(SIMULATIONS.glob("*.toml"))]
    return [c for c in configs if c.dp.mode == mode]


def sampled_gaussian(q, z, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps
    )


def epsilon_after_rounds(event, *, rounds, delta, accountant):
    """The epsilon a DP-FedAvg run reports after ``rounds`` releases of ``event``."""
    spent = RepeatedEventAccountant(event, accountant=accountant)
    for _ in range(rounds):
        spent.compose(event)
    return spent.epsilon(delta=delta)


def test_every_shipped_dp_mode_is_covered():
    assert {m for m in ("dpsgd", "central", "distributed") if shipped(m)} == {
        "dpsgd",
        "central",
        "distributed",
    }


@pytest.mark.parametrize("config", shipped("dpsgd"), ids=lambda c: c.run.name)
def test_dpsgd_client_epsilons_match_dp_accounting_rdp(config):
    fed = build_federated_data(config.data, seed=config.run.seed)
    for cid in range(fed.num_clients):
        n = fed.client_size(cid)
        spec = dp_spec(config, n)
        q, steps = poisson_plan(n, optim_spec(config))
        total = steps * config.run.rounds
        ours = epsilon_from_history(
            [GaussianEvent(noise_multiplier=spec.noise_multiplier, sample_rate=q, steps=total)],
            delta=config.dp.delta, accountant=spec.accountant,
        )  # fmt: skip
        reference = rdp_privacy_accountant.RdpAccountant(orders=RDPAccountant.DEFAULT_ALPHAS)
        reference.compose(sampled_gaussian(q, spec.noise_multiplier, total))
        assert ours == pytest.approx(reference.get_epsilon(config.dp.delta), rel=0.01)
        assert ours <= config.dp.target_epsilon


@pytest.mark.parametrize("config", shipped("central"), ids=lambda c: c.run.name)
def test_central_epsilon_matches_dp_accounting_pld_and_fedlab_prv(config):
    settings = central_settings(config, num_clients=config.data.num_clients)
    rounds, delta = config.run.rounds, config.dp.delta
    ours = epsilon_after_rounds(settings.round_event(), rounds=rounds, delta=delta, accountant="pld")
    direct = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    direct.compose(sampled_gaussian(settings.sample_rate, settings.noise_multiplier, rounds))
    prv = epsilon_after_rounds(settings.round_event(), rounds=rounds, delta=delta, accountant="prv")
    assert ours == pytest.approx(direct.get_epsilon(delta), rel=0.01)
    assert ours == pytest.approx(prv, rel=0.01)
    assert ours <= config.dp.target_epsilon


@pytest.mark.parametrize("config", shipped("distributed"), ids=lambda c: c.run.name)
def test_distributed_epsilons_match_their_gaussian_limit_in_dp_accounting(config):
    dim = 650  # the shipped distributed config trains logreg on digits: 64 x 10 + 10
    settings = secure_settings(config, num_clients=config.data.num_clients, dim=dim)
    params, rounds, delta = settings.ddp, config.run.rounds, config.dp.delta
    for name, event in settings.round_events().items():
        accountant = SkellamAccountant()
        for _ in range(rounds):
            accountant.compose(event)
        ours = accountant.epsilon(delta=delta)
        # Skellam noise of variance mu (unscaled) on a shift of at most D2: Gaussian z = sqrt(mu) / D2.
        z = math.sqrt(event.num_survivors * params.local_stddev**2) / params.l2_sensitivity
        reference = rdp_privacy_accountant.RdpAccountant(orders=list(range(2, 257)))
        reference.compose(sampled_gaussian(event.sample_rate, z, rounds))
        assert ours == pytest.approx(reference.get_epsilon(delta), rel=0.01), name
        assert ours <= config.dp.target_epsilon
