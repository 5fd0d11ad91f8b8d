"""One module per pipeline stage, each with one Prefect task; `runner.run_stage` does the caching
and lineage for all of them. STAGE_ORDER is the DAG's topological order."""

STAGE_ORDER = ("ingest", "sft_writer", "generate", "score", "select", "order", "sft_reference", "train")
NEEDS_JUDGE = frozenset(
    {"score", "select", "order", "sft_reference", "train"}
)  # stages that cannot run without a `judge:` block
# Stages a recipe runs only when it configures them (`sft.writer`, `sft.reference`): a flow skips
# them otherwise, and its other stages' inputs and cache keys are as without them.
OPTIONAL_STAGES = frozenset({"sft_writer", "sft_reference"})
