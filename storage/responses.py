"""The LLM response cache and per-stage usage rows, in the DuckDB catalog.

Rows are plain dicts so storage stays independent of the LLM client types in tasks/.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from storage.catalog import Catalog

RESPONSE_COLUMNS = (
    "cache_key", "backend", "model", "sample_index", "text", "finish_reason", "input_tokens",
    "output_tokens", "latency_s", "attempts", "logprobs_json", "stage_run_id",
)  # fmt: skip
USAGE_COLUMNS = (
    "stage_run_id", "backend", "model", "requests", "cache_hits", "failures", "retries", "input_tokens",
    "output_tokens", "cost_usd", "batched_requests", "batched_input_tokens", "batched_output_tokens",
)  # fmt: skip
_LOOKUP_CHUNK = 2000  # keys per IN (...) query


class ResponseCache:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        if not keys:
            return found
        with self.catalog.connect("response cache lookup") as con:
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start : start + _LOOKUP_CHUNK]
                placeholders = ", ".join("?" * len(chunk))
                cursor = con.execute(
                    f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM llm_responses WHERE cache_key IN ({placeholders})",
                    chunk,
                )
                for row in cursor.fetchall():
                    found[row[0]] = dict(zip(RESPONSE_COLUMNS, row, strict=True))
        return found

    def put(self, row: Mapping[str, Any]) -> None:
        """Store one completed call. A key written twice (two processes raced) keeps the first."""
        with self.catalog.connect("response cache write") as con:
            con.execute(
                f"INSERT OR IGNORE INTO llm_responses ({', '.join(RESPONSE_COLUMNS)}, created_at)"
                f" VALUES ({', '.join('?' * len(RESPONSE_COLUMNS))}, current_timestamp)",
                [row[c] for c in RESPONSE_COLUMNS],
            )

    def count(self) -> int:
        with self.catalog.connect("response cache count") as con:
            return con.execute("SELECT count(*) FROM llm_responses").fetchone()[0]

    def record_usage(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        with self.catalog.connect("usage write") as con:
            for row in rows:
                con.execute(
                    f"INSERT OR REPLACE INTO llm_usage ({', '.join(USAGE_COLUMNS)})"
                    f" VALUES ({', '.join('?' * len(USAGE_COLUMNS))})",
                    [row[c] for c in USAGE_COLUMNS],
                )
