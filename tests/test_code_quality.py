"""The code stays typed, linted and layered (DESIGN.md's rules, checked on every run)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_mypy_strict_is_clean():
    result = run_tool(str(BIN / "mypy"), "fedlab")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean():
    result = run_tool(str(BIN / "ruff"), "check", "fedlab", "tests", "server", "clients", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_layers_hold():
    result = run_tool(str(BIN / "lint-imports"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_global_numpy_rng_in_the_library():
    offenders = []
    for path in (REPO / "fedlab").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "np.random." in line and not any(
                ok in line for ok in ("default_rng", "Generator", "SeedSequence")
            ):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
            if "torch.manual_seed(" in line or "random.seed(" in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
