"""verl's environment for the tests that run in it (`make verl-cpu` builds `.verl-venv`; or
WRL_VERL_PYTHON names its python). CI has none: those tests are skipped there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT


def verl_python() -> Path | None:
    named = os.environ.get("WRL_VERL_PYTHON")
    python = Path(named) if named else PROJECT_ROOT / ".verl-venv" / "bin" / "python"
    return python if python.exists() else None


needs_verl = pytest.mark.skipif(
    verl_python() is None, reason="no verl environment (make verl-cpu, or WRL_VERL_PYTHON=<its python>)"
)
