import dataclasses
import json

import numpy as np
import pytest

from fedlab.privacy import GaussianEvent


def test_event_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        GaussianEvent(1.0, 0.01, 10)  # type: ignore[misc]
    event = GaussianEvent(noise_multiplier=1.0, sample_rate=0.01, steps=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.steps = 11  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": -0.1, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": float("inf"), "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": float("nan"), "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1.5}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": True}, "steps"),
        ({"noise_multiplier": "1.0", "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
    ],
)
def test_event_rejects_invalid_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GaussianEvent(**kwargs)  # type: ignore[arg-type]


def test_event_accepts_boundaries_and_normalises_numpy_scalars() -> None:
    event = GaussianEvent(noise_multiplier=np.float32(0.0), sample_rate=np.float64(1.0), steps=np.int64(3))
    assert type(event.noise_multiplier) is float
    assert type(event.sample_rate) is float
    assert type(event.steps) is int
    assert event == GaussianEvent(noise_multiplier=0.0, sample_rate=1.0, steps=3)


def test_event_dict_round_trip_through_json() -> None:
    event = GaussianEvent(noise_multiplier=1.1, sample_rate=0.004, steps=250)
    assert GaussianEvent.from_dict(json.loads(json.dumps(event.to_dict()))) == event


@pytest.mark.parametrize(
    "data",
    [
        {"noise_multiplier": 1.0, "sample_rate": 0.1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "extra": 0},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1},
        [1.0, 0.1, 1],
    ],
)
def test_event_from_dict_rejects_malformed(data: object) -> None:
    with pytest.raises(ValueError):
        GaussianEvent.from_dict(data)  # type: ignore[arg-type]
