"""Two real processes on one storage root: both finish and nothing is lost, or one fails clearly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from configs.schema import StorageConfig
from storage import DatasetRef, open_storage
from tests.support.paths import PROJECT_ROOT

# A drill with real processes (tens of seconds): run by `make test` after the fast suite.
pytestmark = pytest.mark.slow

N = 15


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.storage_worker", *args],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    root = str(tmp_path / "store")
    procs = [_worker(root, "alpha", str(N)), _worker(root, "beta", str(N))]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err

    storage = open_storage(StorageConfig(root=root))
    with storage.catalog.connect() as con:
        assert con.execute(
            "SELECT count(*), count(DISTINCT run_id) FROM runs WHERE status = 'completed'"
        ).fetchone() == (2 * N, 2 * N)
        assert con.execute("SELECT count(*) FROM stage_runs WHERE status = 'completed'").fetchone() == (
            2 * N,
        )
        assert con.execute("SELECT count(*) FROM stage_cache").fetchone() == (2 * N,)
        versions = [
            r[0] for r in con.execute("SELECT version FROM dataset_versions ORDER BY version").fetchall()
        ]
        links = con.execute(
            "SELECT dataset, version FROM stage_run_datasets WHERE direction = 'output'"
        ).fetchall()
    assert versions == list(range(2 * N))  # every commit registered once, no gaps, no duplicates
    assert sorted(v for _, v in links) == versions
    seen = set()
    for v in versions:  # every version still holds exactly what its writer wrote
        row = storage.datasets.read(DatasetRef("shared", v)).to_pylist()[0]
        assert storage.datasets.lineage(DatasetRef("shared", v)) == {"writer": row["writer"], "i": row["i"]}
        seen.add((row["writer"], row["i"]))
    assert seen == {(w, i) for w in ("alpha", "beta") for i in range(N)}


def test_a_writer_that_cannot_get_the_lock_fails_clearly_and_writes_nothing(tmp_path):
    root = str(tmp_path / "store")
    open_storage(StorageConfig(root=root))  # migrate first
    holder = _worker(root, "--hold", "5")
    assert holder.stdout.readline().strip() == "holding"
    blocked = _worker(root, "late", "1", "1.0")
    _, err = blocked.communicate(timeout=60)
    holder.communicate(timeout=60)
    assert blocked.returncode == 3
    assert "is busy" in err and f"process {holder.pid}" in err and "lock_timeout_s" in err

    storage = open_storage(StorageConfig(root=root))
    with storage.catalog.connect() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert storage.datasets.names() == []


def test_two_processes_reaching_the_same_stage_compute_it_once(tmp_path):
    import json

    import pyarrow as pa

    root = tmp_path / "store"
    open_storage(StorageConfig(root=root)).datasets.write("source", pa.table({"x": [1]}), lineage={})
    calls = tmp_path / "calls.txt"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.support.stage_worker", str(root), str(calls)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert calls.read_text().splitlines() == ["computed"]  # the second process waited, then reused
    assert sorted(r["cached"] for r in results) == [False, True]
    assert {r["out"] for r in results} == {"out@0"}
