"""Two whole pipelines started at once on one storage root, as two users would start them
(`python -m flows run build-dataset`, each on its own local Prefect API in one PREFECT_HOME):
both finish, each stage is computed once and the other run waits for it and reuses it, and every
dataset version the catalog lists reads back whole."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import curation_recipe as _recipe

pytestmark = pytest.mark.slow


def test_two_pipelines_started_at_once_on_one_store_both_finish_and_compute_each_stage_once(
    tiny_model_dir, tmp_path
):
    recipe = _recipe(tmp_path, tiny_model_dir)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows", "run", "build-dataset", "--config", recipe]
    procs = [subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]

    storage = open_storage(load_recipe(recipe).storage)
    with storage.catalog.connect() as con:
        runs = con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()
        per_stage = con.execute(
            "SELECT stage, list(status ORDER BY status) FROM stage_runs GROUP BY stage ORDER BY stage"
        ).fetchall()
        calls_by_status = dict(
            con.execute(
                "SELECT s.status, sum(u.requests) FROM stage_runs s JOIN llm_usage u USING (stage_run_id) "
                "GROUP BY s.status"
            ).fetchall()
        )
        versions = con.execute("SELECT dataset, version, num_rows FROM dataset_versions").fetchall()
    assert runs == [("completed", 2)]
    # Each stage ran in both pipelines: computed by one, a cache hit (after waiting) in the other.
    assert dict(per_stage) == {
        stage: ["cached", "completed"] for stage in ("generate", "ingest", "order", "score", "select")
    }
    assert calls_by_status.get("cached", 0) == 0 and calls_by_status["completed"] > 0
    # One version per stage output (nobody wrote one twice), each readable with its recorded rows.
    assert sorted(d for d, _, _ in versions) == [
        "generations", "instructions", "judgments", "ladder_exclusions", "ladders", "selections"
    ]  # fmt: skip
    assert [d for d, v, _ in versions if v > 0] == []
    for dataset, version, num_rows in versions:
        assert storage.datasets.read(DatasetRef(dataset, version)).num_rows == num_rows
