"""Bad [simulation] values give one-line errors naming the key."""

import pytest

from fedlab.core.config import config_from_dict
from fedlab.core.errors import ConfigError
from fedlab.sim.devices import read_trace


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"workers": -1}, "simulation.workers"),
        ({"workers": 1.5}, "simulation.workers"),
        ({"devices": "phones"}, "simulation.devices"),
        ({"devices": "trace"}, "simulation.device_trace"),
        ({"device_trace": "devices.csv"}, "simulation.devices"),
        ({"devices": "trace", "device_trace": "/no/such/file.csv"}, "simulation.device_trace"),
        ({"step_seconds": 0}, "simulation.step_seconds"),
        ({"speed_sigma": -0.1}, "simulation.speed_sigma"),
        ({"upload_mbps": 0}, "simulation.upload_mbps"),
        ({"download_mbps": -1}, "simulation.download_mbps"),
        ({"bandwidth_sigma": float("nan")}, "simulation.bandwidth_sigma"),
        ({"latency_seconds": -1}, "simulation.latency_seconds"),
        ({"availability": 0.0}, "simulation.availability"),
        ({"availability": 1.5}, "simulation.availability"),
        ({"dropout": 1.0}, "simulation.dropout"),
        ({"round_deadline": -1.0}, "simulation.round_deadline"),
        ({"target_updates": -2}, "simulation.target_updates"),
        ({"ray_address": 7}, "simulation.ray_address"),
    ],
)
def test_bad_simulation_values_name_the_key_in_one_line(values, key):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"simulation": values})
    message = str(info.value)
    assert message.startswith(key + ":"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("client,speed\n0,1.0\n", "no row for client 1"),
        ("client,speed\n0,1.0\n1,-2\n", "row 3: speed out of range"),
        ("client,speed\n0,fast\n1,1\n", "row 2: speed is not a number"),
        ("client,colour\n0,red\n1,blue\n", "unknown columns colour"),
        ("speed\n1.0\n", "exactly one of the columns"),
        ("class,weight,dropout\nphone,1,1.5\n", "dropout out of range"),
    ],
)
def test_bad_device_traces_give_one_line_errors(tmp_path, text, needle):
    from fedlab.core.config import SimulationSection

    path = tmp_path / "trace.csv"
    path.write_text(text)
    section = SimulationSection(devices="trace", device_trace=str(path))
    with pytest.raises(ConfigError) as info:
        read_trace(path, section, num_clients=2, seed=0)
    assert str(info.value).startswith("simulation.device_trace:")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_device_classes_are_assigned_by_weight(tmp_path):
    from fedlab.core.config import SimulationSection

    path = tmp_path / "classes.csv"
    path.write_text("class,weight,speed,availability\nphone,3,0.5,0.8\nlaptop,1,2.0,1.0\n")
    section = SimulationSection(devices="trace", device_trace=str(path))
    profiles = read_trace(path, section, num_clients=4000, seed=0)
    share_slow = float((profiles.speed == 0.5).mean())
    assert 0.70 < share_slow < 0.80
    assert set(profiles.availability.tolist()) == {0.8, 1.0}
