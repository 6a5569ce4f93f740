"""The core and the backend contract (cnnlens/core/backend.py) type-check strictly: ``mypy --strict``
over cnnlens/core reports no error.

Skipped when mypy is not installed (it comes with the ``dev`` extra); on CI (``CI=1``), which installs
it, a missing mypy fails instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "cnnlens/core"]


def require_mypy() -> None:
    """Skip when mypy is missing (fail on CI, which must install it)."""
    if importlib.util.find_spec("mypy") is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must install mypy (pip install -e '.[dev]')", pytrace=False)
    pytest.skip("mypy is not installed (pip install -e '.[dev]' or pip install mypy)")


def test_core_type_checks_strictly() -> None:
    """``mypy --strict`` over cnnlens/core (the backend contract, core/backend.py, included) finds nothing."""
    require_mypy()
    result = subprocess.run(COMMAND, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, (
        f"{' '.join(COMMAND[1:])} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
    )
