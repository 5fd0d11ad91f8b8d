"""Schema migrations: a blank database gets every migration; an old one is upgraded in place."""

from __future__ import annotations

import duckdb
import pytest

from storage.migrations import MIGRATIONS, applied_migrations, migrate


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _columns(con) -> set[tuple[str, str]]:
    return {
        tuple(r)
        for r in con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall()
    }


def test_blank_database_gets_every_migration_in_order(tmp_path):
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"))
    applied = migrate(con)
    assert applied == [m.name for m in MIGRATIONS]
    assert applied_migrations(con) == [(m.id, m.name) for m in MIGRATIONS]
    assert {
        "runs",
        "stage_runs",
        "stage_run_datasets",
        "dataset_versions",
        "stage_cache",
        "llm_responses",
        "llm_usage",
        "schema_migrations",
    } <= _tables(con)
    assert migrate(con) == []  # idempotent


def test_upgrade_from_previous_schema_keeps_data(tmp_path):
    blank = duckdb.connect()
    migrate(blank)
    latest_tables, latest_columns = _tables(blank), _columns(blank)

    path = str(tmp_path / "catalog.duckdb")
    con = duckdb.connect(path)
    migrate(con, MIGRATIONS[:-1])  # a database written by the previous release
    assert _columns(con) < latest_columns  # the last migration adds a table or a column
    con.execute(
        "INSERT INTO runs (run_id, flow, recipe, config_hash, started_at, status)"
        " VALUES ('r1', 'build-dataset', 'demo', 'abc', current_timestamp, 'completed')"
    )
    con.execute("INSERT INTO dataset_versions VALUES ('generations', 0, 24, 's1', current_timestamp)")
    con.close()

    con = duckdb.connect(path)
    assert migrate(con) == [MIGRATIONS[-1].name]
    assert _tables(con) == latest_tables and _columns(con) == latest_columns
    assert con.execute("SELECT run_id, status FROM runs").fetchall() == [("r1", "completed")]
    assert con.execute("SELECT dataset, version, num_rows FROM dataset_versions").fetchall() == [
        ("generations", 0, 24)
    ]
    assert [m[0] for m in applied_migrations(con)] == [m.id for m in MIGRATIONS]


def test_database_from_newer_code_is_refused(tmp_path):
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"))
    migrate(con)
    con.execute("INSERT INTO schema_migrations VALUES (999, 'from_the_future', current_timestamp)")
    with pytest.raises(RuntimeError, match="newer version"):
        migrate(con)


def test_failed_migration_leaves_schema_at_previous_whole_migration(tmp_path):
    from storage.migrations import Migration

    broken = (*MIGRATIONS, Migration(99, "broken", "CREATE TABLE half (a INT); SELECT * FROM no_such_table;"))
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"))
    with pytest.raises(duckdb.Error):
        migrate(con, broken)
    assert "half" not in _tables(con)
    assert [m[0] for m in applied_migrations(con)] == [m.id for m in MIGRATIONS]
