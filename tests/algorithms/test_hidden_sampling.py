"""F4: under user-level DP, who takes part must not be predictable from the config.

Amplification by sampling (the q in the accountant) holds only if the adversary cannot tell
which clients a round sampled. The adversary here holds ``config.json``: the run seed, q and the
population. In deployment (``secure_noise``) the server draws its cohorts from a secret stream,
so replaying the seeded sampler from the config must not give the real cohorts.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedlab.algorithms.federation import RoundPlan
from fedlab.algorithms.runs import run_configured
from fedlab.algorithms.sampling import sample_poisson
from fedlab.core.config import config_from_dict
from fedlab.core.reports import RoundReplies, TrainReport
from fedlab.core.update import Update

POPULATION = [str(i) for i in range(40)]
ROUNDS = 6


class RecordingTransport:
    """Clients that send a zero update; remembers every cohort the server drew."""

    def __init__(self) -> None:
        self.cohorts: list[tuple[str, ...]] = []

    def available_clients(self) -> list[str]:
        return list(POPULATION)

    def train(self, plan: RoundPlan, weights) -> RoundReplies:
        self.cohorts.append(plan.client_ids)
        zero = Update(arrays=tuple(np.zeros_like(w) for w in weights), num_examples=0, weight=1.0)
        reports = tuple(
            TrainReport(
                client_id=c, update=zero, train_loss=float("nan"), epsilon=float("inf"),
                noise_multiplier=0.0, sample_rate=1.0, steps=0,
            )
            for c in plan.client_ids
        )  # fmt: skip
        return RoundReplies(reports=reports)


class NullRecorder:
    def start(self) -> None:
        pass

    def release_round(self, *args, **kwargs):
        return None


def config():
    return config_from_dict(
        {
            "run": {"seed": 5, "rounds": ROUNDS},
            "dp": {"mode": "central", "noise_multiplier": 1.0, "clip_norm": 1.0, "delta": 1e-3},
            "server": {"fraction_train": 0.3},
        }
    )


def replayed_cohorts(cfg):
    """What the adversary holding config.json computes: the seeded simulation sampler."""
    rng = np.random.default_rng([cfg.run.seed, 1])
    return [tuple(sample_poisson(POPULATION, rate=cfg.server.fraction_train, rng=rng)) for _ in range(ROUNDS)]


def run(cfg, *, secure):
    transport = RecordingTransport()
    run_configured(
        cfg, transport=transport, recorder=NullRecorder(), initial_weights=[np.zeros(3, dtype=np.float32)],
        num_clients=len(POPULATION), secure_noise=secure,
    )  # fmt: skip
    return transport.cohorts


def test_simulation_cohorts_are_reproducible_from_the_config():
    cfg = config()
    assert run(cfg, secure=False) == replayed_cohorts(cfg) == run(cfg, secure=False)


def test_deployment_cohorts_cannot_be_replayed_from_the_config():
    cfg = config()
    actual = run(cfg, secure=True)
    guessed = replayed_cohorts(cfg)
    assert len(actual) == ROUNDS
    assert actual != guessed, "the deployed server's cohorts follow from the run seed"
    # Not a fixed secret either: two deployments draw different cohorts.
    assert actual != run(cfg, secure=True)
    # Still Poisson(q): the mean cohort size is q * N.
    sizes = [len(c) for _ in range(5) for c in run(cfg, secure=True)]
    assert np.mean(sizes) == pytest.approx(0.3 * len(POPULATION), rel=0.25)
