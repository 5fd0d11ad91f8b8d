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
