"""Versioned datasets: one Delta Lake table per dataset name, one immutable version per write.

Every write is a full snapshot (Delta `overwrite`), so `name@v` always means the same rows.
Lineage (stage, stage run, config hash, code version, input versions) goes into the commit's
custom metadata and into the catalog's `dataset_versions` table, in that order, inside the
storage lock. DuckDB reads any version through Arrow (`DeltaTable(...).to_pyarrow_dataset()`):
its own delta extension would need a download at run time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from storage.catalog import Catalog
from storage.locking import StorageLock
from storage.refs import DatasetRef

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
LINEAGE_PREFIX = "wrl."


class DatasetNotFoundError(LookupError):
    pass


class DatasetStore:
    def __init__(self, root: Path, catalog: Catalog, lock: StorageLock):
        self.root = root
        self.catalog = catalog
        self.lock = lock

    def path_of(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"dataset name '{name}' must match {_NAME.pattern}")
        return self.root / name

    # -- write -----------------------------------------------------------------------------------

    def write(
        self, name: str, table: pa.Table, *, lineage: Mapping[str, Any], stage_run_id: str | None = None
    ) -> DatasetRef:
        """Commit `table` as the next version of `name`; returns its reference."""
        path = self.path_of(name)
        # Every value JSON-encoded, so lineage reads back with its types (the int 3 stays 3).
        metadata = {f"{LINEAGE_PREFIX}{k}": json.dumps(v, default=str) for k, v in lineage.items()}
        with self.lock.hold(f"writing dataset {name}"):
            write_deltalake(
                str(path),
                table,
                mode="overwrite",
                schema_mode="overwrite",
                commit_properties=CommitProperties(custom_metadata=metadata),
            )
            ref = DatasetRef(name, DeltaTable(str(path)).version())
            self.catalog.register_dataset_version(ref, num_rows=table.num_rows, stage_run_id=stage_run_id)
        return ref

    # -- read ------------------------------------------------------------------------------------

    def _table(self, ref: DatasetRef) -> DeltaTable:
        try:
            return DeltaTable(str(self.path_of(ref.name)), version=ref.version)
        except TableNotFoundError:
            raise DatasetNotFoundError(f"dataset '{ref.name}' does not exist under {self.root}") from None
        except Exception as exc:  # delta-rs raises a generic error for a version past the end
            raise DatasetNotFoundError(f"{ref} cannot be loaded from {self.root}: {exc}") from None

    def read(self, ref: DatasetRef) -> pa.Table:
        return self._table(ref).to_pyarrow_table()

    def read_pandas(self, ref: DatasetRef) -> pd.DataFrame:
        return self.read(ref).to_pandas()

    def latest(self, name: str) -> DatasetRef:
        try:
            return DatasetRef(name, DeltaTable(str(self.path_of(name))).version())
        except TableNotFoundError:
            raise DatasetNotFoundError(f"dataset '{name}' does not exist under {self.root}") from None

    def exists(self, ref: DatasetRef) -> bool:
        """True when the version's log entry and every data file it needs are still there (a
        vacuum or a deleted folder makes a cached reference stale)."""
        try:
            table = self._table(ref)
        except DatasetNotFoundError:
            return False
        return all(Path(uri.removeprefix("file://")).exists() for uri in table.file_uris())

    def lineage(self, ref: DatasetRef) -> dict[str, Any]:
        """The lineage stored in the commit that created `ref`."""
        self._table(ref)  # raises if the version is gone
        # Read the history of the latest table: delta-rs 1.6 numbers the history of a time-travelled
        # table relative to the loaded version (version 0's history labels commit 1 as 0).
        for entry in self.history(ref.name):
            if entry.get("version") == ref.version:
                return {
                    k.removeprefix(LINEAGE_PREFIX): json.loads(v)
                    for k, v in entry.items()
                    if k.startswith(LINEAGE_PREFIX)
                }
        return {}

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "_delta_log").is_dir())

    def history(self, name: str) -> list[dict[str, Any]]:
        return DeltaTable(str(self.path_of(name))).history()

    def query(self, sql: str, tables: Mapping[str, DatasetRef]) -> pd.DataFrame:
        """Run DuckDB SQL over dataset versions, each registered under the given alias."""
        con = duckdb.connect()
        try:
            for alias, ref in tables.items():
                con.register(alias, self._table(ref).to_pyarrow_dataset())
            return con.execute(sql).df()
        finally:
            con.close()
