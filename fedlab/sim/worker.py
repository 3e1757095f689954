"""What a simulator worker does: train the clients it is handed, one after another.

A worker holds the federated data (lazy: only the clients it trains are
materialized) and one :class:`~fedlab.sim.trainer.SwapTrainer`. Each round it gets a
:class:`WorkerTask` (client ids with their accountant histories, the global weights,
the round seed) and answers with one :class:`~fedlab.sim.trainer.ClientOutcome` per
client. The same :class:`ClientService` trains in the simulator's own process when
there are no worker processes.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection

import numpy as np
import torch

from fedlab.core.choices import TrainerKind
from fedlab.core.config import RunConfig
from fedlab.data.types import FederatedData
from fedlab.privacy.events import GaussianEvent
from fedlab.sim.cohort_trainer import ClientJob, CohortClients
from fedlab.sim.trainer import ClientOutcome, SwapTrainer
from fedlab.training.models import model_for
from fedlab.training.randomness import fresh_secret


@dataclass(frozen=True)
class WorkerTask:
    """One worker's share of a round.

    Attributes:
        round_seed: The round's public seed.
        weights: The global weights.
        clients: ``(client id, accountant history)`` of each client to train, in order.
        clip_norm: Under central DP, the round's clip norm (None: ``dp.clip_norm``).
    """

    round_seed: int
    weights: tuple[np.ndarray, ...]
    clients: tuple[tuple[str, tuple[GaussianEvent, ...]], ...]
    clip_norm: float | None = None


class ClientService:
    """Trains the clients of a task on one swap trainer, or together on a cohort trainer.

    Args:
        config: The run configuration, its ``simulation.trainer`` decided
            (:func:`~fedlab.sim.trainer.resolve_trainer`; ``auto`` trains one after another).
        data: The federated data; client ``i`` is partition ``i``.
    """

    def __init__(self, config: RunConfig, data: FederatedData) -> None:
        self._config = config
        self._data = data
        self._swap: SwapTrainer | None = None
        self._cohort: CohortClients | None = None

    def trainer(self) -> SwapTrainer:
        """The swap trainer, built on first use (a simulator whose workers train builds none)."""
        if self._swap is None:
            self._swap = SwapTrainer(
                self._config, feature_shape=self._data.feature_shape, num_classes=self._data.num_classes
            )
        return self._swap

    def cohort(self) -> CohortClients:
        """The cohort trainer, built on first use."""
        if self._cohort is None:
            config, data = self._config, self._data
            model = model_for(config, feature_shape=data.feature_shape, num_classes=data.num_classes)
            self._cohort = CohortClients(config, model, feature_shape=data.feature_shape)
        return self._cohort

    @property
    def _uses_cohort(self) -> bool:
        return self._config.simulation.trainer == TrainerKind.COHORT

    def warm_up(self) -> None:
        """Build the trainer now (a worker does it before it reports ready)."""
        if self._uses_cohort:
            self.cohort()
        else:
            self.trainer()

    def run(self, task: WorkerTask) -> list[ClientOutcome]:
        """Train every client of ``task`` (outcomes in order); materialize each client's data only now.

        With ``simulation.client_randomness = "secret"`` every client draws a fresh secret for
        the round (as a deployed client does); else its randomness is seeded from the run seed.
        """
        secret = self._config.simulation.client_randomness == "secret"
        if self._uses_cohort:
            jobs = [
                ClientJob(cid, self._data.client(int(cid)), history, fresh_secret() if secret else None)
                for cid, history in task.clients
            ]
            return self.cohort().train(
                jobs, task.weights, round_seed=task.round_seed, clip_norm=task.clip_norm
            )
        return [
            self.trainer().train(
                client_id,
                self._data.client(int(client_id)),
                task.weights,
                history=history,
                round_seed=task.round_seed,
                clip_norm=task.clip_norm,
                secret=fresh_secret() if secret else None,
            )
            for client_id, history in task.clients
        ]


def split_task(task: WorkerTask, sizes: Sequence[int], parts: int) -> list[WorkerTask]:
    """Split a task into at most ``parts`` tasks of about equal work (longest first).

    Args:
        task: The whole round's task.
        sizes: Each client's number of examples (its cost), in task order.
        parts: How many workers share the work.

    Returns:
        Non-empty tasks; each keeps its clients in task order.

    >>> t = WorkerTask(0, (), (("0", ()), ("1", ()), ("2", ())))
    >>> [[c for c, _ in p.clients] for p in split_task(t, [5, 1, 4], 2)]
    [['0'], ['1', '2']]
    """
    loads = [0] * parts
    owner = [0] * len(task.clients)
    for i in sorted(range(len(task.clients)), key=lambda i: -sizes[i]):
        worker = loads.index(min(loads))
        owner[i] = worker
        loads[worker] += sizes[i]
    shares = [tuple(c for i, c in enumerate(task.clients) if owner[i] == w) for w in range(parts)]
    return [WorkerTask(task.round_seed, task.weights, share, task.clip_norm) for share in shares if share]


def worker_main(conn: Connection, config: RunConfig, data: FederatedData) -> None:
    """A worker process: build its trainer once, then serve tasks until told to stop.

    ``data`` is the simulator's (lazy) federated data, pickled once to each worker:
    client data is still materialized only when a client is trained.

    Messages back are ``("ready", None)``, ``("ok", [ClientOutcome, ...])`` or
    ``("error", traceback text)``. ``None`` (or a closed pipe) stops the worker.
    """
    torch.set_num_threads(1)
    try:
        service = ClientService(config, data)
        service.warm_up()
    except Exception:  # reported to the simulator, which raises it as one line
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            conn.send(("ok", service.run(task)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
