"""Secure aggregation in the inline simulator: the SecAgg+ stages of every client, in this process.

:class:`InlineSecureTransport` is the inline backend's
:class:`~fedlab.algorithms.secure_fedavg.SecureTransport`. Each stage message goes to the same
client protocol a Flower client runs (:class:`~fedlab.algorithms.secure_client.SecureClient`),
as objects rather than bytes: the simulator holds every client in one process anyway, so
serializing would only cost time. Each client's secret state is kept here between stages and
deleted after its unmask answer, exactly as a client's ``context.state`` would be.

Training (the masked-input stage) goes through the inline
:class:`~fedlab.sim.inline.InlineTransport`, so secure rounds train in the worker processes and
see the same simulated devices as plain rounds: a straggler or a device dropout there drops out of
the protocol at the masked-input stage, and ``secagg.simulate_dropout`` drops clients at random
stages as under Flower.

Simulation only: keys, masks and noise come from sources seeded by the run seed
(:func:`~fedlab.algorithms.secure_client.stage_source`), so whoever knows the seed knows every mask.
"""

from __future__ import annotations

import logging

from fedlab.algorithms.federation import ClientTransport, RoundPlan
from fedlab.algorithms.secure_client import SecureClient, SecureClientState, Training, dropout_stage
from fedlab.algorithms.secure_encoding import ClientPolicy
from fedlab.algorithms.secure_messages import ClientStageMessage, StageReplies, StageRequest
from fedlab.core.config import RunConfig
from fedlab.core.reports import TrainReport
from fedlab.secagg.errors import SecAggError, Stage

LOG = logging.getLogger("fedlab.secure_inline")


class InlineSecureTransport:
    """Answers every client's SecAgg+ stage in this process; trains through ``inline``.

    Args:
        config: The run configuration (every simulated client's configuration too).
        inline: The inline backend's transport (sampling pool, devices, workers), possibly with an
            audit's extra clients (:class:`~fedlab.sim.hooks.WithExtraClients`).

    """

    def __init__(self, config: RunConfig, inline: ClientTransport) -> None:
        self._config = config
        self._policy = ClientPolicy.of(config)
        self._inline = inline
        self._client = SecureClient(seeded=True)
        self._states: dict[str, SecureClientState] = {}

    @property
    def held_states(self) -> int:
        """How many clients' secret stage states are held now (none once a round has unmasked)."""
        return len(self._states)

    def available_clients(self) -> list[str]:
        """The ids of the clients available in the next round."""
        return self._inline.available_clients()

    def stage(self, request: StageRequest) -> StageReplies:
        """Answer one stage for every addressed client; dropouts and refusals become failures."""
        if request.stage == Stage.ADVERTISE_KEYS:
            self._states.clear()  # a new round: nothing of an earlier (possibly aborted) one survives
        failures: list[str] = []
        trained = self._train(request, failures) if request.stage == Stage.MASKED_INPUT else {}
        replies: dict[str, ClientStageMessage] = {}
        for cid in request.messages:
            if request.stage == Stage.MASKED_INPUT and cid not in trained:
                self._states.pop(cid, None)
                continue  # did not arrive (device dropout, straggler or simulated protocol dropout)
            reply = self._answer(request, cid, trained.get(cid), failures)
            if reply is not None:
                replies[cid] = reply
        for reason in failures:
            LOG.info("round %d stage %s: %s", request.round_num, request.stage.name, reason)
        return StageReplies(replies, tuple(failures))

    def _answer(
        self,
        request: StageRequest,
        cid: str,
        training: Training | None,
        failures: list[str],
    ) -> ClientStageMessage | None:
        current = self._states.pop(cid, None)
        try:
            call = request.call(cid)
            response = self._client.respond(self._policy, cid, call, current, training=training)
        except (ValueError, SecAggError) as exc:
            failures.append(f"client {cid}: refused ({exc})")
            return None
        if response.state is not None:
            self._states[cid] = response.state
        if response.reply is None:
            failures.append(f"client {cid}: simulated dropout")
            return None
        return request.accept(response.reply)

    def _train(self, request: StageRequest, failures: list[str]) -> dict[str, Training]:
        """Train the stage-2 clients that are still in the protocol, through the inline transport."""
        rate, seed = self._config.secagg.simulate_dropout, self._config.run.seed
        staying = []
        for cid in request.messages:
            drop = dropout_stage(rate=rate, seed=seed, round_seed=request.round_seed, client_id=cid)
            if drop is not None and drop <= Stage.MASKED_INPUT:
                failures.append(f"client {cid}: simulated dropout")
            else:
                staying.append(cid)
        plan = RoundPlan(round_num=request.round_num, client_ids=tuple(staying), seed=request.round_seed)
        replies = self._inline.train(plan, request.weights)
        failures.extend(replies.failures)
        return {report.client_id: _trained(report) for report in replies.reports}


def _trained(report: TrainReport) -> Training:
    """The client's training, already done by the inline transport (it keeps the history itself)."""
    return lambda: (report, ())
