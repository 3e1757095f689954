"""``[server]``: aggregation choices and the combinations privacy refuses."""

import pytest

from fedlab.core.choices import AggregationKind
from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError


def test_robust_aggregations_are_accepted_under_dpsgd_and_without_dp() -> None:
    for mode in ("none", "dpsgd"):
        dp = {"mode": mode} if mode == "none" else {"mode": mode, "noise_multiplier": 1.0}
        config = config_from_dict({"dp": dp, "server": {"aggregation": "trimmed_mean", "trim_fraction": 0.2}})
        assert config.server.aggregation is AggregationKind.TRIMMED_MEAN


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"dp": {"mode": "central", "noise_multiplier": 1.0}, "server": {"aggregation": "median"}},
            "central DP",
        ),
        ({"secagg": {"enabled": True}, "server": {"aggregation": "median"}}, "only the sum"),
        ({"server": {"aggregation": "norm_bounded"}}, "needs a bound"),
        ({"server": {"aggregation": "mean"}}, "must be one of"),
        ({"server": {"trim_fraction": 0.5}}, r"\[0, 0.5\)"),
        ({"server": {"max_update_norm": float("nan")}}, "finite and > 0"),
        ({"server": {"max_examples": 0}}, ">= 1"),
    ],
)
def test_what_cannot_hold_is_one_config_error(raw, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
