"""Versioned datasets: immutable versions, lineage in commits, DuckDB reads of any version."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from configs.schema import StorageConfig
from storage import DatasetNotFoundError, DatasetRef, open_storage


@pytest.fixture
def storage(tmp_path):
    return open_storage(StorageConfig(root=tmp_path / "store"))


def test_every_write_is_a_new_readable_version(storage):
    v0 = storage.datasets.write("generations", pa.table({"x": [1, 2]}), lineage={"stage": "a"})
    v1 = storage.datasets.write(
        "generations", pa.table({"x": [3], "y": ["new column"]}), lineage={"stage": "b"}
    )
    assert (v0, v1) == (DatasetRef("generations", 0), DatasetRef("generations", 1))
    assert storage.datasets.read(v0).to_pydict() == {"x": [1, 2]}
    assert storage.datasets.read(v1).to_pydict() == {"x": [3], "y": ["new column"]}
    assert storage.datasets.latest("generations") == v1


def test_lineage_is_in_the_commit_metadata_and_the_catalog(storage):
    ref = storage.datasets.write(
        "generations",
        pa.table({"x": [1]}),
        lineage={"stage": "generate", "inputs": ["instructions@4"], "config_hash": "abc"},
        stage_run_id="sr1",
    )
    storage.datasets.write("generations", pa.table({"x": [2]}), lineage={"stage": "later"})
    assert storage.datasets.lineage(ref) == {
        "stage": "generate",
        "inputs": ["instructions@4"],
        "config_hash": "abc",
    }
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT dataset, version, num_rows, stage_run_id FROM dataset_versions ORDER BY version"
        )
        assert rows.fetchall() == [("generations", 0, 1, "sr1"), ("generations", 1, 1, None)]


def test_duckdb_queries_any_version(storage):
    v0 = storage.datasets.write("scores", pa.table({"s": [1.0, 2.0, 3.0]}), lineage={})
    v1 = storage.datasets.write("scores", pa.table({"s": [10.0]}), lineage={})
    df = storage.datasets.query(
        "SELECT (SELECT sum(s) FROM a) AS old, (SELECT sum(s) FROM b) AS new", {"a": v0, "b": v1}
    )
    assert df.iloc[0].tolist() == [6.0, 10.0]


def test_exists_detects_missing_versions_and_deleted_files(storage):
    ref = storage.datasets.write("g", pa.table({"x": [1]}), lineage={})
    assert storage.datasets.exists(ref)
    assert not storage.datasets.exists(DatasetRef("g", 7))
    assert not storage.datasets.exists(DatasetRef("never_written", 0))
    for parquet in (storage.root / "datasets" / "g").glob("*.parquet"):
        parquet.unlink()
    assert not storage.datasets.exists(ref)
    shutil.rmtree(storage.root / "datasets" / "g")
    with pytest.raises(DatasetNotFoundError):
        storage.datasets.read(ref)


def test_ref_parsing():
    assert DatasetRef.parse("generations@12") == DatasetRef("generations", 12)
    assert str(DatasetRef("a", 1)) == "a@1"
    with pytest.raises(ValueError, match="NAME@VERSION"):
        DatasetRef.parse("generations")
