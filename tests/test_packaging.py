"""The constraints file (the exact tested set the README installs) agrees with pyproject's ranges.

``pyproject.toml`` declares ranges, so that fedlab installs beside other packages; ``constraints.txt``
pins the set CI installed and tested. Every dependency pyproject declares (dev extra included) is
pinned there, every pin satisfies its range, and the pins name no package twice.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in found, f"constraints.txt pins {name} twice"
        found[key] = version.strip()
    return found


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    for requirement in declared():
        key = canonicalize_name(requirement.name)
        assert key in pinned, f"{requirement.name} is declared but not pinned in constraints.txt"
        pin, allowed = pinned[key], requirement.specifier
        assert allowed.contains(pin, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pin}, outside pyproject's {allowed}"
        )


def test_the_running_python_is_a_declared_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    supported = Requirement(f"python{project['requires-python']}").specifier
    running = ".".join(str(part) for part in sys.version_info[:3])
    assert supported.contains(running), f"Python {running} is outside requires-python {supported}"
    for minor in ("3.11", "3.12", "3.13"):
        assert supported.contains(f"{minor}.0"), f"Python {minor} must stay declared"
