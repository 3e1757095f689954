"""Errors of the secure-aggregation protocol (all are :class:`fedlab.core.errors.FedlabError`)."""

from __future__ import annotations

from enum import IntEnum

from fedlab.core.errors import FedlabError


class Stage(IntEnum):
    """The four protocol stages, in order (a dropout or an abort names one of them)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASK = 3


class SecAggError(FedlabError):
    """Base class of every secure-aggregation error."""


class DecryptionError(SecAggError):
    """An encrypted share failed authentication (tampered, replayed or re-routed)."""


class ShamirError(SecAggError):
    """Shares cannot be split or reconstructed (too few, duplicated or inconsistent)."""


class EncodingError(SecAggError, ValueError):
    """A fixed-point encoding is misconfigured (e.g. a sum could wrap the modulus)."""


class ProtocolError(SecAggError):
    """A message breaks the protocol; the party that detects it refuses to go on."""


class BothSharesRequestedError(ProtocolError):
    """The server asked one client for both secrets of the same neighbour."""


class RoundAbortedError(SecAggError):
    """The server stopped the round; nothing about any input was revealed.

    Attributes:
        stage: The stage at which the round stopped.
        reason: A one-line human-readable reason.

    """

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(f"secure aggregation aborted at stage {stage.name}: {reason}")
        self.stage = stage
        self.reason = reason
