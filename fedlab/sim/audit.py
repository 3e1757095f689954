"""``fedlab audit``: run a federation with canaries and put a measured epsilon beside the claimed one.

Each of ``seeds`` runs (run seed ``run.seed + s``) inserts ``canaries`` canaries, each with
probability 1/2 from the auditor's generator, trains on the inline simulator, scores every
canary from what the threat sees, and the scores of all runs together give the lower bounds and
Andrew et al.'s estimate (:func:`~fedlab.privacy.auditing.canary_epsilon_estimate`). The headline
bound, where the canaries' mechanism is a history of Gaussian releases (DP-SGD: each canary
client's steps; central: the run's rounds), is the one-run f-DP bound
(:func:`~fedlab.privacy.auditing.fdp_audit`) against those releases with their noise scaled
(its ``claim_rejected``: the run's own trade-off is refuted, for any mechanism); otherwise
(distributed DP) the one-run (epsilon, delta) bound
(:func:`~fedlab.privacy.auditing.one_run_audit`, rigorous for any mechanism), which is always
reported too.

Sample-level DP-SGD (``dpsgd``; canary examples, add/remove one example, claimed: the largest
epsilon of a client holding canaries):

* ``final-model``: a canary's score is minus its loss on the final model;
* ``updates`` (the server without secure aggregation sees each client's update): the sum over
  rounds of how far its client's update moved against the canary's loss gradient;
* ``server-knows-config``: as ``updates``, after removing the DP-SGD noise the auditor rebuilds
  from the run seed, the round seeds and the client id (what a seeded client would have drawn).
  The clients draw secret randomness, as deployed; only plain SGD can be replayed.

User-level DP (canary clients; ``central``: add/remove one client, claimed: the run's epsilon;
``distributed``: zero-out, every canary client takes part and sends its direction or zeros,
claimed: the epsilon against the server, ``skellam-ddp``):

* ``final-model``: the cosine of the final model's change with the canary's direction;
* ``updates`` (every released model): per round, the cosine of the model's change with the
  direction; the maximum over rounds (q < 1) or their sum (q = 1);
* ``server-knows-config`` (central only): as ``updates``, after removing the server noise the
  auditor rebuilds from the run seed; the server draws secret noise, as deployed.

A lower bound above the claimed epsilon means the claim is false (or a one-in-``1/(1-confidence)``
accident). A lower bound below it proves nothing about the claim beyond not refuting it. The
report also gives the threshold attack's Clopper-Pearson bound
(:func:`~fedlab.privacy.auditing.canary_epsilon_lower_bound`), which treats the canaries of a
run as independent trials (exact across runs, an approximation within one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlab.algorithms.federation import round_seed
from fedlab.algorithms.runs import central_settings
from fedlab.core.config import RunConfig
from fedlab.core.errors import ConfigError
from fedlab.core.metrics import RoundObserver
from fedlab.core.reports import TrainReport
from fedlab.data.federated import build_federated_data
from fedlab.data.types import ArrayDataset, FederatedData
from fedlab.privacy.auditing import (
    CanaryBound,
    EventsFamily,
    FdpResult,
    OneRunResult,
    canary_epsilon_estimate,
    canary_epsilon_lower_bound,
    fdp_audit,
    one_run_audit,
)
from fedlab.privacy.events import GaussianEvent
from fedlab.sim.audit_canaries import CanaryClients, CanaryData, random_directions
from fedlab.sim.hooks import InlineHooks
from fedlab.sim.inline import simulate_inline
from fedlab.training.canaries import (
    canary_directions,
    canary_losses,
    make_canaries,
    quiet_coordinates,
    seeded_noise_sum,
)
from fedlab.training.client_runtime import client_seed
from fedlab.training.models import get_weights, model_for, set_weights
from fedlab.training.randomness import round_seeds

THREATS = ("final-model", "updates", "server-knows-config")
ADJACENCY = {
    "dpsgd": "add/remove one example",
    "central": "add/remove one client",
    "distributed": "zero-out one client (it takes part either way)",
}
ObserverFactory = Callable[[int], RoundObserver]
"""Makes the progress observer of run ``s``."""


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """What ``fedlab audit`` was asked for.

    Attributes:
        threat: ``final-model``, ``updates`` or ``server-knows-config``.
        canaries: Canaries per run.
        confidence: Confidence of the lower bound, in (0, 1).
        seeds: Runs (run seeds ``run.seed``, ``+1``, ...); their canaries are pooled.
        magnitude: The non-zero input value of a DP-SGD canary.
    """

    threat: str = "updates"
    canaries: int = 1000
    confidence: float = 0.95
    seeds: int = 1
    magnitude: float = 4.0


@dataclass(frozen=True)
class SeedAudit:
    """One audited run: its canaries' scores and inclusion, and the epsilon it claims."""

    run_dir: Path
    claimed_epsilon: float
    scores: npt.NDArray[np.float64]
    included: npt.NDArray[np.bool_]
    histories: tuple[tuple[GaussianEvent, ...], ...] = ()


@dataclass(frozen=True)
class AuditReport:
    """Claimed epsilon, measured lower bound, estimate and the attack's statistics."""

    mode: str
    threat: str
    adjacency: str
    delta: float
    claimed_epsilon: float
    one_run: OneRunResult
    fdp: FdpResult | None
    threshold: CanaryBound
    estimate: float
    runs: tuple[SeedAudit, ...] = field(default=())

    @property
    def epsilon_lower_bound(self) -> float:
        """The f-DP bound where the releases are Gaussian, else the one-run (epsilon, delta) bound."""
        return self.one_run.epsilon_lower_bound if self.fdp is None else self.fdp.epsilon_lower_bound

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (without the raw scores)."""
        return {
            "mode": self.mode,
            "threat": self.threat,
            "adjacency": self.adjacency,
            "delta": self.delta,
            "claimed_epsilon": self.claimed_epsilon,
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "bound_over_claimed": self.epsilon_lower_bound / self.claimed_epsilon
            if self.claimed_epsilon > 0
            else None,
            "bound": "one-run (epsilon, delta)" if self.fdp is None else "one-run f-DP",
            "tradeoff_rejected": None if self.fdp is None else self.fdp.claim_rejected,
            "guesses": (self.one_run if self.fdp is None else self.fdp).num_guesses,
            "correct": (self.one_run if self.fdp is None else self.fdp).num_correct,
            "epsilon_estimate": self.estimate,
            "one_run": self.one_run.to_dict(),
            "fdp": None if self.fdp is None else self.fdp.to_dict(),
            "threshold_bound": self.threshold.to_dict(),
            "runs": [
                {
                    "run_dir": str(r.run_dir),
                    "claimed_epsilon": r.claimed_epsilon,
                    "canaries": int(r.included.size),
                }
                for r in self.runs
            ],
        }


def check_audit(config: RunConfig, settings: AuditSettings) -> None:
    """Refuse, with one line naming the option, an audit that cannot say anything.

    Raises:
        ConfigError: No DP; an unknown threat; confidence, seeds or canaries out of range; too few
            canaries for a bound; more canaries per client than it has examples; a threat the
            configuration cannot be audited under.
    """
    dp = config.dp
    if not dp.enabled:
        raise ConfigError("dp.mode: 'none' claims no epsilon; there is nothing to audit")
    if settings.threat not in THREATS:
        raise ConfigError(f"--threat: must be one of {', '.join(THREATS)}; got {settings.threat!r}")
    if not 0.0 < settings.confidence < 1.0:
        raise ConfigError(f"--confidence: must be in (0, 1); got {settings.confidence!r}")
    if settings.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1; got {settings.seeds}")
    _check_canary_count(settings, delta=dp.delta)
    if dp.dpsgd:
        _check_room(config, settings)
        if settings.threat != "final-model" and config.secagg.enabled:
            raise ConfigError(
                "--threat: under secure aggregation nobody sees a client's update; use final-model"
            )
        if settings.threat == "server-knows-config" and (
            config.train.optimizer != "sgd" or config.train.momentum != 0.0
        ):
            raise ConfigError("--threat server-knows-config: replaying DP-SGD noise needs train.optimizer = "
                              "'sgd' with train.momentum = 0")  # fmt: skip
        return
    if settings.threat == "server-knows-config" and (not dp.central or dp.adaptive_clipping):
        raise ConfigError("--threat server-knows-config: audits DP-SGD and central DP with a fixed clip norm")


def _check_room(config: RunConfig, settings: AuditSettings) -> None:
    """At most as many canaries per client as the smallest client has examples."""
    base = build_federated_data(config.data, seed=config.run.seed)
    per_client = math.ceil(settings.canaries / base.num_clients)
    smallest = min(base.client_size(i) for i in range(base.num_clients))
    if per_client > smallest:
        raise ConfigError(
            f"--canaries: {per_client} per client, more than the smallest client's {smallest} examples"
        )


def _check_canary_count(settings: AuditSettings, *, delta: float) -> None:
    total = settings.canaries * settings.seeds
    if settings.canaries < 2:
        raise ConfigError(f"--canaries: need at least 2; got {settings.canaries}")
    best = one_run_audit(
        np.arange(total, dtype=np.float64), np.arange(total) >= total // 2, delta=delta,
        confidence=settings.confidence,
    ).epsilon_lower_bound  # fmt: skip
    if best < 0.5:
        raise ConfigError(
            f"--canaries: {total} canaries in all could prove at most epsilon {best:.2f} even if every "
            "guess were right; use more canaries or seeds"
        )


def run_audit(
    config: RunConfig, settings: AuditSettings, out_dir: Path, observers: ObserverFactory
) -> AuditReport:
    """Run the audit (see the module docstring); each run's directory is ``out_dir/seed-S``.

    Raises:
        ConfigError: See :func:`check_audit`, and more canaries per client than it has examples.
    """
    check_audit(config, settings)
    runs = []
    for s in range(settings.seeds):
        seeded = config.replace(run=replace(config.run, seed=config.run.seed + s))
        rng = np.random.default_rng([config.run.seed, s, 0xA0D17])
        audit = _audit_dpsgd if config.dp.dpsgd else _audit_user_level
        runs.append(audit(seeded, settings, out_dir / f"seed-{s}", observers(s), rng))
    scores = np.concatenate([r.scores for r in runs])
    included = np.concatenate([r.included for r in runs])
    delta = config.dp.delta
    result = one_run_audit(scores, included, delta=delta, confidence=settings.confidence)
    histories = [h for r in runs for h in r.histories]
    fdp = None
    if histories and all(r.histories for r in runs):
        family = EventsFamily(histories, delta=delta)
        fdp = fdp_audit(scores, included, family=family, confidence=settings.confidence)
    inserted, held_out = scores[included], scores[~included]
    return AuditReport(
        mode=config.dp.mode,
        threat=settings.threat,
        adjacency=ADJACENCY[config.dp.mode],
        delta=delta,
        claimed_epsilon=max(r.claimed_epsilon for r in runs),
        one_run=result,
        fdp=fdp,
        threshold=canary_epsilon_lower_bound(
            inserted=inserted, held_out=held_out, delta=delta, confidence=settings.confidence
        ),
        estimate=_estimate(inserted, held_out, delta),
        runs=tuple(runs),
    )


def _estimate(inserted: npt.NDArray[np.float64], held_out: npt.NDArray[np.float64], delta: float) -> float:
    """Andrew et al.'s estimate, or NaN when a group's scores do not vary (nothing to fit)."""
    if inserted.size < 2 or held_out.size < 2 or np.std(inserted) == 0 or np.std(held_out) == 0:
        return math.nan
    return canary_epsilon_estimate(inserted=inserted, held_out=held_out, delta=delta)


class _Releases:
    """Keeps every released round's weights and reports."""

    def __init__(self, initial: Sequence[np.ndarray]) -> None:
        self.weights: list[list[np.ndarray]] = [[np.array(w) for w in initial]]
        self.reports: list[tuple[TrainReport, ...]] = []

    def record(self, round_num: int, weights: Sequence[np.ndarray], reports: Sequence[TrainReport]) -> None:
        del round_num
        self.weights.append([np.array(w) for w in weights])
        self.reports.append(tuple(reports))


def _flat(arrays: Sequence[np.ndarray]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _model(config: RunConfig, data: FederatedData, weights: Sequence[np.ndarray] | None = None) -> Any:
    model = model_for(config, feature_shape=data.feature_shape, num_classes=data.num_classes)
    if weights is not None:
        set_weights(model, weights)
    return model


def _run_config(config: RunConfig, threat: str) -> RunConfig:
    """Inline, in this process; deployed clients' secret randomness under ``server-knows-config``."""
    randomness = "secret" if threat == "server-knows-config" else config.simulation.client_randomness
    return config.replace(
        simulation=replace(config.simulation, backend="inline", workers=0, client_randomness=randomness)
    )


def _pool(data: FederatedData, most: int = 50) -> ArrayDataset:
    parts = [data.client(i) for i in range(min(data.num_clients, most))]
    return ArrayDataset(
        np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), data.num_classes
    )


def _audit_dpsgd(
    config: RunConfig,
    settings: AuditSettings,
    run_dir: Path,
    observer: RoundObserver,
    rng: np.random.Generator,
) -> SeedAudit:
    base = build_federated_data(config.data, seed=config.run.seed)
    m, n = settings.canaries, base.num_clients
    owner = np.arange(m, dtype=np.int64) % n
    # Canaries seen together (one client's update; the final model: all) take distinct coordinates and labels.
    slot = np.arange(m) if settings.threat == "final-model" else np.arange(m) // n
    distinct = int(slot.max()) + 1
    dims = math.prod(base.feature_shape)
    coords = quiet_coordinates(_pool(base), min(dims, math.ceil(distinct / base.num_classes)))
    kinds = make_canaries(
        feature_shape=base.feature_shape, coordinates=coords, num_classes=base.num_classes, count=distinct,
        magnitude=settings.magnitude,
    )  # fmt: skip
    canaries = kinds.subset(slot)
    included = rng.random(m) < 0.5
    model = _model(config, base)
    releases = _Releases(get_weights(model))
    summary = simulate_inline(
        _run_config(config, settings.threat), run_dir, observer,
        data=CanaryData(base, canaries, owner, included), hooks=InlineHooks(on_release=releases.record),
    )  # fmt: skip
    if settings.threat == "final-model":
        scores = -canary_losses(_model(config, base, releases.weights[-1]), canaries)
    else:
        scores = _update_scores(config, base, canaries, owner, releases, replay=settings.threat != "updates")
    # The largest epsilon of a client holding canaries (null: no DP noise, infinite); a client that
    # never trained released nothing about its canaries.
    owners = {str(k) for k in owner.tolist()}
    spent = [
        math.inf if v is None else float(v) for k, v in summary["client_epsilons"].items() if k in owners
    ]
    histories: dict[str, list[GaussianEvent]] = {k: [] for k in owners}
    for reports in releases.reports:
        for report in reports:
            if report.client_id in histories and report.noise_multiplier > 0.0:
                histories[report.client_id].append(
                    GaussianEvent(noise_multiplier=report.noise_multiplier, sample_rate=report.sample_rate,
                                  steps=report.steps)
                )  # fmt: skip
    trained = tuple(tuple(h) for h in histories.values() if h)
    return SeedAudit(run_dir, max(spent, default=0.0), scores, included, trained)


def _update_scores(
    config: RunConfig,
    base: FederatedData,
    canaries: Any,
    owner: npt.NDArray[np.int64],
    releases: _Releases,
    *,
    replay: bool,
) -> npt.NDArray[np.float64]:
    """Per canary: how far its client's updates moved against its loss gradient (noise replayed away)."""
    scores = np.zeros(len(canaries))
    for t, reports in enumerate(releases.reports, start=1):
        start = releases.weights[t - 1]
        directions = canary_directions(_model(config, base, start), canaries)
        for report in reports:
            k = int(report.client_id)
            update = _flat(report.update.arrays)
            if replay:
                update += _replayed_noise(config, report, [w.shape for w in start], t)
            mine = owner == k
            scores[mine] -= directions[mine] @ update
    return scores


def _replayed_noise(
    config: RunConfig, report: TrainReport, shapes: Sequence[tuple[int, ...]], round_num: int
) -> npt.NDArray[np.float64]:
    """``lr / B`` times the DP-SGD noise a seeded client would have drawn: what plain SGD subtracted."""
    seed = client_seed(round_seed(config.run.seed, round_num), report.client_id)
    noise_seed = round_seeds(config.run.seed, seed)[1]
    std = report.noise_multiplier * config.dp.max_grad_norm
    total = seeded_noise_sum(shapes, noise_seed=noise_seed, std=std, steps=report.steps)
    return config.train.lr / config.train.batch_size * total


def _audit_user_level(
    config: RunConfig,
    settings: AuditSettings,
    run_dir: Path,
    observer: RoundObserver,
    rng: np.random.Generator,
) -> SeedAudit:
    base = build_federated_data(config.data, seed=config.run.seed)
    initial = get_weights(_model(config, base))
    m, n = settings.canaries, base.num_clients
    directions = random_directions(m, sum(w.size for w in initial), rng)
    included = rng.random(m) < 0.5
    zero_out = config.dp.distributed  # the server sees who takes part
    clients = CanaryClients(
        first_id=n, directions=directions, included=included, shapes=[w.shape for w in initial],
        clip_norm=config.dp.clip_norm, adaptive=config.dp.adaptive_clipping, zero_out=zero_out,
    )  # fmt: skip
    releases = _Releases(initial)
    secure = settings.threat == "server-knows-config"
    summary = simulate_inline(
        _run_config(config, settings.threat), run_dir, observer, data=base,
        hooks=InlineHooks(extra_clients=clients, on_release=releases.record, secure_server=secure),
    )  # fmt: skip
    changes = [_flat(b) - _flat(a) for a, b in zip(releases.weights, releases.weights[1:], strict=False)]
    if secure:
        changes = _without_server_noise(config, changes, [w.shape for w in initial], population=n + m)
    if settings.threat == "final-model":
        scores = _cosines(directions, [np.sum(changes, axis=0)])[:, 0]
    else:
        per_round = _cosines(directions, changes)
        scores = per_round.max(axis=1) if config.server.fraction_train < 1.0 else per_round.sum(axis=1)
    claimed = float(summary["epsilon_user"])  # central: dp-fedavg; distributed: skellam-ddp (server)
    histories: tuple[tuple[GaussianEvent, ...], ...] = ()
    if config.dp.central and changes:
        event = central_settings(config, num_clients=n + m).round_event()
        histories = ((event,) * len(changes),)
    return SeedAudit(run_dir, claimed, scores, included, histories)


def _cosines(directions: npt.NDArray[np.float64], changes: Sequence[npt.NDArray[np.float64]]) -> Any:
    """``(m, rounds)``: each unit direction's cosine with each change (0 for a zero change)."""
    stacked = np.stack(changes, axis=1) if changes else np.zeros((directions.shape[1], 0))
    norms = np.linalg.norm(stacked, axis=0)
    return (directions @ stacked) / np.where(norms > 0, norms, 1.0)


def _without_server_noise(
    config: RunConfig,
    changes: Sequence[npt.NDArray[np.float64]],
    shapes: Sequence[tuple[int, ...]],
    *,
    population: int,
) -> list[npt.NDArray[np.float64]]:
    """Each round's change minus the DP-FedAvg noise a server seeded by the run seed would have drawn."""
    settings = central_settings(config, num_clients=population)
    rng = np.random.default_rng([config.run.seed, 2])  # the simulated server's noise stream
    std = settings.update_noise_multiplier() * settings.clip_norm
    cleaned = []
    for change in changes:
        noise = np.concatenate([rng.normal(0.0, std, size=shape).ravel() for shape in shapes])
        cleaned.append(change - noise / settings.denominator)
    return cleaned
