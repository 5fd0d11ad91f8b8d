"""Evaluation results in the DuckDB catalog: one row per (evaluation run, candidate, benchmark).

The per-item responses and scores are Delta datasets (`eval_items`, `eval_scores`) written by the
evaluation stage; this table indexes their headline numbers with lineage, so "how did this training
run score over its checkpoints" is one query across every evaluation ever run (nightly ones too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storage.catalog import Catalog

RESULT_COLUMNS = (
    "eval_run_id", "stage_run_id", "candidate", "candidate_model", "candidate_source", "train_run_id", "step",
    "benchmark", "benchmark_version", "judge", "score", "n_items", "n_failed", "metrics_json", "items_ref",
    "cached",
)  # fmt: skip


class EvaluationLog:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def record(self, rows: Iterable[Mapping[str, Any]]) -> None:
        values = [[row.get(c) for c in RESULT_COLUMNS] for row in rows]
        if not values:
            return
        with self.catalog.connect("evaluation results") as con:
            con.executemany(
                f"INSERT OR REPLACE INTO eval_results ({', '.join(RESULT_COLUMNS)}, recorded_at)"
                f" VALUES ({', '.join('?' * len(RESULT_COLUMNS))}, current_timestamp)",
                values,
            )

    def results(
        self, eval_run_id: str | None = None, train_run_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of one evaluation run, or every row about one training run, oldest first."""
        where, params = [], []
        if eval_run_id is not None:
            where.append("eval_run_id = ?")
            params.append(eval_run_id)
        if train_run_id is not None:
            where.append("train_run_id = ?")
            params.append(train_run_id)
        sql = f"SELECT {', '.join(RESULT_COLUMNS)}, recorded_at FROM eval_results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.catalog.connect("evaluation results read") as con:
            cursor = con.execute(sql + " ORDER BY recorded_at, candidate, benchmark", params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
