"""The benchmark suites, by name: `SUITES` (what `evaluation.benchmarks.<name>` selects) and
`data_fingerprint` (the bytes a suite's `load` reads, for cache keys and lineage).

Adding a benchmark: its own module in `tasks/evaluation/` (the official prompts and formulas, the
suite, its departures) and one line in `BUILT_IN` below. A recipe names it under
`evaluation.benchmarks` without any change to `configs/`; the evaluate stage refuses a name that
no suite is registered under (`check_benchmark_names`, before any call).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from configs.loading import ConfigError
from configs.schema import BenchmarkConfig
from tasks.evaluation.base import BenchmarkSuite
from tasks.evaluation.common import files_fingerprint, resolve_path
from tasks.evaluation.creative_writing_elo import CreativeWritingV3EloSuite
from tasks.evaluation.creative_writing_v3 import CreativeWritingV3Suite
from tasks.evaluation.longbench_v2 import LongBenchV2Suite
from tasks.evaluation.longbench_write import LongBenchWriteSuite
from tasks.evaluation.writingbench import WritingBenchSuite
from tasks.registry import Registry

__all__ = ["BUILT_IN", "SUITES", "check_benchmark_names", "data_fingerprint"]

SUITES: Registry[BenchmarkSuite] = Registry("benchmark suite")

# configs.schema.BENCHMARKS documents these names, in this order.
BUILT_IN: tuple[BenchmarkSuite, ...] = (
    WritingBenchSuite(),
    LongBenchWriteSuite(),
    CreativeWritingV3Suite(),
    LongBenchV2Suite(),
    CreativeWritingV3EloSuite(),
)
for _suite in BUILT_IN:
    SUITES.register(_suite.name)(_suite)


def check_benchmark_names(names: Iterable[str]) -> None:
    """Every configured benchmark has a registered suite; else a ConfigError naming the field."""
    for name in names:
        if name not in SUITES:
            raise ConfigError(
                f"evaluation.benchmarks.{name}: no benchmark suite is registered under '{name}' "
                f"(registered: {', '.join(SUITES)})"
            )


def data_fingerprint(config: BenchmarkConfig, benchmark: str | None = None) -> str:
    """sha256 hex of the benchmark data, for cache keys and lineage: changes when the data does.

    One file: the sha256 of its bytes (whether `path` names it or its folder). A folder: with
    `benchmark`, exactly the files that suite's `load` reads; without, every file of the folder (a
    superset: it may change when nothing that is read changed, never the reverse). Several files
    are hashed with their relative names, so renames count."""
    path, _ = resolve_path(config)
    files: list[Path]
    if benchmark is not None:
        files = SUITES[benchmark].data_files(config)  # type: ignore[attr-defined]
    elif path.is_file():
        files = [path]
    else:
        files = sorted(
            (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
        )
    return files_fingerprint(files, path)
