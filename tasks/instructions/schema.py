"""The canonical writing instruction, whatever file it came from.

Nested fields (criteria, metadata) are stored as JSON strings in Arrow/Delta so the table schema
stays flat and stable across sources.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class Criterion(BaseModel):
    """One WritingBench-style criterion: scored 1-10, with an optional per-band rubric."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    description: str = ""
    rubric: dict[str, str] = Field(default_factory=dict)  # "1-2" .. "9-10" -> what that band means


class Instruction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    source: str  # loader name and file, e.g. "writingbench:length_subset.jsonl"
    language: str | None = None  # "en", "zh", ...
    genre: str | None = None  # builtin genre, or WritingBench domain1
    subgenre: str | None = None  # WritingBench domain2, LongBench-Write type, ...
    required_length: int | None = Field(None, gt=0)  # words; CJK characters count one each
    criteria: tuple[Criterion, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)


INSTRUCTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("source", pa.string()),
        ("language", pa.string()),
        ("genre", pa.string()),
        ("subgenre", pa.string()),
        ("required_length", pa.int64()),
        ("criteria_json", pa.string()),
        ("metadata_json", pa.string()),
    ]
)


def instructions_to_arrow(rows: list[Instruction]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "id": r.id,
                "prompt": r.prompt,
                "source": r.source,
                "language": r.language,
                "genre": r.genre,
                "subgenre": r.subgenre,
                "required_length": r.required_length,
                "criteria_json": json.dumps([c.model_dump() for c in r.criteria], ensure_ascii=False),
                "metadata_json": json.dumps(r.metadata, ensure_ascii=False, sort_keys=True),
            }
            for r in rows
        ],
        schema=INSTRUCTIONS_SCHEMA,
    )


def instructions_from_arrow(table: pa.Table) -> list[Instruction]:
    out = []
    for row in table.to_pylist():
        criteria = tuple(Criterion(**c) for c in json.loads(row.pop("criteria_json") or "[]"))
        metadata = json.loads(row.pop("metadata_json") or "{}")
        out.append(Instruction(**row, criteria=criteria, metadata=metadata))
    return out
