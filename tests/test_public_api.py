"""The public names: importable where the README says, each with a runnable example, listed there."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["fedlab", "fedlab.flower", "fedlab.privacy", "fedlab.training"]


def public(package: str) -> list[tuple[str, object]]:
    module = importlib.import_module(package)
    return [(name, getattr(module, name)) for name in module.__all__]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_function_and_class_has_a_docstring_with_a_runnable_example(package: str) -> None:
    missing = [
        name
        for name, obj in public(package)
        if callable(obj) and ">>>" not in (getattr(obj, "__doc__", None) or "")
    ]
    assert not missing, f"{package}: no example in the docstring of {missing}"


def test_the_names_for_your_own_flower_app_are_listed_in_the_readme() -> None:
    readme = REPO.joinpath("README.md").read_text()
    listed = set(re.findall(r"`([A-Za-z_]+)[(`]", readme))
    for package in ["fedlab", "fedlab.flower"]:
        unlisted = [name for name, _ in public(package) if name not in listed]
        assert not unlisted, f"{package}: not in README.md: {unlisted}"


def test_import_fedlab_alone_imports_neither_flower_nor_torch() -> None:
    probe = "import sys, fedlab; print(sorted({'flwr', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    import fedlab

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = fedlab.Nope  # type: ignore[attr-defined]
