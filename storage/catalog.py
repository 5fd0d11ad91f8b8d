"""The DuckDB catalog: the only module that opens `catalog.duckdb`.

It records runs, stage runs and their lineage (config hash, code version, Prefect ids, the dataset
versions read and written), the dataset-version registry and the stage cache. Every access opens
a connection inside the storage lock and closes it at the end: see storage/locking.py for why.
Opening costs ~20 ms (measured, DuckDB 1.x/2.0, 2 cores, even for `:memory:`), so a `session`
lets several accesses in a row share one connection.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from storage.locking import StorageLock
from storage.migrations import MIGRATIONS, Migration, migrate
from storage.refs import DatasetRef


@dataclass(frozen=True)
class CachedStage:
    stage_run_id: str
    outputs: dict[str, DatasetRef]


# Catalog files this process has migrated, by identity: each stage opens the storage anew, and the
# migration check is a connection of its own. A file deleted and created again is a new identity.
_MIGRATED: set[tuple[str, int, int, int]] = set()


def _identity(path: Path, migrations: tuple[Migration, ...]) -> tuple[str, int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (str(path), stat.st_dev, stat.st_ino, len(migrations))


class Catalog:
    def __init__(self, path: Path, lock: StorageLock, migrations: tuple[Migration, ...] = MIGRATIONS):
        self.path = path
        self.lock = lock
        self._migrations = migrations
        self._migrated = _identity(path, migrations) in _MIGRATED
        self._session = threading.local()

    # -- connection ------------------------------------------------------------------------------

    @contextmanager
    def connect(self, purpose: str = "catalog access") -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside the storage lock and one transaction; committed on success. Inside
        this thread's `session`, the session's connection and transaction."""
        shared = getattr(self._session, "con", None)
        if shared is not None:
            yield shared
            return
        with self.lock.hold(purpose):
            con = duckdb.connect(str(self.path))
            try:
                if not self._migrated:
                    migrate(con, self._migrations)
                    self._mark_migrated()
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.close()

    @contextmanager
    def session(self, purpose: str) -> Iterator[None]:
        """Every catalog access of this thread in the block shares one connection, lock hold and
        transaction (all or nothing). Keep it short: other processes wait for the lock."""
        with self.connect(purpose) as con:
            self._session.con = con
            try:
                yield
            finally:
                self._session.con = None

    def migrate(self) -> list[str]:
        """Bring the schema up to date; a no-op (no connection) once this process has done it."""
        if self._migrated:
            return []
        with self.lock.hold("migration"):
            con = duckdb.connect(str(self.path))
            try:
                applied = migrate(con, self._migrations)
            finally:
                con.close()
        self._mark_migrated()
        return applied

    def _mark_migrated(self) -> None:
        self._migrated = True
        if (identity := _identity(self.path, self._migrations)) is not None:
            _MIGRATED.add(identity)

    def query(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        with self.connect("query") as con:
            return con.execute(sql, params or []).df()

    # -- runs ------------------------------------------------------------------------------------

    def start_run(
        self,
        *,
        flow: str,
        recipe: str,
        recipe_path: str | None,
        config_hash: str,
        code_version: str,
        prefect_flow_run_id: str | None,
    ) -> str:
        run_id = uuid.uuid4().hex
        with self.connect("start run") as con:
            con.execute(
                "INSERT INTO runs (run_id, flow, recipe, recipe_path, config_hash, code_version,"
                " prefect_flow_run_id, host, pid, started_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, 'running')",
                [
                    run_id,
                    flow,
                    recipe,
                    recipe_path,
                    config_hash,
                    code_version,
                    prefect_flow_run_id,
                    socket.gethostname(),
                    os.getpid(),
                ],
            )
        return run_id

    def finish_run(self, run_id: str, *, status: str, error: str | None = None) -> None:
        with self.connect("finish run") as con:
            con.execute(
                "UPDATE runs SET status = ?, error = ?, ended_at = current_timestamp WHERE run_id = ?",
                [status, error, run_id],
            )

    def mark_abandoned(self) -> int:
        """Runs and stage runs left 'running' by a process on this host that no longer exists
        (killed, crashed) are marked 'abandoned', so status queries tell the truth."""
        host = socket.gethostname()
        fixed = 0
        with self.connect("mark abandoned") as con:
            for table, key in (("runs", "run_id"), ("stage_runs", "stage_run_id")):
                rows = con.execute(
                    f"SELECT {key}, pid FROM {table} WHERE status = 'running' AND host = ?", [host]
                ).fetchall()
                dead = [rid for rid, pid in rows if pid is not None and not _pid_alive(pid)]
                for rid in dead:
                    con.execute(
                        f"UPDATE {table} SET status = 'abandoned', ended_at = current_timestamp,"
                        f" error = 'process exited without finishing' WHERE {key} = ?",
                        [rid],
                    )
                fixed += len(dead)
        return fixed

    def recent_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """The `limit` most recently started runs, newest first, one row per stage run (a run without
        any: one row with no stage): run (id prefix), flow, recipe, run_status, started, stage,
        stage_status, seconds (None while running), config (config hash prefix)."""
        with self.connect("recent runs") as con:
            return _records(
                con.execute(
                    "SELECT left(r.run_id, 12) AS run, r.flow, r.recipe, r.status AS run_status,"
                    " strftime(r.started_at, '%Y-%m-%d %H:%M:%S') AS started, s.stage,"
                    " s.status AS stage_status, round(epoch(s.ended_at - s.started_at), 1) AS seconds,"
                    " left(s.config_hash, 12) AS config"
                    " FROM runs r LEFT JOIN stage_runs s USING (run_id)"
                    " WHERE r.run_id IN (SELECT run_id FROM runs ORDER BY started_at DESC LIMIT ?)"
                    " ORDER BY r.started_at DESC, s.started_at",
                    [limit],
                )
            )

    # -- stage runs ------------------------------------------------------------------------------

    def start_stage_run(
        self,
        *,
        run_id: str | None,
        stage: str,
        stage_version: int,
        config_hash: str,
        cache_key: str,
        code_version: str,
        prefect_flow_run_id: str | None,
        prefect_task_run_id: str | None,
        inputs: Mapping[str, DatasetRef],
        status: str = "running",
        cached_from: str | None = None,
        config: Any = None,
    ) -> str:
        stage_run_id = uuid.uuid4().hex
        with self.connect("start stage run") as con:
            con.execute(
                "INSERT INTO stage_runs (stage_run_id, run_id, stage, stage_version, config_hash,"
                " cache_key, code_version, prefect_flow_run_id, prefect_task_run_id, host, pid,"
                " started_at, status, cached_from, config_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, current_timestamp, ?, ?, ?)",
                [
                    stage_run_id,
                    run_id,
                    stage,
                    stage_version,
                    config_hash,
                    cache_key,
                    code_version,
                    prefect_flow_run_id,
                    prefect_task_run_id,
                    socket.gethostname(),
                    os.getpid(),
                    status,
                    cached_from,
                    None if config is None else json.dumps(config, sort_keys=True, default=str),
                ],
            )
            _insert_links(con, stage_run_id, "input", inputs)
        return stage_run_id

    def finish_stage_run(
        self,
        stage_run_id: str,
        *,
        status: str,
        outputs: Mapping[str, DatasetRef],
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
        cache_key: str | None = None,
        stage: str | None = None,
        stage_version: int | None = None,
    ) -> None:
        """Close a stage run; with `cache_key`, also enter it in the stage cache (same transaction)."""
        with self.connect("finish stage run") as con:
            con.execute(
                "UPDATE stage_runs SET status = ?, error = ?, summary_json = ?, ended_at = current_timestamp"
                " WHERE stage_run_id = ?",
                [status, error, json.dumps(summary or {}, default=str, sort_keys=True), stage_run_id],
            )
            _insert_links(con, stage_run_id, "output", outputs)
            if cache_key is not None:
                con.execute(
                    "INSERT OR REPLACE INTO stage_cache VALUES (?, ?, ?, ?, current_timestamp)",
                    [cache_key, stage, stage_version, stage_run_id],
                )

    def latest_stage_run(self, stage: str, recipe: str) -> dict[str, Any] | None:
        """The most recently started run of `stage` in a flow run of `recipe` (any status: a
        training run still going counts), as {stage_run_id, cache_key, status, started_at}."""
        with self.connect("stage run lookup") as con:
            row = con.execute(
                "SELECT s.stage_run_id, s.cache_key, s.status, s.started_at FROM stage_runs s"
                " JOIN runs r ON r.run_id = s.run_id WHERE s.stage = ? AND r.recipe = ?"
                " AND s.status != 'cached' ORDER BY s.started_at DESC LIMIT 1",
                [stage, recipe],
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("stage_run_id", "cache_key", "status", "started_at"), row, strict=True))

    def upstream(self, ref: DatasetRef) -> list[dict[str, Any]]:
        """The chain of stage runs behind a dataset version, nearest first: for each, the stage,
        its run, status, config hash and config slice, and the versions it read and wrote. Walks
        every input back to data with no recorded producer."""
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        pending = [ref]
        with self.connect("lineage walk") as con:
            while pending:
                current = pending.pop(0)
                row = con.execute(
                    "SELECT stage_run_id FROM dataset_versions WHERE dataset = ? AND version = ?",
                    [current.name, current.version],
                ).fetchone()
                if row is None or row[0] is None or row[0] in seen:
                    continue
                seen.add(row[0])
                run = con.execute(
                    "SELECT stage_run_id, run_id, stage, stage_version, status, config_hash, cache_key,"
                    " code_version, prefect_flow_run_id, started_at, config_json FROM stage_runs WHERE stage_run_id = ?",
                    [row[0]],
                ).fetchone()
                names = ("stage_run_id", "run_id", "stage", "stage_version", "status", "config_hash", "cache_key",
                         "code_version", "prefect_flow_run_id", "started_at", "config_json")  # fmt: skip
                record = dict(zip(names, run, strict=True))
                record["config"] = json.loads(record.pop("config_json") or "null")
                links = con.execute(
                    "SELECT direction, role, dataset, version FROM stage_run_datasets WHERE stage_run_id = ?"
                    " ORDER BY direction, role",
                    [row[0]],
                ).fetchall()
                record["inputs"] = {r: DatasetRef(d, int(v)) for di, r, d, v in links if di == "input"}
                record["outputs"] = {r: DatasetRef(d, int(v)) for di, r, d, v in links if di == "output"}
                chain.append(record)
                pending.extend(record["inputs"].values())
        return chain

    def lookup_cache(self, cache_key: str) -> CachedStage | None:
        with self.connect("cache lookup") as con:
            row = con.execute(
                "SELECT stage_run_id FROM stage_cache WHERE cache_key = ?", [cache_key]
            ).fetchone()
            if row is None:
                return None
            links = con.execute(
                "SELECT role, dataset, version FROM stage_run_datasets"
                " WHERE stage_run_id = ? AND direction = 'output'",
                [row[0]],
            ).fetchall()
        return CachedStage(row[0], {role: DatasetRef(ds, int(v)) for role, ds, v in links})

    def forget_cache(self, cache_key: str) -> None:
        with self.connect("forget cache entry") as con:
            con.execute("DELETE FROM stage_cache WHERE cache_key = ?", [cache_key])

    # -- datasets --------------------------------------------------------------------------------

    def dataset_versions_summary(self) -> list[dict[str, Any]]:
        """Every registered dataset version, by dataset then version, with the stage run that wrote
        it: dataset, version, rows, stage, stage_run (id prefix), config (config hash prefix),
        created. A version written outside a stage has no stage, stage_run or config."""
        with self.connect("dataset versions") as con:
            return _records(
                con.execute(
                    "SELECT d.dataset, d.version, d.num_rows AS rows, s.stage,"
                    " left(s.stage_run_id, 12) AS stage_run, left(s.config_hash, 12) AS config,"
                    " strftime(d.created_at, '%Y-%m-%d %H:%M:%S') AS created"
                    " FROM dataset_versions d LEFT JOIN stage_runs s USING (stage_run_id)"
                    " ORDER BY d.dataset, d.version"
                )
            )

    def register_dataset_version(self, ref: DatasetRef, *, num_rows: int, stage_run_id: str | None) -> None:
        with self.connect("register dataset version") as con:
            con.execute(
                "INSERT OR REPLACE INTO dataset_versions VALUES (?, ?, ?, ?, current_timestamp)",
                [ref.name, ref.version, num_rows, stage_run_id],
            )

    def producers(self, refs: Iterable[DatasetRef]) -> dict[DatasetRef, dict[str, Any]]:
        """The stage run that wrote each of `refs`, with its Prefect flow and task run ids, in one
        query. Versions written outside a stage, or unknown to the catalog, are left out."""
        wanted = list(dict.fromkeys(refs))
        if not wanted:
            return {}
        names = ("stage_run_id", "stage", "prefect_flow_run_id", "prefect_task_run_id")
        with self.connect("lineage lookup") as con:
            rows = con.execute(
                "SELECT d.dataset, d.version, s.stage_run_id, s.stage, s.prefect_flow_run_id,"
                " s.prefect_task_run_id FROM (SELECT unnest(?) AS dataset, unnest(?) AS version) w"
                " JOIN dataset_versions d USING (dataset, version) JOIN stage_runs s USING (stage_run_id)",
                [[r.name for r in wanted], [r.version for r in wanted]],
            ).fetchall()
        return {DatasetRef(row[0], int(row[1])): dict(zip(names, row[2:], strict=True)) for row in rows}


def _records(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The rows of an executed query as dicts keyed by column name, in column order."""
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _insert_links(
    con: duckdb.DuckDBPyConnection, stage_run_id: str, direction: str, refs: Mapping[str, DatasetRef]
) -> None:
    for role, ref in refs.items():
        con.execute(
            "INSERT INTO stage_run_datasets VALUES (?, ?, ?, ?, ?)",
            [stage_run_id, direction, role, ref.name, ref.version],
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
