"""The closed vocabularies of a run configuration, and the one-line checks every section uses."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedlab.core.errors import ConfigError

DATASETS = ("digits", "synthetic", "files", "text", "stdlib", "hub")
TEXT_LEVELS = ("byte", "char")
FINETUNE_MODES = ("full", "lora")
PARTITIONERS = ("iid", "dirichlet", "shards")


class ModelKind(StrEnum):
    """The model families a run trains (``model.kind``); each member equals its TOML string.

    >>> ModelKind("mlp") is ModelKind.MLP
    True
    """

    LOGREG = "logreg"
    MLP = "mlp"
    CNN = "cnn"
    LSTM = "lstm"
    TRANSFORMER = "transformer"


MODELS = tuple(kind.value for kind in ModelKind)


class TrainerKind(StrEnum):
    """Who trains a round's clients in the inline simulator (``simulation.trainer``).

    >>> TrainerKind("auto") is TrainerKind.AUTO
    True
    """

    SEQUENTIAL = "sequential"
    COHORT = "cohort"
    AUTO = "auto"


TRAINERS = tuple(kind.value for kind in TrainerKind)
OPTIMIZERS = ("sgd", "adam")
SECAGG_WEIGHTINGS = ("auto", "examples", "uniform")
DP_MODES = ("none", "dpsgd", "central", "distributed")


class AccountantKind(StrEnum):
    """The accounting methods (``dp.accountant``); each member equals its TOML string.

    DP-SGD on a client accounts with Opacus (RDP or PRV); the server's mechanisms with
    dp_accounting's PLD or RDP, or fedlab's own PRV. The factories that build them match on
    these members.

    >>> AccountantKind("pld") is AccountantKind.PLD
    True
    """

    PLD = "pld"
    PRV = "prv"
    RDP = "rdp"


class AggregationKind(StrEnum):
    """How the server combines a round's updates (``server.aggregation``).

    >>> AggregationKind("median") is AggregationKind.MEDIAN
    True
    """

    FEDAVG = "fedavg"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed_mean"
    NORM_BOUNDED = "norm_bounded"


CLIENT_ACCOUNTANTS = (AccountantKind.RDP.value, AccountantKind.PRV.value)
SERVER_ACCOUNTANTS = (AccountantKind.PLD.value, AccountantKind.PRV.value, AccountantKind.RDP.value)
SAMPLING = ("auto", "fraction", "poisson")
BACKENDS = ("flower", "inline")
CLIENT_RANDOMNESS = ("seeded", "secret")
DEVICE_MODELS = ("distribution", "trace")


def config_error(key: str, problem: str) -> ConfigError:
    r"""The error for a bad value of ``key``: ``key: problem``, on one line.

    A key that is not printable (a TOML key may hold a line break) is shown escaped.

    >>> str(config_error("data.x\ny", "unknown key"))
    "'data.x\\ny': unknown key"
    """
    shown = key if key.isprintable() else repr(key)
    return ConfigError(f"{shown}: {problem}")


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a value outside ``choices``."""
    if value not in choices:
        raise config_error(key, f"must be one of {', '.join(choices)}; got {value!r}")


def check_min(key: str, value: float, low: float, *, inclusive: bool = True) -> None:
    """Refuse a value below ``low`` (or equal to it, unless ``inclusive``), and NaN."""
    if math.isnan(value) or (value < low if inclusive else value <= low):
        op = ">=" if inclusive else ">"
        raise config_error(key, f"must be {op} {low:g}; got {value!r}")


def check_open_unit(key: str, value: float) -> None:
    """Refuse a value outside (0, 1)."""
    if not 0.0 < value < 1.0:
        raise config_error(key, f"must be in (0, 1); got {value!r}")


def check_type(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type annotation, accepting int for float."""
    allowed = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise config_error(key, "too large for a float") from None
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            if not -(1 << 63) <= value < 1 << 63:
                raise config_error(key, f"out of range: an integer of {value.bit_length()} bits")
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
        if isinstance(kind, type) and issubclass(kind, StrEnum) and isinstance(value, str):
            return value  # the section checks the choice and resolves it
    names = " or ".join(k.__name__ for k in allowed if k is not type(None))
    raise config_error(key, f"must be of type {names}; got {type(value).__name__} {value!r}")


def path_exists(path: str, *, file: bool = False) -> bool:
    """Whether ``path`` exists (is a file, with ``file``); False for a name the OS refuses.

    >>> path_exists("x" * 5000), path_exists("/")
    (False, True)
    """
    try:
        return Path(path).is_file() if file else Path(path).exists()
    except (OSError, ValueError):
        return False
