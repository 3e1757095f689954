from pathlib import Path

import pytest

from fedlab.core.config import apply_overrides, config_from_dict, load_config
from fedlab.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["digits.toml", "digits-dp.toml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "simulations" / name)
    assert config.data.num_clients == 10


def test_round_trip_through_dict_keeps_every_value():
    config = load_config(REPO / "simulations" / "digits-dp.toml")
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"dp": {"mode": "dpsgd", "noise_multiplier": -0.5}}, "dp.noise_multiplier"),
        ({"dp": {"delta": 1.0}}, "dp.delta"),
        ({"dp": {"delta": 0.0}}, "dp.delta"),
        ({"data": {"num_clients": 0}}, "data.num_clients"),
        ({"train": {"batch_size": "big"}}, "train.batch_size"),
        ({"train": {"lr": True}}, "train.lr"),
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ({"training": {"lr": 0.1}}, "training"),
        ({"data": {"dataset": "files", "path": "/definitely/not/here"}}, "data.path"),
        ({"dp": {"mode": "dpsgd"}}, "dp.noise_multiplier"),
        ({"dp": {"mode": "dpsgd", "noise_multiplier": 1.0, "target_epsilon": 3.0}}, "dp.noise_multiplier"),
        ({"model": {"kind": "rnn"}}, "model.kind"),
        ({"secagg": {"enabled": True, "weighting": "by-size"}}, "secagg.weighting"),
        ({"secagg": {"enabled": True, "max_weight": 0}}, "secagg.max_weight"),
        ({"secagg": {"enabled": True, "neighbours": 6, "threshold": 3}}, "secagg.threshold"),
        ({"secagg": {"enabled": True, "neighbours": 4, "threshold": 2}}, "secagg.threshold"),
        ({"secagg": {"enabled": True, "neighbours": 4, "threshold": 5}}, "secagg.threshold"),
        ({"secagg": {"enabled": True, "threshold": 1}}, "secagg.threshold"),
        (
            {
                "secagg": {"enabled": True, "weighting": "examples"},
                "dp": {"mode": "distributed", "target_epsilon": 8.0},
            },
            "secagg.weighting",
        ),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw)
    message = str(err.value)
    assert message.startswith(key + ":") or message.startswith(key + " ")
    assert "\n" not in message


def test_secagg_threshold_must_be_a_strict_majority_of_the_neighbours():
    for neighbours, threshold in ((0, 0), (5, 3), (6, 4), (4, 4), (0, 3), (7, 0), (2, 2)):
        section = config_from_dict({"secagg": {"neighbours": neighbours, "threshold": threshold}}).secagg
        assert (section.neighbours, section.threshold) == (neighbours, threshold)
    with pytest.raises(
        ConfigError, match=r"^secagg\.threshold: must be more than half of secagg\.neighbours"
    ):
        config_from_dict({"secagg": {"neighbours": 10, "threshold": 5}})
    with pytest.raises(ConfigError, match=r"^secagg\.threshold: must be <= secagg\.neighbours; got 5 > 4$"):
        config_from_dict({"secagg": {"neighbours": 4, "threshold": 5}})


def test_int_accepted_where_float_expected_but_not_the_reverse():
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"run\.rounds"):
        config_from_dict({"run": {"rounds": 2.5}})


def test_overrides_parse_toml_literals_and_strings():
    merged = apply_overrides({}, ["train.lr=0.5", "dp.mode=dpsgd", 'train.device="cpu"', "run.rounds=3"])
    config = config_from_dict({**merged, "dp": {**merged["dp"], "noise_multiplier": 1.0}})
    assert config.train.lr == 0.5 and config.dp.mode == "dpsgd" and config.run.rounds == 3
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_overrides({}, ["rounds=3"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nrounds = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((REPO / "simulations").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_simulation_config_loads(path):
    config = load_config(path)
    assert config.run.rounds >= 1 and config.data.num_clients >= 1


def test_secure_weighting_defaults_to_examples_except_under_distributed_dp():
    plain = config_from_dict({"secagg": {"enabled": True, "max_weight": 500}})
    assert plain.secure_weight_cap() == 500
    uniform = config_from_dict({"secagg": {"enabled": True, "weighting": "uniform"}})
    assert uniform.secure_weight_cap() is None
    ddp = config_from_dict(
        {"secagg": {"enabled": True}, "dp": {"mode": "distributed", "target_epsilon": 8.0}}
    )
    assert ddp.secure_weight_cap() is None
