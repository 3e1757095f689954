"""The client side of a secure-aggregation round, transport-free, with its secret state serializable.

A client answers the four SecAgg+ stages of a round (see :mod:`fedlab.secagg`):

0. ``advertise``: fresh key pairs, public halves to the server;
1. ``share_keys``: Shamir shares of its self-mask seed and mask key, encrypted to its neighbours;
2. ``masked_input``: **train** from the global weights carried by this stage's message, encode the
   delta (fixed point, or the distributed-DP Skellam encoding) and send it masked;
3. ``unmask``: reveal, per neighbour, either the self-mask share or the key share.

Training happens at stage 2, so the trained delta never has to be stored between stages: it is
encoded and masked in the same call. Between stages a client only keeps its secret protocol state
(keys, seeds, share keys, received ciphertexts), as the bytes of :class:`SecureClientState`. The
caller stores them (Flower ``context.state``; a dict in tests), because under Flower's Ray engine
successive stages of one client may run in different processes. After the stage 3 answer the
caller must delete the state: a second unmask request then finds nothing and is refused (a server
asking twice with different requests could otherwise collect both shares of one neighbour).

Training is passed in (:data:`Training`): this module is numpy only. The calls and replies are
the typed messages of :mod:`fedlab.algorithms.secure_messages`; a transport that serializes uses
:mod:`fedlab.algorithms.secure_wire`, whose parsers check every type, so a malformed message is a
:class:`ValueError`, never a crash in the protocol.

Randomness: every key, seed, nonce, rounding and noise draw comes from one
:data:`~fedlab.secagg.crypto.RandomSource` per stage. In deployment that is ``os.urandom``
(:func:`stage_source` with ``seed=None``). In simulation :func:`stage_source` derives a seeded
source from the run seed, the public round seed, the client id and the stage, so runs are
reproducible; anyone who knows the run seed (the simulator) then knows every mask: simulation only.
The training passed in draws DP-SGD's batches and noise from its own sources (a fresh client
secret per round in deployment, seeds in simulation).

Threat model (beyond :mod:`fedlab.secagg`): stops a server that replays a stage, skips one, mixes
rounds, or asks for unmasking twice on the same state (the state names the round and the next
stage, and is deleted after unmasking); stops a server that sends an encoding contradicting the
client's own configuration (fixed point when the client's config asks for distributed DP, another
clip, another bit width, no noise). Does not stop: a server that picks a noise multiplier lower than
the run's calibration but still positive (clients do not re-run the calibration), and everything
:mod:`fedlab.secagg` lists as not protected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedlab.algorithms.secure_encoding import ClientPolicy, check_encoding, encode_update
from fedlab.algorithms.secure_messages import (
    MaskedInputMessage,
    MaskedReply,
    SetupMessage,
    StageCall,
    StageReply,
)
from fedlab.core.reports import TrainReport
from fedlab.core.update import example_weight
from fedlab.privacy.events import GaussianEvent
from fedlab.secagg import protocol
from fedlab.secagg.crypto import KeyPair, RandomSource, seeded_source
from fedlab.secagg.encoding import FixedPointCodec
from fedlab.secagg.errors import ProtocolError, Stage
from fedlab.secagg.messages import (
    ClientKeys,
    ClientMasked,
    ClientShared,
    EncryptedShares,
    KeyAdvert,
    MaskedInput,
    NeighbourRoster,
    SecAggParams,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedlab.secagg.wire import (
    b64,
    id_map,
    id_map_from,
    keys_from_wire,
    keys_to_wire,
    params_from_wire,
    params_to_wire,
    unb64,
    wire_dict,
    wire_int,
)

_STATE_VERSION = 1


# ---- secret state ------------------------------------------------------------------------------


Secret = ClientKeys | ClientShared | ClientMasked


@dataclass(frozen=True)
class SecureClientState:
    """A client's secret protocol state between two stages of one round.

    Attributes:
        next_stage: The only stage this state may answer next.
        secret: The protocol state after the previous stage.

    """

    next_stage: Stage
    secret: Secret = field(repr=False)

    @property
    def round_id(self) -> int:
        """The round this state belongs to."""
        return self.secret.params.round_id

    def to_bytes(self) -> bytes:
        """Serialize (contains private keys and seeds: store it where only this client reads it)."""
        s = self.secret
        body: dict[str, Any] = {"params": params_to_wire(s.params), "client_id": s.client_id}
        if isinstance(s, ClientKeys | ClientShared):
            body["agreement"] = [b64(s.agreement.private), b64(s.agreement.public)]
        if isinstance(s, ClientKeys):
            body["encryption"] = [b64(s.encryption.private), b64(s.encryption.public)]
        if isinstance(s, ClientShared):
            body["neighbours"] = id_map(s.neighbours, keys_to_wire)
            body["self_seed"] = b64(s.self_seed)
        if isinstance(s, ClientShared | ClientMasked):
            body["share_keys"] = id_map(s.share_keys, b64)
        if isinstance(s, ClientMasked):
            body["received"] = id_map(s.received, b64)
        payload = {"version": _STATE_VERSION, "next_stage": int(self.next_stage), "secret": body}
        return json.dumps(payload, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SecureClientState:
        """Parse :meth:`to_bytes` output; ValueError if malformed."""
        try:
            d = wire_dict(json.loads(data.decode()))
            if d.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported secure-client state version {d.get('version')!r}")
            stage = Stage(wire_int(d["next_stage"]))
            b = wire_dict(d["secret"])
            params, me = params_from_wire(b["params"]), wire_int(b["client_id"])

            def pair(name: str) -> KeyPair:
                return KeyPair(unb64(b[name][0]), unb64(b[name][1]))

            secret: Secret
            if stage == Stage.SHARE_KEYS:
                secret = ClientKeys(params, me, pair("agreement"), pair("encryption"))
            elif stage == Stage.MASKED_INPUT:
                secret = ClientShared(
                    params,
                    me,
                    pair("agreement"),
                    id_map_from(b["neighbours"], keys_from_wire),
                    unb64(b["self_seed"]),
                    id_map_from(b["share_keys"], unb64),
                )
            elif stage == Stage.UNMASK:
                secret = ClientMasked(
                    params, me, id_map_from(b["share_keys"], unb64), id_map_from(b["received"], unb64)
                )
            else:
                raise ValueError("no state precedes stage 0")
            return cls(stage, secret)
        except (KeyError, TypeError, IndexError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"malformed secure-client state: {exc}") from None


# ---- randomness and simulated dropouts ---------------------------------------------------------


def stage_source(*, seed: int | None, round_seed: int, client_id: str, stage: Stage) -> RandomSource:
    """The randomness of one client's stage: ``os.urandom`` when ``seed`` is None (deployment).

    With a seed (simulation, tests) it is a ChaCha20 stream keyed by SHA-256 of the run seed, the
    public round seed, the client id and the stage: reproducible, and known to whoever knows the
    run seed, so never use it in deployment.
    """
    if seed is None:
        return os.urandom
    material = f"fedlab/secure-client/v1|{seed}|{round_seed}|{client_id}|{int(stage)}"
    return seeded_source(material.encode())


def generator_from(source: RandomSource) -> np.random.Generator:
    """A numpy generator for rounding and noise, seeded with 256 bits of ``source``."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(source(32), "little")))


def dropout_stage(*, rate: float, seed: int, round_seed: int, client_id: str) -> Stage | None:
    """The stage at which a client drops out in a simulated round, or None (``secagg.simulate_dropout``).

    With probability ``rate`` the client drops, at a stage drawn uniformly from the four; the draw
    depends only on the run seed, the round seed and the client id, so every process serving the
    client agrees on it.

    >>> dropout_stage(rate=0.0, seed=0, round_seed=1, client_id="3") is None
    True
    """
    if rate <= 0.0:
        return None
    words = [seed & 0xFFFFFFFF, round_seed & 0xFFFFFFFF, round_seed >> 32, *client_id.encode(), 0x5EC]
    rng = np.random.default_rng(np.random.SeedSequence(words))
    if rng.random() >= rate:
        return None
    return Stage(int(rng.integers(0, 4)))


# ---- stages ------------------------------------------------------------------------------------


def _expect(state: SecureClientState | None, stage: Stage, round_id: int) -> Secret:
    if state is None:
        raise ProtocolError(f"no secure-aggregation state for stage {stage.name} (replayed or skipped stage)")
    if state.next_stage != stage or state.round_id != round_id:
        raise ProtocolError(
            f"expected stage {state.next_stage.name} of round {state.round_id}, "
            f"got stage {stage.name} of round {round_id}"
        )
    return state.secret


def advertise(
    params: SecAggParams, client_index: int, source: RandomSource
) -> tuple[SecureClientState, KeyAdvert]:
    """Stage 0: fresh keys for this round (any earlier state of the client is discarded)."""
    keys, advert = protocol.client_advertise(params, client_index, source)
    return SecureClientState(Stage.SHARE_KEYS, keys), advert


def share_keys(
    state: SecureClientState | None, roster: NeighbourRoster, source: RandomSource
) -> tuple[SecureClientState, EncryptedShares]:
    """Stage 1: share and encrypt the secrets to the neighbours in ``roster``."""
    secret = _expect(state, Stage.SHARE_KEYS, roster.round_id)
    assert isinstance(secret, ClientKeys)
    shared, message = protocol.client_share_keys(secret, roster, source)
    return SecureClientState(Stage.MASKED_INPUT, shared), message


def masked_input(
    state: SecureClientState | None, delivery: ShareDelivery, residues: npt.ArrayLike
) -> tuple[SecureClientState, MaskedInput]:
    """Stage 2: mask the encoded delta."""
    secret = _expect(state, Stage.MASKED_INPUT, delivery.round_id)
    assert isinstance(secret, ClientShared)
    masked, message = protocol.client_masked_input(secret, delivery, residues)
    return SecureClientState(Stage.UNMASK, masked), message


def unmask(state: SecureClientState | None, request: UnmaskRequest) -> UnmaskResponse:
    """Stage 3: reveal the requested shares. The caller must delete the state afterwards."""
    secret = _expect(state, Stage.UNMASK, request.round_id)
    assert isinstance(secret, ClientMasked)
    return protocol.client_unmask(secret, request)


@dataclass(frozen=True)
class StageResponse:
    """What a client does with one stage call.

    Attributes:
        reply: The reply, or None when the client (simulated) drops out: send nothing.
        state: The state for the next stage, or None: delete any stored state.
        history: The client's new DP-SGD accountant history (stage 2 only), else None.

    """

    reply: StageReply | None
    state: SecureClientState | None
    history: tuple[GaussianEvent, ...] | None = None


Training = Callable[[], tuple[TrainReport, tuple[GaussianEvent, ...]]]
"""Trains the client from the global weights of the masked-input stage: its report and new history."""


class SecureClient:
    """Answers stage calls for any number of clients; training is passed in.

    Args:
        seeded: Draw keys, masks and noise from seeded sources (simulation; see
            :func:`stage_source`) instead of ``os.urandom`` (deployment, the default).

    """

    def __init__(self, *, seeded: bool = False) -> None:
        self.seeded = seeded

    def respond(
        self,
        policy: ClientPolicy,
        client_id: str,
        call: StageCall,
        current: SecureClientState | None,
        *,
        training: Training | None = None,
    ) -> StageResponse:
        """Answer one stage call with the client's state.

        Args:
            policy: What the client accepts (:meth:`ClientPolicy.of` a run configuration).
            client_id: The client's stable id (dropout draws and seeded randomness).
            call: The stage call.
            current: The state the previous stage left (None at stage 0).
            training: Trains the client at the masked-input stage; None when the call carried
                no global weights (refused at that stage).

        Raises:
            ValueError: If the call is malformed.
            SecAggError: If the call breaks the protocol (the client refuses to go on).

        """
        drop = dropout_stage(
            rate=policy.dropout_rate, seed=policy.seed, round_seed=call.round_seed, client_id=client_id
        )
        if drop is not None and call.stage >= drop:
            return StageResponse(reply=None, state=None)
        source = stage_source(
            seed=policy.seed if self.seeded else None,
            round_seed=call.round_seed,
            client_id=client_id,
            stage=call.stage,
        )
        message = call.message
        if isinstance(message, SetupMessage):
            new, advert = advertise(message.params, message.index, source)
            return _response(call, advert, new)
        if isinstance(message, NeighbourRoster):
            new, shares = share_keys(current, message, source)
            return _response(call, shares, new)
        if isinstance(message, MaskedInputMessage):
            return _train_and_mask(policy, call, message, current, training, source)
        return _response(call, unmask(current, message), None)


def _response(
    call: StageCall,
    message: KeyAdvert | EncryptedShares | MaskedReply | UnmaskResponse,
    state: SecureClientState | None,
    *,
    history: tuple[GaussianEvent, ...] | None = None,
) -> StageResponse:
    return StageResponse(StageReply(call.stage, call.round_num, message), state, history)


def _train_and_mask(
    policy: ClientPolicy,
    call: StageCall,
    message: MaskedInputMessage,
    current: SecureClientState | None,
    training: Training | None,
    source: RandomSource,
) -> StageResponse:
    secret = _expect(current, Stage.MASKED_INPUT, message.delivery.round_id)
    encoding = message.encoding
    check_encoding(policy, encoding, secret.params.vector_length)
    if training is None:
        raise ProtocolError("the masked-input stage carries no global weights")
    report, new_history = training()
    weight = 1.0
    if isinstance(encoding, FixedPointCodec):
        weight = example_weight(report.update.num_examples, policy.weight_cap)
    encoded = encode_update(
        report.update, encoding, rotation_seed=call.round_seed, rng=generator_from(source), weight=weight
    )
    new_state, masked = masked_input(current, message.delivery, encoded.residues)
    reply = MaskedReply(
        masked=masked,
        num_examples=report.update.num_examples,
        epsilon=report.epsilon,
        noise_multiplier=report.noise_multiplier,
        sample_rate=report.sample_rate,
        steps=report.steps,
    )
    return _response(call, reply, new_state, history=tuple(new_history))
