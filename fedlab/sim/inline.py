"""The fast in-process simulator (``simulation.backend = "inline"``), no Flower, no Ray.

It runs the server and client logic of a deployment: the same set-up
(:func:`~fedlab.training.run_setup.set_up_run`: data, initial model,
:class:`~fedlab.training.recorder.RunRecorder`), the same round loops
(:func:`~fedlab.algorithms.runs.run_configured`; plain FedAvg samples by index) and
clients that train exactly as a :class:`~fedlab.training.local.LocalTrainer` does.
Only the transport is simulated:

* Clients are trained by a few long-lived worker processes (``simulation.workers``,
  one per core by default; 0 or 1 trains in this process), each with one persistent
  model, optimizer and Opacus wrapper whose state is reset per client
  (:class:`~fedlab.sim.trainer.SwapTrainer`). Until the workers are up, and when a
  run is too short to pay for starting them, this process trains the clients itself:
  who trains a client never changes its result.
* Each client's accountant history is kept here, keyed by client id, and handed to
  whichever process trains it (as a Flower client keeps it in its context state).
* Client data is materialized only when a client is sampled; per-round cost depends
  on the sampled clients, not on the population.
* Devices behave like real ones (:mod:`fedlab.sim.devices`): unavailable clients are
  not sampled, dropouts and stragglers past ``simulation.round_deadline`` never send
  a report (so the ledger and DP code see exactly the clients that contributed; they
  are not trained at all, since nothing of theirs is released), and the round's
  simulated seconds and drop counts go to ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from fedlab.algorithms.federation import ClientTransport, RoundPlan, RoundRecorder
from fedlab.algorithms.runs import run_configured
from fedlab.algorithms.sampling import sample_indices
from fedlab.core.config import RunConfig
from fedlab.core.metrics import RoundObserver
from fedlab.core.reports import RoundReplies
from fedlab.data.federated import build_federated_data
from fedlab.data.types import FederatedData
from fedlab.privacy.events import ANNOUNCED_CLIP_NORM, GaussianEvent
from fedlab.sim.devices import DeviceProfiles, RoundOutcome, profiles_from_config, settle_round
from fedlab.sim.hooks import InlineHooks, RewrittenReplies, TappedRecorder, WithExtraClients
from fedlab.sim.pool import WorkerPool
from fedlab.sim.secure_inline import InlineSecureTransport
from fedlab.sim.trainer import ClientOutcome, local_steps, resolve_trainer
from fedlab.sim.worker import ClientService, WorkerTask, split_task
from fedlab.training.models import model_for
from fedlab.training.recorder import RunRecorder
from fedlab.training.run_setup import set_up_run

POOL_START_SECONDS = 10.0
"""Expected in-process training time left above which the worker pool is started."""


def worker_count(config: RunConfig) -> int:
    """``simulation.workers``, or the number of cores when unset."""
    chosen = config.simulation.workers
    return (os.cpu_count() or 1) if chosen is None else chosen


class HistoryStore:
    """The simulator's per-client store of accountant histories, keyed by client id."""

    def __init__(self) -> None:
        self._histories: dict[str, tuple[GaussianEvent, ...]] = {}

    def get(self, client_id: str) -> tuple[GaussianEvent, ...]:
        """The client's history (empty before it first trained)."""
        return self._histories.get(client_id, ())

    def put(self, client_id: str, history: tuple[GaussianEvent, ...]) -> None:
        """Save the client's history after a round."""
        if history:
            self._histories[client_id] = history

    def replace_all(self, histories: Mapping[str, tuple[GaussianEvent, ...]]) -> None:
        """Take every client's history from ``histories`` (a resumed run's ledger)."""
        self._histories = {cid: h for cid, h in histories.items() if h}


class InlineTransport:
    """Samples, times and trains a round's clients in worker processes or in this one.

    Args:
        config: The run configuration.
        data: The federated data (lazy).
        service: Trains clients in this process.
        pool: The worker processes, or None to always train in this process.
        profiles: The clients' device profiles.
    """

    def __init__(
        self,
        config: RunConfig,
        data: FederatedData,
        *,
        service: ClientService,
        pool: WorkerPool | None,
        profiles: DeviceProfiles,
    ) -> None:
        self._config = config
        self._data = data
        self._service = service
        self._pool = pool
        self._profiles = profiles
        self._histories = HistoryStore()
        self._round = 0
        self._clock = 0.0
        self._available = data.num_clients
        self._round_started_at = time.time()

    def state_dict(self) -> dict[str, Any]:
        """The simulated device clock after the last round (histories are the ledger's rows)."""
        return {"clock": self._clock}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go on from a resumed run's clock."""
        self._clock = float(state["clock"])

    def restore_histories(self, histories: Mapping[str, tuple[GaussianEvent, ...]]) -> None:
        """Take the clients' accountant histories of a resumed run."""
        self._histories.replace_all(histories)

    def _pool_index(self, round_num: int) -> int | NDArray[np.int64]:
        available = self._profiles.available(
            self._data.num_clients, seed=self._config.run.seed, round_num=round_num
        )
        self._available = self._data.num_clients if available is None else len(available)
        return self._data.num_clients if available is None else available

    def available_clients(self) -> list[str]:
        """The ids of the clients available in the next round (``ClientTransport`` protocol)."""
        pool = self._pool_index(self._round + 1)
        indices = range(pool) if isinstance(pool, int) else pool.tolist()
        return [str(i) for i in indices]

    def sample(
        self, round_num: int, rng: np.random.Generator, *, mode: str, fraction: float
    ) -> tuple[str, ...]:
        """Sample among the clients available in ``round_num``, by index."""
        self._round_started_at = time.time()
        chosen = sample_indices(self._pool_index(round_num), mode=mode, fraction=fraction, rng=rng)
        return tuple(str(i) for i in chosen.tolist())

    def train(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundReplies:
        """Time the planned clients on their devices, then train those that arrive."""
        self._round = plan.round_num
        outcome = self._settle(plan, weights)
        arrived = [plan.client_ids[p] for p in outcome.arrived.tolist()]
        started = time.perf_counter()
        outcomes, workers = self._train_clients(plan, weights, arrived)
        self._maybe_start_pool(plan.round_num, time.perf_counter() - started, workers)
        for cid, result in zip(arrived, outcomes, strict=True):
            self._histories.put(cid, result.history)
        self._clock += outcome.seconds
        return RoundReplies(
            reports=tuple(r.report for r in outcomes),
            failures=_failures(plan.client_ids, outcome),
            extra=self._extra(plan, outcome, workers),
        )

    def _settle(self, plan: RoundPlan, weights: Sequence[np.ndarray]) -> RoundOutcome:
        index = np.array([int(c) for c in plan.client_ids], dtype=np.int64)
        steps = np.array([local_steps(self._data.client_size(i), self._config) for i in index.tolist()])
        times = self._profiles.round_times(index, steps, model_bytes=sum(int(w.nbytes) for w in weights))
        dropped = self._profiles.drops_out(index, seed=self._config.run.seed, round_num=plan.round_num)
        sim = self._config.simulation
        return settle_round(times, dropped, deadline=sim.round_deadline, target=sim.target_updates)

    def _train_clients(
        self, plan: RoundPlan, weights: Sequence[np.ndarray], client_ids: Sequence[str]
    ) -> tuple[list[ClientOutcome], int]:
        """Train in the workers if they are up, else here; outcomes in ``client_ids`` order."""
        clip = plan.instructions.get(ANNOUNCED_CLIP_NORM)
        task = WorkerTask(
            round_seed=plan.seed,
            weights=tuple(np.asarray(w, dtype=np.float32) for w in weights),
            clients=tuple((cid, self._histories.get(cid)) for cid in client_ids),
            clip_norm=None if clip is None else float(clip),
        )
        if not client_ids or self._pool is None or not self._pool.ready():
            return self._service.run(task), 0
        sizes = [self._data.client_size(int(cid)) for cid in client_ids]
        shares = split_task(task, sizes, self._pool.size)
        by_id = {o.report.client_id: o for part in self._pool.run(shares) for o in part}
        return [by_id[cid] for cid in client_ids], len(shares)

    def _maybe_start_pool(self, round_num: int, seconds: float, workers: int) -> None:
        """Start the workers once the in-process work left is worth their start-up."""
        if self._pool is None or self._pool.started or workers:
            return
        if seconds * (self._config.run.rounds - round_num) > POOL_START_SECONDS:
            self._pool.start()

    def _extra(self, plan: RoundPlan, outcome: RoundOutcome, workers: int) -> dict[str, float | int | str]:
        return {
            "sim_seconds": outcome.seconds,
            "sim_clock": self._clock,
            "available": self._available,
            "sampled": len(plan.client_ids),
            "dropped_straggler": int(outcome.stragglers.size),
            "dropped_dropout": int(outcome.dropouts.size),
            "dropped_over_target": int(outcome.over_target.size),
            "workers": workers,
            "started_at": self._round_started_at,
        }


def _failures(client_ids: Sequence[str], outcome: RoundOutcome) -> tuple[str, ...]:
    reasons = [
        *(f"{client_ids[p]}: straggler" for p in outcome.stragglers.tolist()),
        *(f"{client_ids[p]}: dropout" for p in outcome.dropouts.tolist()),
        *(f"{client_ids[p]}: over target" for p in outcome.over_target.tolist()),
    ]
    return tuple(reasons)


def simulate_inline(
    config: RunConfig,
    run_dir: Path,
    observer: RoundObserver,
    *,
    wait_for_workers: bool = False,
    data: FederatedData | None = None,
    hooks: InlineHooks | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``config`` with the inline backend and return the run summary.

    Args:
        config: The validated run configuration.
        run_dir: A fresh run directory.
        observer: Receives per-round progress.
        wait_for_workers: Start the worker processes first and wait until they are
            up (tests use it to make sure the workers train); by default they start
            in the background only when the run is long enough to need them.
        data: The run's data if the caller already built it from ``config.data`` and
            ``config.run.seed`` (the CLI does, to check it); built here otherwise.
        hooks: An audit's extra clients and view of each release (code only; see
            :mod:`fedlab.sim.hooks`).
        resume: Go on with the run in ``run_dir`` after its last committed round (``config`` must
            be the run's): the same final model and epsilons as a run that was never interrupted.
    """
    torch.set_num_threads(1)  # one thread per training process, as each worker
    if data is None:
        data = build_federated_data(config.data, seed=config.run.seed)
    config = resolve_trainer(config, _fresh_model(config, data))  # before anything is written
    setup = set_up_run(config, run_dir=run_dir, observer=observer, data=data, resume=resume)
    data = setup.data
    workers = worker_count(config)
    pool = WorkerPool(config, data, workers) if workers >= 2 else None
    try:
        if pool is not None and wait_for_workers:
            pool.start()
            pool.wait()
        transport = InlineTransport(
            config,
            data,
            service=ClientService(config, data),
            pool=pool,
            profiles=profiles_from_config(
                config.simulation, num_clients=data.num_clients, seed=config.run.seed
            ),
        )
        setup.recorder.track("transport", transport)
        if setup.recorder.resumed is not None:
            transport.restore_histories(setup.recorder.client_histories())
        stopped = _run_rounds(
            config, transport, setup.recorder, setup.initial_weights, data.num_clients, hooks or InlineHooks()
        )
    finally:
        if pool is not None:
            pool.close()
    return setup.recorder.finish(stopped_because=stopped)


def _run_rounds(
    config: RunConfig,
    transport: InlineTransport,
    recorder: RunRecorder,
    initial_weights: list[np.ndarray],
    num_clients: int,
    hooks: InlineHooks,
) -> str:
    """The configured loop over the inline transport, with an audit's hooks applied."""
    if not (config.secagg.enabled or config.dp.central) and (
        hooks.extra_clients is not None or hooks.secure_server
    ):
        raise ValueError("extra clients and a secure server need a DP-FedAvg or secure-aggregation run")
    tapped: RoundRecorder = (
        recorder if hooks.on_release is None else TappedRecorder(recorder, hooks.on_release)
    )
    clients: ClientTransport = transport
    if hooks.replies is not None:
        clients = RewrittenReplies(transport, hooks.replies)
    if hooks.extra_clients is not None:
        clients = WithExtraClients(clients, hooks.extra_clients)
        num_clients += hooks.extra_clients.slots
    outcome = run_configured(
        config,
        transport=InlineSecureTransport(config, clients) if config.secagg.enabled else clients,
        recorder=tapped,
        initial_weights=initial_weights,
        num_clients=num_clients,
        secure_noise=hooks.secure_server,
        resume=recorder.resumed,
    )
    return outcome.stopped_because


def _fresh_model(config: RunConfig, data: FederatedData) -> torch.nn.Module:
    return model_for(config, feature_shape=data.feature_shape, num_classes=data.num_classes)
