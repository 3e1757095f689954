"""Option combinations that would break the accountant's assumptions are refused at config time.

F5: with ``simulation.target_updates > 0`` a round keeps the first arrivals and drops the rest, so
one client's presence can displace another's update: the sum changes by up to 2C while user-level
DP accounts for C. Each refusal is one line naming the key, and ``fedlab simulate`` exits with 2.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fedlab.cli.main import app
from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError

CENTRAL = {"mode": "central", "noise_multiplier": 1.0}
DISTRIBUTED = {"mode": "distributed", "noise_multiplier": 1.0}


def build(**sections):
    return config_from_dict(sections)


@pytest.mark.parametrize("dp", [CENTRAL, DISTRIBUTED])
def test_target_updates_under_user_level_dp_is_refused(dp):
    secagg = {"enabled": True} if dp["mode"] == "distributed" else {}
    with pytest.raises(ConfigError, match=r"^simulation\.target_updates: .*2C"):
        build(dp=dp, secagg=secagg, simulation={"target_updates": 5})


def test_target_updates_stays_allowed_where_no_user_level_accountant_relies_on_it():
    build(simulation={"target_updates": 5})  # no DP
    build(dp={"mode": "dpsgd", "noise_multiplier": 1.0}, simulation={"target_updates": 5})  # per client
    build(dp=CENTRAL, simulation={"round_deadline": 30.0})  # a deadline only drops, never displaces


@pytest.mark.parametrize("dp", [CENTRAL, DISTRIBUTED])
def test_fixed_size_sampling_under_user_level_dp_is_refused(dp):
    # The accountants assume Poisson sampling; a fixed-size cohort is a different mechanism.
    secagg = {"enabled": True} if dp["mode"] == "distributed" else {}
    with pytest.raises(ConfigError, match=r"^server\.sampling: .*Poisson"):
        build(dp=dp, secagg=secagg, server={"sampling": "fraction", "fraction_train": 0.5})
    build(dp=dp, secagg=secagg, server={"sampling": "fraction", "fraction_train": 1.0})  # everyone


def test_central_noise_with_secure_aggregation_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"^dp\.mode: 'central'.*'distributed'"):
        build(dp=CENTRAL, secagg={"enabled": True})


def test_the_cli_refuses_the_combination_with_one_line_and_exit_code_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        '[dp]\nmode = "central"\nnoise_multiplier = 1.0\n[simulation]\ntarget_updates = 3\n', encoding="utf-8"
    )
    result = CliRunner().invoke(app, ["simulate", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "simulation.target_updates" in lines[0], result.output
    assert not (tmp_path / "run").exists()
