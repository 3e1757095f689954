"""Fixtures of the fake-Grid tests: the ServerApp's process identity and the fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_grid import FakeClock, install_clock, server_identity


@pytest.fixture
def server_process() -> Iterator[None]:
    """Run the test as a ServerApp process (Flower's ``Message(...)`` reads the identity)."""
    with server_identity():
        yield


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake clock, installed into the ServerApp's waiting loops."""
    return install_clock(monkeypatch)
