"""A separate process that runs the curation stages up to STAGE, logging every real LLM call.

usage: python -m tests.support.curation_worker RECIPE CALLS_FILE [generate|score] [PROBE_DELAY_S]
Used by the kill-and-resume tests. PROBE_DELAY_S makes judge calls go one at a time, each held
that long, so that a kill lands in the middle of scoring rather than after it. Each line of CALLS_FILE is one call that reached the backend:
`chat <prompt head>` for a generation, `probe <prompt head>` for a logprob judge call. The last
line printed is the reference of the stage's main output.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import tasks.stages.runner as runner
from configs.loading import load_recipe
from tasks.stages import generate, ingest, score


def _log(calls_file: str, kind: str, messages) -> None:
    with Path(calls_file).open("a") as fh:
        fh.write(f"{kind} " + messages[-1]["content"][:40].replace("\n", " ") + "\n")


def log_calls(calls_file: str, probe_delay_s: float = 0.0, module=runner) -> None:
    """From now on, every client the stages (or, with `module=tasks.llm.registry`, the trainer's
    rank 0) create logs each call that reaches the backend."""
    real = module.create_client
    # Serialised only when held (the training reward judges on loops of its own).
    one_probe_at_a_time = asyncio.Semaphore(1) if probe_delay_s else contextlib.nullcontext()

    def logged(recipe, backend, model):
        client = real(recipe, backend, model)
        inner_chat, inner_probe = client.chat, getattr(client, "next_token_logprobs", None)

        async def chat(messages, params, **kwargs):
            _log(calls_file, "chat", messages)
            return await inner_chat(messages, params, **kwargs)

        async def probe(messages, candidates):
            async with one_probe_at_a_time:
                _log(calls_file, "probe", messages)
                result = await inner_probe(messages, candidates)
                await asyncio.sleep(probe_delay_s)
                return result

        client.chat = chat
        if inner_probe is not None:
            client.next_token_logprobs = probe
        return client

    module.create_client = logged


def main(recipe_path: str, calls_file: str, until: str = "generate", probe_delay_s: str = "0") -> None:
    log_calls(calls_file, float(probe_delay_s))
    recipe = load_recipe(recipe_path)
    instructions = runner.run_stage(ingest.SPEC, ingest.compute, recipe)
    generated = runner.run_stage(generate.SPEC, generate.compute, recipe, instructions.outputs)
    if until == "generate":
        print(generated.outputs["generations"])
        return
    scored = runner.run_stage(
        score.SPEC, score.compute, recipe, {**instructions.outputs, **generated.outputs}
    )
    print(scored.outputs["judgments"])


if __name__ == "__main__":
    main(*sys.argv[1:])
