"""The code passes the project's linter (``[tool.ruff]`` in pyproject.toml): CI runs the
README's test command, so a line the linter refuses fails there, not only in an editor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    """ruff from the environment running the tests (the dev extra installs it)."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return [found]


def test_the_code_passes_ruff() -> None:
    result = subprocess.run([*_ruff(), "check", "autocompress", "tests", "benchmarks"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
