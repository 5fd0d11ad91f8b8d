"""A separate process running one toy stage (for the concurrent-stage test).

usage: python -m tests.support.stage_worker STORE_ROOT CALLS_FILE
Prints the StageResult as JSON on its last line.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pyarrow as pa

from storage import DatasetRef
from tasks.stages.runner import StageOutput, StageSpec, run_stage
from tests.support.recipes import policy_recipe

SPEC = StageSpec(
    "slow_toy", 1, inputs=("source",), outputs=("out",), description="toy", config_slice=lambda r: {}
)


def main(root: str, calls_file: str) -> None:
    recipe = policy_recipe({"local": {"kind": "transformers"}}, storage={"root": root})

    def compute(ctx) -> StageOutput:
        with Path(calls_file).open("a") as fh:  # one line per real computation
            fh.write("computed\n")
        time.sleep(3)
        return StageOutput({"out": pa.table({"x": [1]})})

    result = run_stage(SPEC, compute, recipe, {"source": DatasetRef("source", 0)})
    print(json.dumps({"cached": result.cached, "out": str(result.outputs["out"])}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
