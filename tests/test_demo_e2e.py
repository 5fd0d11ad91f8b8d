"""`wrl demo` as a user runs it: a real subprocess, the real embedded model, a Prefect run.

Slow (the model conversion and 24 CPU generations take about two minutes): run by `make test`
after the fast suite, and so by CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _wrl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(cwd / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "flows", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_demo_runs_the_slice_then_reruns_from_cache(tmp_path, embedded_model_cache):
    config = PROJECT_ROOT / "configs" / "demo.yaml"
    models = f"storage.model_cache={embedded_model_cache}"
    first = _wrl("demo", "--config", str(config), "--set", models, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "generations@0" in first.stdout and "Total" in first.stdout

    recipe = load_recipe(config)
    storage = open_storage(recipe.storage.model_copy(update={"root": tmp_path / recipe.storage.root}))
    rows = storage.datasets.read(DatasetRef("generations", 0)).to_pylist()
    assert len(rows) == recipe.data.limit == 24
    assert all(r["error"] is None and len(r["text"].strip()) >= 20 for r in rows), rows[
        :2
    ]  # zh has no spaces
    assert storage.datasets.lineage(DatasetRef("generations", 0))["inputs"] == ["instructions@0"]

    second = _wrl("demo", "--config", str(config), "--set", models, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "generate: cache hit" in log and "ingest: cache hit" in log
    assert "transformers: loaded" not in log  # the model was not even loaded
    with storage.catalog.connect() as con:
        statuses = con.execute("SELECT stage, status FROM stage_runs ORDER BY started_at").fetchall()
    assert statuses == [
        ("ingest", "completed"),
        ("generate", "completed"),
        ("ingest", "cached"),
        ("generate", "cached"),
    ]
