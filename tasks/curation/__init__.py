"""Data curation: margin-aware selection (stage 3), reference ladders (stage 4) and trainer exports."""

from tasks.curation.exports import (
    HF_FEATURES,
    VERL_DATA_SOURCE,
    VERL_SCHEMA,
    VERL_SYSTEM_MESSAGE,
    VERL_TEST_SCHEMA,
    to_hf_dataset,
    to_verl_rows,
    write_verl_parquet,
    write_verl_splits,
)
from tasks.curation.ordering import (
    EXCLUDED_SCHEMA,
    LADDERS_SCHEMA,
    RUNG_TYPE,
    build_ladders,
    criteria_text,
)
from tasks.curation.selection import (
    SCORE_COLUMNS,
    SELECTIONS_SCHEMA,
    SELECTORS,
    cut_size,
    select,
    selected_ids,
    summarize,
)

__all__ = [
    "EXCLUDED_SCHEMA",
    "HF_FEATURES",
    "LADDERS_SCHEMA",
    "RUNG_TYPE",
    "SCORE_COLUMNS",
    "SELECTIONS_SCHEMA",
    "SELECTORS",
    "VERL_DATA_SOURCE",
    "VERL_SCHEMA",
    "VERL_SYSTEM_MESSAGE",
    "VERL_TEST_SCHEMA",
    "build_ladders",
    "criteria_text",
    "cut_size",
    "select",
    "selected_ids",
    "summarize",
    "to_hf_dataset",
    "to_verl_rows",
    "write_verl_parquet",
    "write_verl_splits",
]
