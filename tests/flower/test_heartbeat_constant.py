"""The Flower constants that fedlab's SuperNode launcher patches still exist (an upgrade could drop them)."""

import importlib

import pytest

from fedlab.flower.deploy import HEARTBEAT_MODULES, DeploymentError, supernode_main


def test_every_patched_module_has_a_numeric_heartbeat_interval():
    for name in HEARTBEAT_MODULES:
        value = importlib.import_module(name).HEARTBEAT_DEFAULT_INTERVAL
        assert isinstance(value, int | float) and not isinstance(value, bool) and value > 0, name


def test_a_flower_without_the_constant_is_refused_in_one_line(monkeypatch):
    module = importlib.import_module(HEARTBEAT_MODULES[0])
    monkeypatch.delattr(module, "HEARTBEAT_DEFAULT_INTERVAL")
    with pytest.raises(DeploymentError, match="HEARTBEAT_DEFAULT_INTERVAL not found"):
        supernode_main(["supernode", "--heartbeat-interval", "10"])
