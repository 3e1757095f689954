"""``fedlab --version`` names the installed distribution and its version, and exits 0."""

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_version_prints_the_installed_distribution_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedlab", "--version"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"fedlab-privacy {version('fedlab-privacy')}"
