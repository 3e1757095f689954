"""Where a SecAgg+ client's delta becomes residues: fixed point, or the distributed-DP Skellam encoding.

The server announces the encoding with the round; :func:`check_encoding` refuses one that the
client's own :class:`ClientPolicy` does not allow, and :func:`encode_update` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedlab.core.config import RunConfig
from fedlab.core.update import Update
from fedlab.privacy.skellam import SkellamParams, encode_client
from fedlab.secagg.encoding import FixedPointCodec, encode_counted
from fedlab.secagg.errors import ProtocolError

Encoding = FixedPointCodec | SkellamParams
"""How a client turns its delta into residues: fixed point (plain SecAgg) or Skellam (distributed DP)."""


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """What a SecAgg+ client accepts from the server, and how it weights its delta.

    Attributes:
        bits: The modulus 2^bits the client agrees to.
        clip_range: Plain SecAgg: the per-coordinate clip of the fixed-point encoding.
        ddp_clip: Distributed DP: the L2 clip of the Skellam encoding; None for plain SecAgg
            (then a Skellam encoding is refused too, and vice versa).
        weight_cap: Plain SecAgg weighted by examples: the cap of
            :func:`~fedlab.core.update.example_weight`; None averages uniformly.
        dropout_rate: ``fedlab simulate`` only: the simulated dropout rate.
        seed: ``fedlab simulate`` only: the run seed (dropout draws, seeded randomness).

    Example:
        >>> ClientPolicy(bits=32, clip_range=1.0).ddp_clip is None
        True
    """

    bits: int
    clip_range: float = 1.0
    ddp_clip: float | None = None
    weight_cap: int | None = None
    dropout_rate: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, config: RunConfig) -> ClientPolicy:
        """The policy a fedlab run configuration sets (``secagg``, ``dp`` and ``run.seed``)."""
        return cls(
            bits=config.secagg.bits,
            clip_range=config.secagg.clip_range,
            ddp_clip=config.dp.clip_norm if config.dp.distributed else None,
            weight_cap=config.secure_weight_cap(),
            dropout_rate=config.secagg.simulate_dropout,
            seed=config.run.seed,
        )


def check_encoding(policy: ClientPolicy, encoding: Encoding, vector_length: int) -> None:
    """Refuse an encoding the client's own policy does not allow.

    Stops: a server that asks a client configured for distributed DP to send a noiseless
    fixed-point encoding, or that changes the clip, bit width or length. Does not stop: a server
    choosing a smaller positive noise multiplier than the calibrated one.

    Raises:
        ProtocolError: If the encoding contradicts the policy.

    """
    if policy.ddp_clip is not None:
        if not isinstance(encoding, SkellamParams):
            raise ProtocolError("distributed DP is configured: refusing a noiseless fixed-point encoding")
        if (
            encoding.noise_multiplier <= 0.0
            or encoding.clip != policy.ddp_clip
            or encoding.bits != policy.bits
        ):
            raise ProtocolError("the Skellam encoding contradicts this client's dp/secagg configuration")
        if encoding.padded_dim != vector_length:
            raise ProtocolError("the Skellam encoding does not match the vector length")
        return
    if not isinstance(encoding, FixedPointCodec):
        raise ProtocolError("plain secure aggregation is configured: expected a fixed-point encoding")
    if encoding.bits != policy.bits or encoding.clip != policy.clip_range:
        raise ProtocolError("the fixed-point encoding contradicts this client's secagg configuration")


@dataclass(frozen=True)
class EncodedUpdate:
    """A client's delta as residues, with client-side statistics that never leave the client."""

    residues: npt.NDArray[np.int64]
    clipped: int


def encode_update(
    update: Update, encoding: Encoding, *, rotation_seed: int, rng: np.random.Generator, weight: float = 1.0
) -> EncodedUpdate:
    """Flatten the delta and encode it for secure aggregation.

    ``weight`` (fixed point only, in [0, 1]) multiplies the delta first: the client's share of an
    example-weighted mean (:func:`fedlab.core.update.example_weight`).

    Fixed point: each coordinate clipped to [-clip, clip], scaled, stochastically rounded, then the
    number of clipped coordinates appended (:func:`fedlab.secagg.encoding.encode_counted`).
    Skellam: rotate (public ``rotation_seed``), clip to L2 norm c, scale, conditional rounding,
    add this client's Skellam noise share, reduce mod 2^bits (:func:`fedlab.privacy.skellam.encode_client`).
    """
    if not 0.0 <= weight <= 1.0 or (weight != 1.0 and isinstance(encoding, SkellamParams)):
        raise ValueError(f"weight must be in [0, 1] (and 1 under distributed DP), got {weight}")
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in update.arrays])
    if weight != 1.0:
        flat *= weight
    if isinstance(encoding, SkellamParams):
        result = encode_client(flat, encoding, seed=rotation_seed, rng=rng)
        return EncodedUpdate(result.values, int(result.was_clipped))
    encoded = encode_counted(flat, encoding, rng=rng)
    return EncodedUpdate(encoded.values.view(np.int64), encoded.clipped)
