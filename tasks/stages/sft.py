"""The sft stages: supervised fine-tuning with TRL's SFTTrainer (tasks/training/sft.py), in two modes.

- `sft_writer` (after ingest, before generate; when `sft.writer` is set): fine-tunes the policy
  generator's model on `sft.writer.data`, (prompt, response) pairs. The result replaces the policy's
  model: generate writes the policy's responses (rung 0, s_policy) with it and train starts RL from
  it. Both then read its `sft_models` version, which is in their cache keys and their lineage.
- `sft_reference` (after order; when `sft.reference.enabled`): the Reference-SFT baseline. The
  starting policy (the SFT writer when configured, else the policy generator's model: the model RL
  starts from, so the two compare like for like) fine-tuned on the top rung, the best reference, of
  every training-split ladder, leaving out ladders whose top rung is the policy's own response.

A pair's prompt is the direct strategy's messages for the policy generator (its system prompt, if
any, then the instruction), whatever the policy's strategy: the responses are plain answers. Each
stage writes a one-row table (`sft_models`, `sft_reference_models`: model id, mode, path, base,
examples, steps, final loss, data fingerprint) and registers the model in the catalog's `models`
(`wrl models`, `wrl serve model:<id>`, evaluation's `from_sft`). The trainer runs as its own process
tree (`accelerate launch`, one rank or several: `sft.gpus` / `sft.processes`, `sft.distributed`), the
stage waiting on it as the train stage does. The cache key is the `sft` block's shared settings less
the layout (gpus, processes) and the mode's own block, the policy's model and system prompt, and the
data: the source file's sha256 (writer) or the ladders version (+ the SFT writer's version, reference).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from configs.loading import ConfigError
from configs.schema import LAYOUT_FIELDS, GeneratorConfig, Recipe, SFTConfig
from storage import DatasetRef
from tasks.generation import STRATEGIES
from tasks.instructions import Instruction
from tasks.instructions.sft_pairs import load_sft_pairs, sft_data_fingerprint
from tasks.llm.embedded import resolve_model_path_once
from tasks.llm.registry import release_local_engines
from tasks.stages.runner import StageContext, StageOutput, StageResult, StageSpec, run_stage
from tasks.training.args import world_size
from tasks.training.sft import SFTExample, run_sft, sft_run_paths

WRITER_DATASET = "sft_models"
REFERENCE_DATASET = "sft_reference_models"
REGISTERED_PREFIX = "model:"

SFT_MODELS_SCHEMA = pa.schema(
    [
        ("model_id", pa.string()),
        ("mode", pa.string()),  # writer | reference
        ("path", pa.string()),  # the plain model folder
        ("base_model", pa.string()),  # what it was fine-tuned from
        ("examples", pa.int64()),
        ("steps", pa.int64()),
        ("final_loss", pa.float64()),
        ("first_loss", pa.float64()),
        ("data", pa.string()),  # the source (format:path) or the ladders version
        ("data_fingerprint", pa.string()),  # sha256 of the source bytes / of the pairs trained on
        ("resumed_from", pa.int64()),
    ]
)


def writer_enabled(recipe: Recipe) -> bool:
    return recipe.sft is not None and recipe.sft.writer is not None


def reference_enabled(recipe: Recipe) -> bool:
    return recipe.sft is not None and recipe.sft.reference is not None and recipe.sft.reference.enabled


def writer_inputs(recipe: Recipe) -> tuple[str, ...]:
    """The extra input of the stages that use the SFT writer's model (generate, train, sft_reference)."""
    return (WRITER_DATASET,) if writer_enabled(recipe) else ()


def _shared(sft: SFTConfig) -> dict[str, Any]:
    """The settings both modes share, less the layout (gpus, processes): where it runs, not what it
    learns (`batch_size` counts the pairs over all ranks). The engine (`distributed`, `cpu_offload`)
    stays in, as in the train stage's key: a resume reads checkpoints of the same engine."""
    return sft.model_dump(mode="json", exclude={"writer", "reference", *LAYOUT_FIELDS})


def _policy(recipe: Recipe) -> dict[str, Any]:
    return {"model": recipe.policy.model, "system_prompt": recipe.policy.system_prompt}


def _writer_slice(recipe: Recipe) -> dict[str, Any] | None:
    if not writer_enabled(recipe):
        return None
    sft = recipe.sft
    return {"sft": _shared(sft), "writer": sft.writer.model_dump(mode="json"),
            "source": sft_data_fingerprint(sft.writer.data), "policy": _policy(recipe)}  # fmt: skip


def _reference_slice(recipe: Recipe) -> dict[str, Any] | None:
    if not reference_enabled(recipe):
        return None
    sft = recipe.sft
    return {
        "sft": _shared(sft),
        "reference": sft.reference.model_dump(mode="json"),
        "policy": _policy(recipe),
    }


WRITER_SPEC = StageSpec(
    name="sft_writer",
    version=1,
    inputs=(),
    outputs=(WRITER_DATASET,),
    description="Fine-tune the policy's model on (prompt, response) pairs: the policy generate and train use",
    config_slice=_writer_slice,
    enabled=writer_enabled,
)

REFERENCE_SPEC = StageSpec(
    name="sft_reference",
    version=1,
    inputs=("ladders",),
    outputs=(REFERENCE_DATASET,),
    description="Reference-SFT baseline: the starting policy fine-tuned on each training ladder's top rung",
    config_slice=_reference_slice,
    extra_inputs=writer_inputs,
    enabled=reference_enabled,
)


def direct_messages(policy: GeneratorConfig, prompt: str) -> list[dict[str, str]]:
    """The prompt as the direct strategy sends it to the policy (its system prompt, the instruction)."""
    return STRATEGIES["direct"].messages(Instruction(id="sft", prompt=prompt, source="sft"), policy)


def sft_writer_model(ctx: StageContext) -> dict[str, Any] | None:
    """The SFT writer's row (model id, path, ...) when this stage reads `sft_models`; None otherwise."""
    if WRITER_DATASET not in ctx.inputs:
        return None
    rows = ctx.read(WRITER_DATASET).to_pylist()
    if len(rows) != 1:
        raise ValueError(f"{ctx.inputs[WRITER_DATASET]}: expected one SFT model, found {len(rows)}")
    row = rows[0]
    if not (Path(row["path"]) / "config.json").is_file():
        raise FileNotFoundError(
            f"{ctx.inputs[WRITER_DATASET]}: the SFT model folder {row['path']} is gone; retrain it with "
            "`wrl stage sft_writer --refresh`"
        )
    return row


def reference_examples(ladders: pa.Table, policy: GeneratorConfig) -> tuple[list[SFTExample], dict[str, int]]:
    """One pair per training-split ladder: its prompt and its top rung (the best reference), unless
    that rung is the policy's own response. Ladders written before `split` / `policy_rung` existed
    were all for training, with the policy's response on rung 0."""
    columns = ["instruction_id", "prompt", "rungs"]
    columns += [c for c in ("policy_rung", "split") if c in ladders.column_names]
    examples, skipped = [], {"validation": 0, "policy_on_top": 0, "empty": 0}
    for row in ladders.select(columns).to_pylist():
        if row.get("split", "train") != "train":
            skipped["validation"] += 1
            continue
        rungs = row["rungs"] or []
        top = len(rungs) - 1
        if top < 0 or not (rungs[top]["text"] or "").strip():
            skipped["empty"] += 1
            continue
        if top == (row.get("policy_rung") or 0):
            skipped["policy_on_top"] += 1
            continue
        examples.append(
            SFTExample(direct_messages(policy, row["prompt"]), rungs[top]["text"], row["instruction_id"])
        )
    return examples, skipped


def _examples_fingerprint(examples: list[SFTExample]) -> str:
    payload = [[ex.messages, ex.response] for ex in examples]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _check_process(stage: str) -> None:
    if world_size() > 1:
        raise ConfigError(
            f"{stage}: this process is one of {world_size()} (WORLD_SIZE={world_size()}); run `wrl` as one "
            "process: the stage launches the SFT trainer's ranks itself (sft.gpus / sft.processes)"
        )


def _train(
    ctx: StageContext, mode: str, examples: list[SFTExample], *, base: str, base_label: str,
    data: str, fingerprint: str, ladders_ref: str | None,
) -> StageOutput:  # fmt: skip
    recipe, sft = ctx.recipe, ctx.recipe.sft
    stage = ctx.spec.name
    paths = sft_run_paths(ctx.storage.root, recipe.name, mode, ctx.cache_key)
    base_path = resolve_model_path_once(base, Path(recipe.storage.model_cache))
    release_local_engines()  # curation's engines leave the device to the trainer
    ctx.logger.info("%s: fine-tuning %s on %d pairs -> %s", stage, base_label, len(examples), paths.model_dir)

    def on_log(step: int, max_steps: int, logs: dict[str, float]) -> None:
        if "loss" in logs:
            ctx.logger.info("%s: step %d/%d loss %.4f", stage, step, max_steps, logs["loss"])

    lineage = {"stage": stage, "mode": mode, "base_model": base_path, "data": data, "data_fingerprint": fingerprint,
               "cache_key": ctx.cache_key, "stage_run_id": ctx.stage_run_id,
               "inputs": {role: str(ref) for role, ref in ctx.inputs.items()}}  # fmt: skip
    outcome = run_sft(
        base_model=base_path, examples=examples, sft=sft, work_dir=paths.work_dir, model_dir=paths.model_dir,
        lineage=lineage, on_log=on_log,
    )  # fmt: skip
    ctx.storage.training.register_model(
        {"model_id": paths.model_id, "path": str(paths.model_dir), "base_model": base_label,
         "train_run_id": f"sft-{ctx.cache_key[:16]}", "stage_run_id": ctx.stage_run_id,
         "ladders_ref": ladders_ref, "config_hash": ctx.cache_key, "step": outcome.steps}
    )  # fmt: skip
    row = {
        "model_id": paths.model_id, "mode": mode, "path": str(paths.model_dir), "base_model": base_label,
        "examples": outcome.examples, "steps": outcome.steps, "final_loss": outcome.final_loss,
        "first_loss": outcome.losses[0][1] if outcome.losses else None, "data": data,
        "data_fingerprint": fingerprint, "resumed_from": outcome.resumed_from,
    }  # fmt: skip
    dataset = WRITER_DATASET if mode == "writer" else REFERENCE_DATASET
    summary = {"model_id": paths.model_id, "examples": outcome.examples, "steps": outcome.steps,
               "final_loss": None if outcome.final_loss is None else round(outcome.final_loss, 4),
               "resumed_from": outcome.resumed_from, "ranks": outcome.ranks, "reused": outcome.reused}  # fmt: skip
    return StageOutput(
        tables={dataset: pa.Table.from_pylist([row], schema=SFT_MODELS_SCHEMA)}, summary=summary
    )


def compute_writer(ctx: StageContext) -> StageOutput:
    recipe = ctx.recipe
    if not writer_enabled(recipe):
        raise ConfigError(f"recipe '{recipe.name}': stage 'sft_writer' needs an `sft.writer` block")
    _check_process("sft_writer")
    data = recipe.sft.writer.data
    pairs = load_sft_pairs(data)
    examples = [SFTExample(direct_messages(recipe.policy, p.prompt), p.response, p.location) for p in pairs]
    return _train(
        ctx, "writer", examples, base=recipe.policy.model, base_label=recipe.policy.model,
        data=f"{data.format}:{data.path}", fingerprint=sft_data_fingerprint(data), ladders_ref=None,
    )  # fmt: skip


def compute_reference(ctx: StageContext) -> StageOutput:
    recipe = ctx.recipe
    if not reference_enabled(recipe):
        raise ConfigError(f"recipe '{recipe.name}': stage 'sft_reference' needs `sft.reference` (enabled)")
    _check_process("sft_reference")
    examples, skipped = reference_examples(ctx.read("ladders"), recipe.policy)
    ladders = str(ctx.inputs["ladders"])
    if not examples:
        raise ValueError(
            f"{ladders}: no training ladder has a reference above the policy's own response to fine-tune on "
            f"(left out: {skipped})"
        )
    ctx.logger.info("sft_reference: %d top rungs; left out %s", len(examples), skipped)
    writer = sft_writer_model(ctx)
    base, label = (recipe.policy.model, recipe.policy.model) if writer is None else (
        writer["path"], REGISTERED_PREFIX + writer["model_id"])  # fmt: skip
    output = _train(
        ctx, "reference", examples, base=base, base_label=label, data=ladders,
        fingerprint=_examples_fingerprint(examples), ladders_ref=ladders,
    )  # fmt: skip
    return StageOutput(output.tables, {**output.summary, "left_out": skipped})


@task(name="sft_writer", cache_policy=NO_CACHE, persist_result=False)
def sft_writer(
    recipe: Recipe,
    inputs: dict[str, DatasetRef] | None = None,
    run_id: str | None = None,
    refresh: bool = False,
) -> StageResult:
    return run_stage(WRITER_SPEC, compute_writer, recipe, inputs, run_id=run_id, refresh=refresh)


@task(name="sft_reference", cache_policy=NO_CACHE, persist_result=False)
def sft_reference(
    recipe: Recipe, inputs: dict[str, DatasetRef], run_id: str | None = None, refresh: bool = False
) -> StageResult:
    return run_stage(REFERENCE_SPEC, compute_reference, recipe, inputs, run_id=run_id, refresh=refresh)
