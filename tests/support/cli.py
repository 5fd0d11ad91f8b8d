"""The `wrl` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys


def wrl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "flows", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
