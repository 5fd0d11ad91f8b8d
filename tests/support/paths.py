"""Where the project and the shared benchmark files are (for tests and the drills)."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARED_BENCHMARKS = PROJECT_ROOT.parent / "shared" / "benchmarks"
