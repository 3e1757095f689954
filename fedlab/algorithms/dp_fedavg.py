"""User-level DP-FedAvg (McMahan et al. 2018) with optional adaptive clipping (Andrew et al. 2021).

Each round: Poisson-sample clients with probability q; each sampled client clips its
delta to the round's clip norm C before sending it; the server checks every received
norm (an update over C is rejected with a logged reason, not trusted), sums the
clipped deltas with uniform weight 1, adds Gaussian noise of standard deviation z*C
once to the sum, and divides by the fixed denominator q*N (the expected cohort size,
never the realised one). One client's presence changes the sum by at most C, which is
the sensitivity the accountant assumes: the release is a Poisson-subsampled Gaussian
mechanism with noise multiplier z, composed once per round.

Under adaptive clipping each client also reports whether its norm was within C; the
server privately estimates the unclipped fraction with noise sigma_b and moves C
geometrically toward the target quantile. The round's two releases (updates with
z_delta, counts with 2*sigma_b) compose to exactly one Gaussian with multiplier z, so
the accountant still sees one event per round. Clients send the indicator b_i, never their
norm; ``fraction_clipped`` in the metrics is 1 - b, the noised estimate.

Adjacency and adversary: add/remove one client (its whole data), against everyone who sees
the released models but not who took part. What this stops: inference about whether any one
client took part, from the released models (up to epsilon, delta), provided the cohort is
drawn from a stream nobody else can predict (``sample_rng``: secret in deployment, seeded by
the run seed in ``fedlab simulate``) and the run directory does not record participation.
What it does not stop: the server itself, which sees every clipped update in clear (use
secure aggregation and distributed DP against it), nor a server that skips the noise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedlab.algorithms.federation import ClientTransport, RoundPlan, RoundRecorder, round_seed
from fedlab.algorithms.resume import LoopStart, restore_stream, stream_state
from fedlab.algorithms.sampling import sample_poisson
from fedlab.algorithms.server_optimizer import optimizer_state, resumed_optimizer
from fedlab.algorithms.validation import UpdateRules, screen
from fedlab.core.checkpoint import Checkpoint
from fedlab.core.reports import TrainReport
from fedlab.core.server_config import MAX_EXAMPLES, ServerOptimizerSettings
from fedlab.privacy.accountants import RepeatedEventAccountant
from fedlab.privacy.adaptive_clipping import (
    AdaptiveClipState,
    next_clip_state,
    noisy_unclipped_fraction,
    split_noise_multiplier,
)
from fedlab.privacy.events import (
    ANNOUNCED_NOISE_MULTIPLIER,
    ANNOUNCED_ROUNDS,
    ANNOUNCED_SAMPLE_RATE,
    GaussianEvent,
)
from fedlab.privacy.ledger import FederationSpend
from fedlab.privacy.mechanisms import GaussianMechanism, clipped_sum
from fedlab.privacy.secure_random import RandomStream

LOG = logging.getLogger("fedlab.dp_fedavg")
MECHANISM = "dp-fedavg"


@dataclass(frozen=True, kw_only=True)
class DpFedAvgSettings:
    """A DP-FedAvg run.

    Attributes:
        rounds: Planned rounds.
        sample_rate: q, each client's probability of being sampled in a round.
        num_clients: N, the population the denominator q*N is computed over.
        noise_multiplier: z, the round's noise multiplier as accounted.
        clip_norm: C, the (initial) clip norm.
        delta: The run's delta.
        accountant: ``pld``, ``prv`` or ``rdp``.
        seed: Run seed (sampling; noise comes from the generator passed in).
        max_epsilon: Stop before a round that would raise epsilon above this.
        adaptive: Adaptive clipping settings, or None for a fixed clip norm.
        max_examples: The largest example count a report may claim (a larger one is rejected).
    """

    rounds: int
    sample_rate: float
    num_clients: int
    noise_multiplier: float
    clip_norm: float
    delta: float
    accountant: str
    seed: int
    max_epsilon: float | None = None
    adaptive: AdaptiveClipState | None = None
    max_examples: int = MAX_EXAMPLES
    optimizer: ServerOptimizerSettings = field(default_factory=ServerOptimizerSettings)

    @property
    def denominator(self) -> float:
        """The fixed denominator q*N: the expected cohort size."""
        return self.sample_rate * self.num_clients

    def round_event(self) -> GaussianEvent:
        """One round's release, as the accountant sees it."""
        return GaussianEvent(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=1)

    def update_noise_multiplier(self) -> float:
        """The noise multiplier on the updates: z, or z_delta > z under adaptive clipping."""
        if self.adaptive is None:
            return self.noise_multiplier
        return split_noise_multiplier(
            total_noise_multiplier=self.noise_multiplier, count_noise_std=self.adaptive.count_noise_std
        )


@dataclass(frozen=True)
class DpFedAvgOutcome:
    """How a DP-FedAvg run ended."""

    weights: list[np.ndarray]
    rounds_completed: int
    epsilon: float
    stopped_because: str


def _indicators(reports: Sequence[TrainReport], round_num: int) -> list[float]:
    """The clients' clip indicators b_i; a malformed one is dropped (it would change the sensitivity)."""
    kept = []
    for r in reports:
        if r.clip_indicator in (-0.5, 0.5):
            kept.append(float(r.clip_indicator))
        else:
            LOG.warning("round %d: client %s sent no valid clip indicator", round_num, r.client_id)
    return kept


def noisy_mean_delta(
    reports: Sequence[TrainReport],
    *,
    clip_norm: float,
    noise_multiplier: float,
    denominator: float,
    shapes: Sequence[tuple[int, ...]],
    rng: RandomStream,
) -> list[np.ndarray]:
    """The round's release: the clipped deltas summed with weight 1, noised once, over ``denominator``.

    Each delta is clipped to ``clip_norm``, the sum gets Gaussian noise of standard deviation
    ``noise_multiplier * clip_norm`` drawn from ``rng``, and the result is divided by the fixed
    denominator (q*N). No reports release noise alone.

    Example:
        >>> from fedlab.core.update import Update
        >>> from fedlab.privacy.secure_random import SecureRandom
        >>> def report(x):
        ...     update = Update((np.array([x, 0.0]),), 1)
        ...     return TrainReport("c", update, float("nan"), float("inf"), 0.0, 1.0, 1)
        >>> out = noisy_mean_delta([report(3.0), report(-0.5)], clip_norm=1.0, noise_multiplier=1e-9,
        ...                        denominator=2.0, shapes=[(2,)], rng=SecureRandom())
        >>> (np.round(out[0], 6) + 0.0).tolist()  # + 0.0 turns a noisy -0.0 into 0.0
        [0.25, 0.0]
    """
    mechanism = GaussianMechanism(clip_norm=clip_norm, noise_multiplier=noise_multiplier)
    total, _ = clipped_sum([r.update for r in reports], mechanism, shapes=list(shapes))
    return mechanism.add_noise(total, denominator=denominator, rng=rng)


def run_dp_fedavg(
    *,
    transport: ClientTransport,
    recorder: RoundRecorder,
    initial_weights: Sequence[np.ndarray],
    settings: DpFedAvgSettings,
    noise_rng: RandomStream,
    sample_rng: RandomStream,
    resume: Checkpoint | None = None,
) -> DpFedAvgOutcome:
    """Run user-level DP-FedAvg; stop early, cleanly, if the next round would exceed the budget.

    Epsilon is computed once per round, on the server, for the whole federation, and
    committed to the ledger (through the recorder) before the round's model is released.

    Args:
        transport: Carries the model to clients and their clipped deltas back.
        recorder: Commits spending, then releases each round's model.
        initial_weights: The starting global model.
        settings: The run's DP-FedAvg settings.
        noise_rng: The stream all server noise comes from (deployment: a secret
            :class:`~fedlab.privacy.secure_random.SecureRandom`).
        sample_rng: The stream each round's Poisson cohort is drawn from (deployment: secret,
            so that who took part cannot be predicted from the config; amplification by
            sampling assumes it).
        resume: Continue after this checkpoint's round: its weights, clip norm and generator
            states; the accountant composes one round event per round already released.

    Returns:
        The final weights, rounds completed, epsilon spent and why the run stopped.
    """
    start = LoopStart.of(resume, initial_weights)
    weights = start.weights
    shapes = [tuple(w.shape) for w in weights]
    adaptive = settings.adaptive
    clip = adaptive.clip_norm if adaptive else settings.clip_norm
    if adaptive is not None and start.done:
        adaptive = replace(adaptive, clip_norm=start.positive("clip"))
        clip = adaptive.clip_norm
    restore_stream(sample_rng, start.value("sampling"))
    restore_stream(noise_rng, start.value("noise"))
    optimizer = resumed_optimizer(settings.optimizer, start)
    round_event = settings.round_event()
    spent = RepeatedEventAccountant(round_event, accountant=settings.accountant)
    for _ in range(start.done):  # every round released one event
        spent.compose(round_event)
    epsilon = spent.epsilon(delta=settings.delta) if start.done else 0.0
    recorder.start()
    for round_num in range(start.first, settings.rounds + 1):
        # Every earlier round released one event; would this one take epsilon over the budget?
        maximum = settings.max_epsilon
        if maximum is not None and spent.would_exceed(round_event, max_epsilon=maximum, delta=settings.delta):
            next_epsilon = spent.epsilon_after(round_event, delta=settings.delta)
            reason = (
                f"privacy budget: round {round_num} would raise epsilon to {next_epsilon:.4g} "
                f"> max_epsilon {maximum:g}"
            )
            return DpFedAvgOutcome(weights, round_num - 1, epsilon, reason)
        started = time.perf_counter()
        sampled = sample_poisson(transport.available_clients(), rate=settings.sample_rate, rng=sample_rng)
        plan = RoundPlan(
            round_num=round_num,
            client_ids=tuple(sampled),
            seed=round_seed(settings.seed, round_num),
            # The round's public DP settings: a device's budget charges the run's event from them.
            instructions={
                "clip-norm": clip,
                ANNOUNCED_NOISE_MULTIPLIER: settings.noise_multiplier,
                ANNOUNCED_SAMPLE_RATE: settings.sample_rate,
                ANNOUNCED_ROUNDS: float(settings.rounds),
            },
        )
        replies = transport.train(plan, weights)
        rules = UpdateRules.for_model(weights, max_norm=clip, max_examples=settings.max_examples)
        kept, rejected = screen(replies.reports, rules, round_num)
        delta_mean = noisy_mean_delta(
            kept,
            clip_norm=clip,
            noise_multiplier=settings.update_noise_multiplier(),
            denominator=settings.denominator,
            shapes=shapes,
            rng=noise_rng,
        )
        weights = optimizer.step(weights, delta_mean)
        spent.compose(round_event)
        epsilon = spent.epsilon(delta=settings.delta)
        round_clip = clip
        private: dict[str, float] = {}
        if adaptive is not None:
            unclipped = noisy_unclipped_fraction(
                _indicators(kept, round_num), expected_clients=settings.denominator,
                count_noise_std=adaptive.count_noise_std, rng=noise_rng,
            )  # fmt: skip
            adaptive = next_clip_state(adaptive, unclipped)
            clip = adaptive.clip_norm
            private["fraction_clipped"] = min(1.0, max(0.0, 1.0 - unclipped))  # the noised estimate
        recorder.release_round(
            round_num,
            weights,
            kept,
            seconds=time.perf_counter() - started,
            extra={
                "failures": len(replies.failures),
                "rejected": sum(rejected.values()),
                **rejected,
                "clip_norm": round_clip,
                **private,
                "noise_std": settings.update_noise_multiplier() * round_clip / settings.denominator,
                **replies.extra,
            },
            federation=[
                FederationSpend(
                    mechanism=MECHANISM,
                    noise_multiplier=settings.noise_multiplier,
                    sample_rate=settings.sample_rate,
                    steps=1,
                    epsilon=epsilon,
                )
            ],
            state={
                "sampling": stream_state(sample_rng),
                "noise": stream_state(noise_rng),
                "clip": clip,
                **optimizer_state(optimizer),
            },
        )
    return DpFedAvgOutcome(weights, settings.rounds, epsilon, "completed all rounds")
