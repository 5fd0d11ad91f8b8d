"""The ledger of provider batches (OpenAI Batch, Anthropic Message Batches) in the DuckDB catalog.

A batch is recorded, with the custom_id of every item, right after the provider accepts it and
before anything waits on it. An item's custom_id is its response-cache key, so a rerun of a killed
stage finds which of its uncached calls are already in a batch (`open_items`) and waits for that
batch instead of paying again. An item the provider failed (an error, an expiry, a line missing
from the results) is marked failed: it is not open any more, and the next run asks again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from storage.catalog import Catalog

BATCH_COLUMNS = (
    "batch_id", "provider", "endpoint", "backend", "model", "stage_run_id", "requests", "status",
    "submitted_at", "ended_at", "succeeded", "failed",
)  # fmt: skip
_LOOKUP_CHUNK = 2000


class BatchLedger:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def record(
        self, *, batch_id: str, provider: str, endpoint: str, backend: str, model: str,
        stage_run_id: str | None, custom_ids: Sequence[str], status: str,
    ) -> None:  # fmt: skip
        """A batch the provider accepted, and its items, in one transaction."""
        with self.catalog.connect("batch record") as con:
            con.execute(
                "INSERT INTO llm_batches (batch_id, provider, endpoint, backend, model, stage_run_id,"
                " requests, status, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, current_timestamp)",
                [batch_id, provider, endpoint, backend, model, stage_run_id, len(custom_ids), status],
            )
            con.executemany(
                "INSERT INTO llm_batch_items (batch_id, custom_id, endpoint, failed) VALUES (?, ?, ?, false)",
                [[batch_id, cid, endpoint] for cid in custom_ids],
            )

    def open_items(self, endpoint: str, custom_ids: Iterable[str]) -> dict[str, str]:
        """custom_id -> the newest batch on `endpoint` holding it that has not failed it."""
        ids = list(dict.fromkeys(custom_ids))
        found: dict[str, str] = {}
        with self.catalog.connect("batch lookup") as con:
            for start in range(0, len(ids), _LOOKUP_CHUNK):
                chunk = ids[start : start + _LOOKUP_CHUNK]
                rows = con.execute(
                    "SELECT i.custom_id, i.batch_id FROM llm_batch_items i JOIN llm_batches b USING (batch_id)"
                    f" WHERE i.endpoint = ? AND NOT i.failed AND i.custom_id IN ({', '.join('?' * len(chunk))})"
                    " ORDER BY b.submitted_at",
                    [endpoint, *chunk],
                ).fetchall()
                found.update(dict(rows))  # the newest batch wins
        return found

    def mark_failed(self, batch_id: str, errors: Mapping[str, str]) -> None:
        if not errors:
            return
        with self.catalog.connect("batch item failures") as con:
            con.executemany(
                "UPDATE llm_batch_items SET failed = true, error = ? WHERE batch_id = ? AND custom_id = ?",
                [[error, batch_id, cid] for cid, error in errors.items()],
            )

    def ended(self, batch_id: str, status: str, succeeded: int, failed: int) -> None:
        with self.catalog.connect("batch ended") as con:
            con.execute(
                "UPDATE llm_batches SET status = ?, ended_at = coalesce(ended_at, current_timestamp),"
                " succeeded = ?, failed = ? WHERE batch_id = ?",
                [status, succeeded, failed, batch_id],
            )

    def batches(self, stage_run_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(BATCH_COLUMNS)} FROM llm_batches"
        params: list[Any] = []
        if stage_run_id is not None:
            sql += " WHERE stage_run_id = ?"
            params.append(stage_run_id)
        with self.catalog.connect("batch list") as con:
            rows = con.execute(sql + " ORDER BY submitted_at", params).fetchall()
        return [dict(zip(BATCH_COLUMNS, r, strict=True)) for r in rows]

    def items(self, batch_id: str) -> list[dict[str, Any]]:
        with self.catalog.connect("batch items") as con:
            rows = con.execute(
                "SELECT custom_id, failed, error FROM llm_batch_items WHERE batch_id = ? ORDER BY custom_id",
                [batch_id],
            ).fetchall()
        return [{"custom_id": c, "failed": f, "error": e} for c, f, e in rows]
