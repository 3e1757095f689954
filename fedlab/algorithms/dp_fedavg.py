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
from collections.abc import Iterable, Sequence
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
    ANNOUNCED_CLIP_NORM,
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
        return _update_noise_multiplier(self.noise_multiplier, self.adaptive)


def _update_noise_multiplier(noise_multiplier: float, adaptive: AdaptiveClipState | None) -> float:
    if adaptive is None:
        return noise_multiplier
    return split_noise_multiplier(
        total_noise_multiplier=noise_multiplier, count_noise_std=adaptive.count_noise_std
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


@dataclass(frozen=True)
class DpRelease:
    """One released DP-FedAvg round.

    Attributes:
        delta: The noisy mean of the clipped deltas, over the fixed denominator.
        epsilon: The federation's epsilon with this round composed.
        clip_norm: The clip norm this round's updates were held to.
        noise_std: The noise's standard deviation on each coordinate of ``delta``.
        fraction_clipped: Under adaptive clipping the noised fraction of clipped updates, clamped
            to [0, 1]; None otherwise.
    """

    delta: list[np.ndarray]
    epsilon: float
    clip_norm: float
    noise_std: float
    fraction_clipped: float | None = None


class DpFedAvgServer:
    """The server's side of user-level DP-FedAvg, one round at a time, for any round loop.

    fedlab's round loop (:func:`run_dp_fedavg`: every simulator and fedlab's own ServerApp) and
    the Flower strategy wrapper :class:`~fedlab.flower.dp_strategy.FedlabDpFedAvg` both run their
    rounds through this object: the budget check before a round, the Poisson cohort, the public
    settings the round announces, and the release (clipped sum, noise once, fixed denominator,
    the adaptive clip step, one accountant event per round). The guarantee is the module's.

    Args:
        noise_multiplier: z, the round's noise multiplier as accounted.
        clip_norm: C, the (initial) clip norm; under adaptive clipping ``adaptive.clip_norm`` is used.
        sample_rate: q, each client's probability of being sampled in a round.
        denominator: The fixed denominator q*N.
        delta: The delta epsilon is reported at.
        noise_rng: The stream all noise comes from (deployment: secret).
        sample_rng: The stream the cohorts come from (deployment: secret).
        accountant: ``"pld"``, ``"prv"`` or ``"rdp"``.
        max_epsilon: A round that would take epsilon above this is refused, or None.
        adaptive: Adaptive clipping state, or None for a fixed clip norm.
        released: Rounds already released (a resumed run): their events are composed first.

    Raises:
        ValueError: If adaptive clipping's count noise leaves no budget for the updates.

    Example:
        >>> from fedlab.core.update import Update
        >>> def report(x):
        ...     return TrainReport("c", Update((np.array([x, 0.0]),), 1), np.nan, np.inf, 0.0, 1.0, 1)
        >>> server = DpFedAvgServer(noise_multiplier=1.0, clip_norm=1.0, sample_rate=1.0, denominator=2.0,
        ...                         delta=1e-5, noise_rng=np.random.default_rng(0),
        ...                         sample_rng=np.random.default_rng(1), max_epsilon=5.0)
        >>> server.sample(["b", "a"]), server.announced(rounds=3)["clipping_norm"]
        (['a', 'b'], 1.0)
        >>> release = server.release([report(3.0), report(-0.5)], shapes=[(2,)], round_num=1)
        >>> release.noise_std, round(release.epsilon, 2)
        (0.5, 4.38)
        >>> server.refusal(2)
        'round 2 would raise epsilon to 6.573 > max_epsilon 5'
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        denominator: float,
        delta: float,
        noise_rng: RandomStream,
        sample_rng: RandomStream,
        accountant: str = "pld",
        max_epsilon: float | None = None,
        adaptive: AdaptiveClipState | None = None,
        released: int = 0,
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.sample_rate = sample_rate
        self.denominator = denominator
        self.delta = delta
        self.max_epsilon = max_epsilon
        self.adaptive = adaptive
        self.clip_norm = adaptive.clip_norm if adaptive is not None else clip_norm
        self._noise_rng = noise_rng
        self._sample_rng = sample_rng
        self._event = GaussianEvent(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=1)
        self._spent = RepeatedEventAccountant(self._event, accountant=accountant)
        for _ in range(released):  # every released round was one event
            self._spent.compose(self._event)
        self.epsilon = self._spent.epsilon(delta=delta) if released else 0.0
        self.update_noise_multiplier()  # an infeasible adaptive split fails here, before any round

    def update_noise_multiplier(self) -> float:
        """The noise multiplier on the updates: z, or z_delta > z under adaptive clipping."""
        return _update_noise_multiplier(self.noise_multiplier, self.adaptive)

    def refusal(self, round_num: int) -> str | None:
        """Why round ``round_num`` may not run (it would take epsilon over ``max_epsilon``), or None."""
        if self.max_epsilon is None or not self._spent.would_exceed(
            self._event, max_epsilon=self.max_epsilon, delta=self.delta
        ):
            return None
        after = self._spent.epsilon_after(self._event, delta=self.delta)
        return f"round {round_num} would raise epsilon to {after:.4g} > max_epsilon {self.max_epsilon:g}"

    def sample(self, candidates: Iterable[str]) -> list[str]:
        """The round's cohort: each candidate independently with probability q, in canonical order."""
        return sample_poisson(candidates, rate=self.sample_rate, rng=self._sample_rng)

    def announced(self, *, rounds: int | None) -> dict[str, float]:
        """The round's public settings for the train config: C, z, q and (when known) the run's T."""
        public = {
            ANNOUNCED_CLIP_NORM: self.clip_norm,
            ANNOUNCED_NOISE_MULTIPLIER: self.noise_multiplier,
            ANNOUNCED_SAMPLE_RATE: self.sample_rate,
        }
        return public if rounds is None else {**public, ANNOUNCED_ROUNDS: float(rounds)}

    def release(
        self, kept: Sequence[TrainReport], *, shapes: Sequence[tuple[int, ...]], round_num: int
    ) -> DpRelease:
        """Release the round from the screened reports: noisy mean delta, accounted; then move C.

        Under adaptive clipping the reports' clip indicators are noised too (a missing or malformed
        one is left out and logged) and C moves toward the target quantile for the next round.
        """
        round_clip = self.clip_norm
        noise = self.update_noise_multiplier()
        mean = noisy_mean_delta(
            kept,
            clip_norm=round_clip,
            noise_multiplier=noise,
            denominator=self.denominator,
            shapes=shapes,
            rng=self._noise_rng,
        )
        self._spent.compose(self._event)
        self.epsilon = self._spent.epsilon(delta=self.delta)
        fraction = None
        if self.adaptive is not None:
            unclipped = noisy_unclipped_fraction(
                _indicators(kept, round_num), expected_clients=self.denominator,
                count_noise_std=self.adaptive.count_noise_std, rng=self._noise_rng,
            )  # fmt: skip
            self.adaptive = next_clip_state(self.adaptive, unclipped)
            self.clip_norm = self.adaptive.clip_norm
            fraction = min(1.0, max(0.0, 1.0 - unclipped))
        return DpRelease(mean, self.epsilon, round_clip, noise * round_clip / self.denominator, fraction)


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
    if adaptive is not None and start.done:
        adaptive = replace(adaptive, clip_norm=start.positive("clip"))
    restore_stream(sample_rng, start.value("sampling"))
    restore_stream(noise_rng, start.value("noise"))
    optimizer = resumed_optimizer(settings.optimizer, start)
    server = DpFedAvgServer(
        noise_multiplier=settings.noise_multiplier, clip_norm=settings.clip_norm,
        sample_rate=settings.sample_rate, denominator=settings.denominator, delta=settings.delta,
        noise_rng=noise_rng, sample_rng=sample_rng, accountant=settings.accountant,
        max_epsilon=settings.max_epsilon, adaptive=adaptive, released=start.done,
    )  # fmt: skip
    recorder.start()
    for round_num in range(start.first, settings.rounds + 1):
        refusal = server.refusal(round_num)
        if refusal is not None:
            return DpFedAvgOutcome(weights, round_num - 1, server.epsilon, f"privacy budget: {refusal}")
        started = time.perf_counter()
        plan = RoundPlan(
            round_num=round_num,
            client_ids=tuple(server.sample(transport.available_clients())),
            seed=round_seed(settings.seed, round_num),
            # The round's public DP settings: clients clip to C, a device charges the run's event.
            instructions=server.announced(rounds=settings.rounds),
        )
        replies = transport.train(plan, weights)
        rules = UpdateRules.for_model(weights, max_norm=server.clip_norm, max_examples=settings.max_examples)
        kept, rejected = screen(replies.reports, rules, round_num)
        release = server.release(kept, shapes=shapes, round_num=round_num)
        weights = optimizer.step(weights, release.delta)
        private = {} if release.fraction_clipped is None else {"fraction_clipped": release.fraction_clipped}
        recorder.release_round(
            round_num,
            weights,
            kept,
            seconds=time.perf_counter() - started,
            extra={
                "failures": len(replies.failures),
                "rejected": sum(rejected.values()),
                **rejected,
                "clip_norm": release.clip_norm,
                **private,
                "noise_std": release.noise_std,
                **replies.extra,
            },
            federation=[
                FederationSpend(
                    mechanism=MECHANISM,
                    noise_multiplier=settings.noise_multiplier,
                    sample_rate=settings.sample_rate,
                    steps=1,
                    epsilon=release.epsilon,
                )
            ],
            state={
                "sampling": stream_state(sample_rng),
                "noise": stream_state(noise_rng),
                "clip": server.clip_norm,
                **optimizer_state(optimizer),
            },
        )
    return DpFedAvgOutcome(weights, settings.rounds, server.epsilon, "completed all rounds")
