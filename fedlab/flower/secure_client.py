"""SecAgg+ stages in a ClientApp: a ``train.secagg`` message in, its reply and the next secret state out.

The protocol is :class:`~fedlab.algorithms.secure_client.SecureClient`; this module carries its
calls and replies as bytes (:mod:`fedlab.algorithms.secure_wire`), keeps the client's secret state
between stages in its Flower ``context.state`` (deleted after unmasking, or when a stage is
refused), and trains with the client's :class:`~fedlab.training.client_runtime.ClientRuntime` at
the masked-input stage, from a fresh client secret per round unless ``seeded`` (``fedlab simulate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from fedlab.algorithms.secure_client import SecureClient, SecureClientState, Training
from fedlab.algorithms.secure_encoding import ClientPolicy
from fedlab.algorithms.secure_messages import StageCall
from fedlab.algorithms.secure_wire import parse_call, reply_bytes
from fedlab.core.config import RunConfig
from fedlab.core.reports import TrainReport
from fedlab.flower.secure_transport import SECAGG
from fedlab.privacy.events import GaussianEvent
from fedlab.training.client_runtime import ClientData, ClientRuntime
from fedlab.training.randomness import fresh_secret

SECAGG_STATE = "fedlab-secagg"
"""Context-state record of the client's secret per-round SecAgg+ state (deleted after unmasking)."""
SECAGG_ERROR = 0
"""Error code of a refused or (simulated) dropped secure-aggregation stage (Flower's UNKNOWN)."""


@dataclass(frozen=True)
class StageAnswer:
    """What a client does with one stage message.

    Attributes:
        reply: The reply bytes, or None when the client (simulated) drops out: send nothing.
        state: The state bytes to store for the next stage, or None: delete any stored state.
        history: The client's new DP-SGD accountant history (stage 2 only), else None.

    """

    reply: bytes | None
    state: bytes | None
    history: tuple[GaussianEvent, ...] | None = None


class SecureStageClient:
    """Answers stage calls for any number of clients, training with ``runtime``.

    Args:
        runtime: Trains clients at the masked-input stage (reused across rounds).
        seeded: ``fedlab simulate`` only: keys, masks, noise and DP-SGD's batches and noise from
            seeded sources (see :func:`~fedlab.algorithms.secure_client.stage_source`), instead of
            ``os.urandom`` and a fresh client secret per round.

    """

    def __init__(self, runtime: ClientRuntime, *, seeded: bool = False) -> None:
        self._runtime = runtime
        self._client = SecureClient(seeded=seeded)

    def answer(
        self,
        config: RunConfig,
        data: ClientData,
        call: StageCall,
        *,
        state: bytes | None,
        weights: Sequence[np.ndarray] = (),
        history: Sequence[GaussianEvent] = (),
    ) -> StageAnswer:
        """Answer one stage call; the reply and the next state are bytes.

        Raises:
            ValueError: If the stored state is malformed.
            SecAggError: If the call breaks the protocol (the client refuses to go on).

        """
        runtime, seeded = self._runtime, self._client.seeded

        def training() -> tuple[TrainReport, tuple[GaussianEvent, ...]]:
            secret = None if seeded else fresh_secret()  # deployment: DP-SGD from a fresh secret
            report, new_history = runtime.train(
                config, data, weights, history=history, round_seed=call.round_seed, secret=secret
            )
            return report, tuple(new_history)

        return answer_stage(
            self._client,
            ClientPolicy.of(config),
            data.client_id,
            call,
            state=state,
            training=training if weights else None,
        )


def answer_stage(
    client: SecureClient,
    policy: ClientPolicy,
    client_id: str,
    call: StageCall,
    *,
    state: bytes | None,
    training: Training | None,
) -> StageAnswer:
    """Answer one stage call from the stored state bytes; the reply and the next state as bytes.

    Args:
        client: Answers the stage (its randomness: ``os.urandom`` unless seeded).
        policy: What the client accepts.
        client_id: The client's stable id.
        call: The stage call.
        state: The state bytes the previous stage left (ignored at stage 0).
        training: Trains the client at the masked-input stage (None: refused there).

    Raises:
        ValueError: If the stored state is malformed.
        SecAggError: If the call breaks the protocol (the client refuses to go on).

    """
    current = SecureClientState.from_bytes(state) if state is not None and call.stage > 0 else None
    response = client.respond(policy, client_id, call, current, training=training)
    return StageAnswer(
        None if response.reply is None else reply_bytes(response.reply),
        None if response.state is None else response.state.to_bytes(),
        response.history,
    )


def stage_call(msg: Message) -> StageCall:
    """The SecAgg+ stage call a ``train.secagg`` message carries; KeyError/ValueError if it has none."""
    call = msg.content.config_records[SECAGG]["call"]
    if not isinstance(call, bytes):
        raise ValueError("the stage call is not bytes")
    return parse_call(call)


def stored_stage_state(context: Context) -> bytes | None:
    """The client's secret SecAgg+ state left by its previous stage, if any."""
    record = context.state.config_records.get(SECAGG_STATE)
    state = record.get("state") if record is not None else None
    return state if isinstance(state, bytes) else None


def secagg_refusal(msg: Message, context: Context, exc: Exception) -> Message:
    """Forget the round's secret state and answer with an error (the server counts a dropout)."""
    context.state.config_records.pop(SECAGG_STATE, None)
    return Message(Error(code=SECAGG_ERROR, reason=f"secagg refused: {exc}"), reply_to=msg)


def secagg_reply(msg: Message, context: Context, answer: StageAnswer) -> Message:
    """Keep (or delete) the next stage's secret state and send the reply, or an error if dropped out."""
    if answer.state is None:
        context.state.config_records.pop(SECAGG_STATE, None)
    else:
        context.state.config_records[SECAGG_STATE] = ConfigRecord({"state": answer.state})
    if answer.reply is None:
        return Message(Error(code=SECAGG_ERROR, reason="dropped out"), reply_to=msg)
    return Message(RecordDict({SECAGG: ConfigRecord({"reply": answer.reply})}), reply_to=msg)
