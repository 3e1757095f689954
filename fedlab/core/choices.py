"""The closed vocabularies of a run configuration, and the one-line checks every section uses."""

from __future__ import annotations

import math
from collections.abc import Sequence

from fedlab.core.errors import ConfigError

DATASETS = ("digits", "synthetic", "files")
PARTITIONERS = ("iid", "dirichlet", "shards")
MODELS = ("logreg", "mlp", "cnn")
OPTIMIZERS = ("sgd", "adam")
SECAGG_WEIGHTINGS = ("auto", "examples", "uniform")
DP_MODES = ("none", "dpsgd", "central", "distributed")
CLIENT_ACCOUNTANTS = ("rdp", "prv")
SERVER_ACCOUNTANTS = ("pld", "prv", "rdp")
SAMPLING = ("auto", "fraction", "poisson")
BACKENDS = ("flower", "inline")
CLIENT_RANDOMNESS = ("seeded", "secret")
DEVICE_MODELS = ("distribution", "trace")


def config_error(key: str, problem: str) -> ConfigError:
    """The error for a bad value of ``key``: ``key: problem``."""
    return ConfigError(f"{key}: {problem}")


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
