"""Storage: the DuckDB catalog and the versioned Delta datasets under one root.

`open_storage(config)` is the entry point. Nothing here imports Prefect or tasks/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from configs.schema import StorageConfig
from storage.batches import BatchLedger
from storage.catalog import CachedStage, Catalog
from storage.curriculum import CurriculumError, CurriculumStore, Promotion, StepOutcome
from storage.datasets import DatasetNotFoundError, DatasetStore
from storage.evaluations import EvaluationLog
from storage.locking import StageClaim, StorageBusyError, StorageLock
from storage.provenance import code_version
from storage.refs import DatasetRef
from storage.responses import ResponseCache
from storage.training_log import TrainingLog

__all__ = [
    "BatchLedger",
    "CachedStage",
    "Catalog",
    "CurriculumError",
    "CurriculumStore",
    "DatasetNotFoundError",
    "DatasetRef",
    "DatasetStore",
    "EvaluationLog",
    "Promotion",
    "ResponseCache",
    "StepOutcome",
    "Storage",
    "StorageBusyError",
    "TrainingLog",
    "code_version",
    "open_storage",
]


@dataclass(frozen=True)
class Storage:
    root: Path
    catalog: Catalog
    datasets: DatasetStore
    claims: StageClaim
    responses: ResponseCache
    batches: BatchLedger
    curriculum: CurriculumStore
    training: TrainingLog
    evaluations: EvaluationLog


def open_storage(config: StorageConfig) -> Storage:
    root = Path(config.root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    lock = StorageLock(root, config.lock_timeout_s)
    catalog = Catalog(root / "catalog.duckdb", lock)
    catalog.migrate()
    return Storage(
        root=root,
        catalog=catalog,
        datasets=DatasetStore(root / "datasets", catalog, lock),
        claims=StageClaim(root),
        responses=ResponseCache(catalog),
        batches=BatchLedger(catalog),
        curriculum=CurriculumStore(catalog),
        training=TrainingLog(catalog),
        evaluations=EvaluationLog(catalog),
    )
