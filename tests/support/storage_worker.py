"""A separate process that writes to a storage root (for the concurrent-writer tests).

usage: python -m tests.support.storage_worker ROOT WRITER N [LOCK_TIMEOUT_S]
       python -m tests.support.storage_worker ROOT --hold SECONDS
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from configs.schema import StorageConfig
from storage import DatasetRef, StorageBusyError, open_storage


def write_many(root: str, writer: str, n: int, timeout: float) -> None:
    storage = open_storage(StorageConfig(root=root, lock_timeout_s=timeout))
    for i in range(n):
        run_id = storage.catalog.start_run(
            flow="test",
            recipe=writer,
            recipe_path=None,
            config_hash="h",
            code_version="test",
            prefect_flow_run_id=None,
        )
        sr = storage.catalog.start_stage_run(
            run_id=run_id,
            stage="write",
            stage_version=1,
            config_hash="h",
            cache_key=f"{writer}-{i}",
            code_version="test",
            prefect_flow_run_id=None,
            prefect_task_run_id=None,
            inputs={"seed": DatasetRef("seed", 0)},
        )
        ref = storage.datasets.write(
            "shared",
            pa.table({"writer": [writer], "i": [i]}),
            lineage={"writer": writer, "i": i},
            stage_run_id=sr,
        )
        storage.catalog.finish_stage_run(
            sr,
            status="completed",
            outputs={"shared": ref},
            cache_key=f"{writer}-{i}",
            stage="write",
            stage_version=1,
        )
        storage.catalog.finish_run(run_id, status="completed")


def hold(root: str, seconds: float) -> None:
    storage = open_storage(StorageConfig(root=root))
    with storage.catalog.connect("holding the lock for a test"):
        print("holding", flush=True)
        time.sleep(seconds)


if __name__ == "__main__":
    root = sys.argv[1]
    if sys.argv[2] == "--hold":
        hold(root, float(sys.argv[3]))
    else:
        try:
            write_many(root, sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 120)
        except StorageBusyError as exc:
            print(f"BUSY: {exc}", file=sys.stderr)
            sys.exit(3)
