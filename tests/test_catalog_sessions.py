"""Catalog connections: each access opens DuckDB anew (~20 ms), so a session shares one, and a
process migrates a catalog file once."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from configs.schema import StorageConfig
from storage import DatasetRef, open_storage
from storage import catalog as catalog_module


@pytest.fixture
def opens(monkeypatch):
    """Counts the catalog's `duckdb.connect` calls."""
    calls = []
    real = duckdb.connect

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog_module.duckdb, "connect", counting)
    return calls


def _stage_run(storage, stage: str = "s") -> str:
    return storage.catalog.start_stage_run(
        run_id=None, stage=stage, stage_version=1, config_hash="h", cache_key=f"k-{stage}", code_version="c",
        prefect_flow_run_id=None, prefect_task_run_id=None, inputs={"x": DatasetRef("x", 0)},
    )  # fmt: skip


def test_a_session_shares_one_connection_and_commits_once(tmp_path, opens):
    storage = open_storage(StorageConfig(root=tmp_path / "store"))
    opens.clear()
    with storage.catalog.session("test"):
        assert storage.catalog.lookup_cache("k-s") is None
        run = _stage_run(storage)
        storage.catalog.finish_stage_run(run, status="completed", outputs={"y": DatasetRef("y", 0)})
        assert storage.catalog.producers([DatasetRef("y", 0)]) == {}  # not a registered version
    assert len(opens) == 1
    statuses = storage.catalog.query("SELECT status FROM stage_runs")["status"].tolist()
    assert statuses == ["completed"] and len(opens) == 2  # outside a session: a connection per access


def test_a_failed_session_writes_nothing(tmp_path):
    storage = open_storage(StorageConfig(root=tmp_path / "store"))
    with pytest.raises(RuntimeError, match="boom"), storage.catalog.session("test"):
        _stage_run(storage, "first")
        _stage_run(storage, "second")
        raise RuntimeError("boom")
    assert storage.catalog.query("SELECT count(*) AS n FROM stage_runs")["n"].item() == 0
    _stage_run(storage, "after")  # and the thread is out of the session: its own transaction
    assert storage.catalog.query("SELECT stage FROM stage_runs")["stage"].tolist() == ["after"]


def test_a_process_migrates_a_catalog_file_once(tmp_path, opens):
    config = StorageConfig(root=tmp_path / "store")
    open_storage(config)
    open_storage(config)
    assert len(opens) == 1
    (tmp_path / "store" / "catalog.duckdb").unlink()  # a new file is migrated again
    storage = open_storage(config)
    assert len(opens) == 2
    storage.datasets.write("t", pa.table({"a": [1]}), lineage={})  # its tables are there
    assert storage.catalog.query("SELECT dataset FROM dataset_versions")["dataset"].tolist() == ["t"]


def test_recent_runs_and_dataset_versions_summary_return_the_catalogs_rows(tmp_path):
    import time

    catalog = open_storage(StorageConfig(root=tmp_path / "store")).catalog
    common = dict(recipe="r", recipe_path=None, code_version="c", prefect_flow_run_id=None)
    older = catalog.start_run(flow="build-dataset", config_hash="o" * 64, **common)
    done = catalog.start_stage_run(
        run_id=older, stage="ingest", stage_version=1, config_hash="a" * 64, cache_key="k1", code_version="c",
        prefect_flow_run_id=None, prefect_task_run_id=None, inputs={},
    )  # fmt: skip
    catalog.finish_stage_run(
        done, status="completed", outputs={"instructions": DatasetRef("instructions", 0)}
    )
    catalog.finish_run(older, status="completed")
    time.sleep(0.01)
    newer = catalog.start_run(flow="train", config_hash="n" * 64, **common)
    running = catalog.start_stage_run(
        run_id=newer, stage="train", stage_version=3, config_hash="b" * 64, cache_key="k2", code_version="c",
        prefect_flow_run_id=None, prefect_task_run_id=None, inputs={},
    )  # fmt: skip

    latest = catalog.recent_runs(limit=1)
    assert len(latest) == 1 and list(latest[0]) == [
        "run", "flow", "recipe", "run_status", "started", "stage", "stage_status", "seconds", "config",
    ]  # fmt: skip
    assert latest[0] | {"started": None} == {
        "run": newer[:12], "flow": "train", "recipe": "r", "run_status": "running", "started": None,
        "stage": "train", "stage_status": "running", "seconds": None, "config": "b" * 12,
    }  # fmt: skip
    both = catalog.recent_runs()
    assert [(r["run"], r["stage"], r["stage_status"]) for r in both] == [
        (newer[:12], "train", "running"), (older[:12], "ingest", "completed"),
    ]  # fmt: skip
    assert both[1]["seconds"] >= 0 and len(both[1]["started"]) == len("2025-01-01 00:00:00")

    catalog.register_dataset_version(DatasetRef("instructions", 0), num_rows=7, stage_run_id=done)
    catalog.register_dataset_version(DatasetRef("sample", 2), num_rows=3, stage_run_id=None)
    catalog.register_dataset_version(DatasetRef("instructions", 1), num_rows=9, stage_run_id=running)
    summary = [{k: v for k, v in row.items() if k != "created"} for row in catalog.dataset_versions_summary()]
    assert summary == [
        {"dataset": "instructions", "version": 0, "rows": 7, "stage": "ingest", "stage_run": done[:12],
         "config": "a" * 12},
        {"dataset": "instructions", "version": 1, "rows": 9, "stage": "train", "stage_run": running[:12],
         "config": "b" * 12},
        {"dataset": "sample", "version": 2, "rows": 3, "stage": None, "stage_run": None, "config": None},
    ]  # fmt: skip
