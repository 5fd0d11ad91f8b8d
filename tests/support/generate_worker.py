"""A separate process that runs ingest -> generate on the tiny model, logging every real LLM call.

usage: python -m tests.support.generate_worker RECIPE CALLS_FILE
Used by the kill-and-resume test: each line of CALLS_FILE is one call that reached the backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tasks.stages.runner as runner
from configs.loading import load_recipe
from tasks.stages import generate, ingest


def main(recipe_path: str, calls_file: str) -> None:
    real = runner.create_client

    def logged(recipe, backend, model):
        client = real(recipe, backend, model)
        inner_chat = client.chat

        async def chat(messages, params, **kwargs):
            with Path(calls_file).open("a") as fh:
                fh.write(messages[-1]["content"][:40].replace("\n", " ") + "\n")
            return await inner_chat(messages, params, **kwargs)

        client.chat = chat
        return client

    runner.create_client = logged
    recipe = load_recipe(recipe_path)
    instructions = runner.run_stage(ingest.SPEC, ingest.compute, recipe)
    result = runner.run_stage(generate.SPEC, generate.compute, recipe, instructions.outputs)
    print(result.outputs["generations"])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
