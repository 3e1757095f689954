"""The SecAgg+ stage messages of secure FedAvg: one typed vocabulary for the loop, clients and transports.

A round has four stages (see :mod:`fedlab.secagg`). The server sends each client one
:data:`ServerStageMessage` per stage and a client answers with one :data:`ClientStageMessage`:

0. ``ADVERTISE_KEYS``: :class:`SetupMessage`, answered by a ``KeyAdvert``;
1. ``SHARE_KEYS``: a ``NeighbourRoster``, answered by ``EncryptedShares``;
2. ``MASKED_INPUT``: :class:`MaskedInputMessage`, answered by a :class:`MaskedReply`;
3. ``UNMASK``: an ``UnmaskRequest``, answered by an ``UnmaskResponse``
   (those four from :mod:`fedlab.secagg.messages`).

One client's message travels in a :class:`StageCall` (with the stage, round and public round seed)
and its answer in a :class:`StageReply`. The loop addresses a whole stage at once with a
:class:`StageRequest` and gets :class:`StageReplies` back. The same objects serve every transport:
the inline simulator passes them as they are, Flower carries them as bytes
(:mod:`fedlab.algorithms.secure_wire`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedlab.algorithms.secure_encoding import Encoding
from fedlab.secagg.errors import Stage
from fedlab.secagg.messages import (
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    NeighbourRoster,
    SecAggParams,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)


@dataclass(frozen=True)
class SetupMessage:
    """Stage 0, server -> client: the round's public parameters and the client's protocol index.

    ``encoding`` (the same one stage 2 carries, None in messages built without it) lets a device
    decide at the first stage whether the round fits its privacy budget.
    """

    params: SecAggParams
    index: int
    encoding: Encoding | None = None


@dataclass(frozen=True)
class MaskedInputMessage:
    """Stage 2, server -> client: the shares addressed to it and how to encode its delta."""

    delivery: ShareDelivery
    encoding: Encoding


@dataclass(frozen=True)
class MaskedReply:
    """Stage 2, client -> server: the masked input and public metadata.

    Attributes:
        masked: y_u, uniform mod m on its own.
        num_examples: The client's number of training examples (public metadata).
        epsilon: The client's own cumulative DP-SGD epsilon (inf without DP-SGD).
        noise_multiplier: Its DP-SGD noise multiplier (0 without).
        sample_rate: Its DP-SGD sampling rate (1 without).
        steps: Its optimizer steps this round.

    Raises:
        ValueError: If the metadata is not a count, an epsilon, a noise multiplier and a rate
            (negative, NaN, a rate outside (0, 1]).

    """

    masked: MaskedInput
    num_examples: int
    epsilon: float = math.inf
    noise_multiplier: float = 0.0
    sample_rate: float = 1.0
    steps: int = 0

    def __post_init__(self) -> None:
        if self.num_examples < 0 or self.steps < 0:
            raise ValueError(f"negative counts: {self.num_examples} examples, {self.steps} steps")
        if not (
            self.epsilon >= 0.0 and math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0.0
        ):
            raise ValueError(f"bad DP-SGD metadata: epsilon {self.epsilon}, noise {self.noise_multiplier}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate}")


ServerStageMessage = SetupMessage | NeighbourRoster | MaskedInputMessage | UnmaskRequest
ClientStageMessage = KeyAdvert | EncryptedShares | MaskedReply | UnmaskResponse

CALL_TYPES: Mapping[Stage, type] = {
    Stage.ADVERTISE_KEYS: SetupMessage,
    Stage.SHARE_KEYS: NeighbourRoster,
    Stage.MASKED_INPUT: MaskedInputMessage,
    Stage.UNMASK: UnmaskRequest,
}
"""The server's message type at each stage."""

REPLY_TYPES: Mapping[Stage, type] = {
    Stage.ADVERTISE_KEYS: KeyAdvert,
    Stage.SHARE_KEYS: EncryptedShares,
    Stage.MASKED_INPUT: MaskedReply,
    Stage.UNMASK: UnmaskResponse,
}
"""The client's reply type at each stage."""


@dataclass(frozen=True)
class StageCall:
    """One client's stage message, as the client receives it.

    Attributes:
        stage: The protocol stage.
        round_num: The federation round (also the SecAgg round id).
        round_seed: The round's public seed (rotation seed of distributed DP; training seed).
        message: The stage's message (its type is :data:`CALL_TYPES` ``[stage]``).

    Raises:
        ValueError: If the message is not the stage's type.

    """

    stage: Stage
    round_num: int
    round_seed: int
    message: ServerStageMessage

    def __post_init__(self) -> None:
        expected = CALL_TYPES[self.stage]
        if not isinstance(self.message, expected):
            raise ValueError(
                f"stage {self.stage.name} carries a {expected.__name__}, not a {type(self.message).__name__}"
            )


@dataclass(frozen=True)
class StageReply:
    """One client's answer to a :class:`StageCall`.

    Attributes:
        stage: The stage answered.
        round_num: The round.
        message: The reply (its type is :data:`REPLY_TYPES` ``[stage]``).

    Raises:
        ValueError: If the message is not the stage's type.

    """

    stage: Stage
    round_num: int
    message: ClientStageMessage

    def __post_init__(self) -> None:
        expected = REPLY_TYPES[self.stage]
        if not isinstance(self.message, expected):
            raise ValueError(
                f"stage {self.stage.name} answers a {expected.__name__}, not a {type(self.message).__name__}"
            )


@dataclass(frozen=True)
class StageRequest:
    """One stage of one round, as the loop hands it to a transport.

    Attributes:
        round_num: The federation round (also the SecAgg round id).
        round_seed: The round's public seed (training seed, rotation seed, dropout draws).
        stage: Which stage.
        messages: Client id -> its message for this stage.
        weights: The global model (stage 2 only; empty otherwise).

    """

    round_num: int
    round_seed: int
    stage: Stage
    messages: Mapping[str, ServerStageMessage]
    weights: tuple[np.ndarray, ...] = ()

    def call(self, client_id: str) -> StageCall:
        """The stage call for one addressed client (KeyError if it is not addressed)."""
        return StageCall(self.stage, self.round_num, self.round_seed, self.messages[client_id])

    def accept(self, reply: StageReply) -> ClientStageMessage:
        """The reply's message; ValueError if it answers another stage or round."""
        if reply.stage != self.stage or reply.round_num != self.round_num:
            raise ValueError(f"reply to stage {reply.stage.name} of round {reply.round_num}")
        return reply.message


@dataclass(frozen=True)
class StageReplies:
    """What came back from one stage: replies by client id, and why others did not answer."""

    replies: Mapping[str, ClientStageMessage] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
