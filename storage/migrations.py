"""Ordered, named schema migrations for the DuckDB catalog.

Append new migrations; never edit or reorder one that has shipped. Each runs in its own
transaction together with the row that records it in `schema_migrations`, so a crash leaves the
schema at a whole migration. DuckDB foreign keys are avoided on purpose: DuckDB forbids updating
a row that a foreign key points at, and stage runs are updated in place (running -> completed).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "lineage_runs_stage_runs_datasets",
        # A run is one flow invocation; a stage run is one stage inside it (executed or served from
        # cache). Dataset versions mirror the Delta commits so lineage queries need no Delta scan.
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            flow VARCHAR NOT NULL,
            recipe VARCHAR NOT NULL,
            recipe_path VARCHAR,
            config_hash VARCHAR NOT NULL,
            code_version VARCHAR,
            prefect_flow_run_id VARCHAR,
            host VARCHAR,
            pid INTEGER,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,
            error VARCHAR
        );
        CREATE TABLE stage_runs (
            stage_run_id VARCHAR PRIMARY KEY,
            run_id VARCHAR,
            stage VARCHAR NOT NULL,
            stage_version INTEGER NOT NULL,
            config_hash VARCHAR NOT NULL,
            cache_key VARCHAR NOT NULL,
            code_version VARCHAR,
            prefect_flow_run_id VARCHAR,
            prefect_task_run_id VARCHAR,
            host VARCHAR,
            pid INTEGER,
            started_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            status VARCHAR NOT NULL,
            error VARCHAR,
            cached_from VARCHAR,
            summary_json VARCHAR
        );
        CREATE TABLE stage_run_datasets (
            stage_run_id VARCHAR NOT NULL,
            direction VARCHAR NOT NULL CHECK (direction IN ('input', 'output')),
            role VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL,
            version BIGINT NOT NULL,
            PRIMARY KEY (stage_run_id, direction, role)
        );
        CREATE TABLE dataset_versions (
            dataset VARCHAR NOT NULL,
            version BIGINT NOT NULL,
            num_rows BIGINT NOT NULL,
            stage_run_id VARCHAR,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (dataset, version)
        );
        """,
    ),
    Migration(
        2,
        "stage_cache",
        # Maps a stage's cache key (stage, version, config slice, input versions) to the stage run
        # whose outputs answer it. Only runs with no failed items are entered.
        """
        CREATE TABLE stage_cache (
            cache_key VARCHAR PRIMARY KEY,
            stage VARCHAR NOT NULL,
            stage_version INTEGER NOT NULL,
            stage_run_id VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "llm_response_cache_and_usage",
        # Every completed LLM call, keyed by a hash of backend identity, model, messages, decoding
        # params, seed and sample index, written as it arrives: a crashed stage resumes without
        # paying for any call twice. Failed calls are never stored, so they are retried. Usage is
        # one row per (stage run, backend, model), written when the stage ends (or fails).
        """
        CREATE TABLE llm_responses (
            cache_key VARCHAR PRIMARY KEY,
            backend VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            sample_index INTEGER NOT NULL,
            text VARCHAR NOT NULL,
            finish_reason VARCHAR,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            latency_s DOUBLE NOT NULL,
            attempts INTEGER NOT NULL,
            logprobs_json VARCHAR,
            stage_run_id VARCHAR,
            created_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE llm_usage (
            stage_run_id VARCHAR NOT NULL,
            backend VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            requests BIGINT NOT NULL,
            cache_hits BIGINT NOT NULL,
            failures BIGINT NOT NULL,
            retries BIGINT NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cost_usd DOUBLE,
            PRIMARY KEY (stage_run_id, backend, model)
        );
        """,
    ),
    Migration(
        4,
        "curriculum_dynamic_reference_scheduling",
        # The dynamic reference scheduling curriculum (storage/curriculum.py): per instruction, the
        # current rung of its reference ladder; one history row per (step, instruction) judged; and
        # the state as of each checkpoint, so a resumed run restores the checkpoint's curriculum.
        # Step 0 of the snapshots is the initial state. rung_judged is NULL when the instruction's
        # rollouts were judged against several rungs (the random schedule).
        """
        CREATE TABLE curricula (
            curriculum_id VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            config_json VARCHAR NOT NULL,
            ladders_ref VARCHAR
        );
        CREATE TABLE curriculum_state (
            curriculum_id VARCHAR NOT NULL,
            instruction_id VARCHAR NOT NULL,
            rung INTEGER NOT NULL,
            n_rungs INTEGER NOT NULL,
            updated_step BIGINT,
            PRIMARY KEY (curriculum_id, instruction_id),
            CHECK (n_rungs >= 1 AND rung >= 0 AND rung < n_rungs)
        );
        CREATE TABLE curriculum_history (
            curriculum_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            instruction_id VARCHAR NOT NULL,
            rung_judged INTEGER,
            rung_before INTEGER NOT NULL,
            rung_after INTEGER NOT NULL,
            wins INTEGER NOT NULL,
            ties INTEGER NOT NULL,
            losses INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            mean_reward DOUBLE,
            promoted BOOLEAN NOT NULL,
            recorded_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (curriculum_id, step, instruction_id),
            CHECK (rung_after = rung_before + CAST(promoted AS INTEGER))
        );
        CREATE TABLE curriculum_snapshots (
            curriculum_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            instruction_id VARCHAR NOT NULL,
            rung INTEGER NOT NULL,
            PRIMARY KEY (curriculum_id, step, instruction_id)
        );
        """,
    ),
    Migration(
        5,
        "training_log_and_models",
        # What a training run records per step (storage/training_log.py): every judgment of a
        # rollout, the reward-side and trainer metrics (long format), and the trained policies.
        """
        CREATE TABLE train_judgments (
            train_run_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            sample_index INTEGER NOT NULL,
            instruction_id VARCHAR NOT NULL,
            rung INTEGER NOT NULL,
            reward DOUBLE,
            judge_reward DOUBLE,
            verdict VARCHAR,
            rationale VARCHAR,
            error VARCHAR,
            components_json VARCHAR,
            input_tokens BIGINT,
            output_tokens BIGINT,
            latency_s DOUBLE,
            llm_calls INTEGER,
            completion_chars BIGINT,
            recorded_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (train_run_id, step, sample_index)
        );
        CREATE TABLE train_metrics (
            train_run_id VARCHAR NOT NULL,
            step BIGINT NOT NULL,
            source VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value DOUBLE,
            PRIMARY KEY (train_run_id, step, source, name)
        );
        CREATE TABLE models (
            model_id VARCHAR PRIMARY KEY,
            path VARCHAR NOT NULL,
            base_model VARCHAR,
            train_run_id VARCHAR,
            stage_run_id VARCHAR,
            ladders_ref VARCHAR,
            config_hash VARCHAR,
            step BIGINT,
            created_at TIMESTAMPTZ NOT NULL
        );
        """,
    ),
    Migration(
        6,
        "evaluation_results",
        # One row per (evaluation run, candidate, benchmark): the headline score and its lineage
        # (which model, which training run and checkpoint step, which judge, which benchmark data
        # and scorer). Nightly evaluations append here, so a run's score over steps accumulates.
        """
        CREATE TABLE eval_results (
            eval_run_id VARCHAR NOT NULL,
            stage_run_id VARCHAR NOT NULL,
            candidate VARCHAR NOT NULL,
            candidate_model VARCHAR NOT NULL,
            candidate_source VARCHAR NOT NULL,
            train_run_id VARCHAR,
            step BIGINT,
            benchmark VARCHAR NOT NULL,
            benchmark_version VARCHAR NOT NULL,
            judge VARCHAR,
            score DOUBLE,
            n_items INTEGER NOT NULL,
            n_failed INTEGER NOT NULL,
            metrics_json VARCHAR NOT NULL,
            items_ref VARCHAR NOT NULL,
            cached BOOLEAN NOT NULL,
            recorded_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (eval_run_id, candidate, benchmark)
        );
        """,
    ),
    Migration(
        7,
        "stage_run_config",
        # The exact config slice a stage run read (the judge, the generators, ...), so lineage can
        # name the judge behind a dataset version, not only its config hash. Secrets are never in
        # a recipe, so never here.
        """
        ALTER TABLE stage_runs ADD COLUMN config_json VARCHAR;
        """,
    ),
    Migration(
        8,
        "llm_batches",
        # Provider batches (tasks/llm/batch.py): each batch id is recorded before anything waits on
        # it, with the cache key of every item (its custom_id), so a killed stage's rerun resumes
        # polling instead of submitting again. An item the provider failed is marked so; the next run
        # asks again. Usage splits out what went through a batch: it is billed at the batch price.
        """
        CREATE TABLE llm_batches (
            batch_id VARCHAR PRIMARY KEY,
            provider VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,
            backend VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            stage_run_id VARCHAR,
            requests INTEGER NOT NULL,
            status VARCHAR NOT NULL,
            submitted_at TIMESTAMPTZ NOT NULL,
            ended_at TIMESTAMPTZ,
            succeeded INTEGER,
            failed INTEGER
        );
        CREATE TABLE llm_batch_items (
            batch_id VARCHAR NOT NULL,
            custom_id VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,
            failed BOOLEAN NOT NULL,
            error VARCHAR,
            PRIMARY KEY (batch_id, custom_id)
        );
        ALTER TABLE llm_usage ADD COLUMN batched_requests BIGINT DEFAULT 0;
        ALTER TABLE llm_usage ADD COLUMN batched_input_tokens BIGINT DEFAULT 0;
        ALTER TABLE llm_usage ADD COLUMN batched_output_tokens BIGINT DEFAULT 0;
        """,
    ),
    Migration(
        9,
        "curriculum_top_of_ladder",
        # When an instruction's rollouts beat its top rung (`curriculum.top`): the step it first
        # did, in the state and in each checkpoint's snapshot (so a resumed run knows which
        # instructions were retired or judged within their group at that checkpoint), and the
        # history row of that step. NULL / false for every row written before.
        """
        ALTER TABLE curriculum_state ADD COLUMN topped_step BIGINT;
        ALTER TABLE curriculum_snapshots ADD COLUMN topped_step BIGINT;
        ALTER TABLE curriculum_history ADD COLUMN reached_top BOOLEAN DEFAULT false;
        """,
    ),
)


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str]]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    return [
        (r[0], r[1]) for r in con.execute("SELECT id, name FROM schema_migrations ORDER BY id").fetchall()
    ]


def migrate(con: duckdb.DuckDBPyConnection, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply the migrations not yet recorded, in order. Returns the names applied now."""
    done = dict(applied_migrations(con))
    known = {m.id: m.name for m in migrations}
    for mid, name in done.items():
        if known.get(mid) not in (None, name):
            raise RuntimeError(
                f"catalog migration {mid} is recorded as '{name}' but this code calls it '{known[mid]}'; "
                "the database was written by a different branch of the code"
            )
    unknown = sorted(set(done) - set(known))
    if unknown:
        raise RuntimeError(
            f"catalog has migrations {unknown} that this code does not know; it was written by a newer "
            "version of writing-rl. Upgrade the code, or use a different storage.root."
        )
    applied_now = []
    for m in sorted(migrations, key=lambda m: m.id):
        if m.id in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(m.sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, current_timestamp)", [m.id, m.name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied_now.append(m.name)
    return applied_now
