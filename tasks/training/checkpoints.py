"""Where a training run keeps its things, and its checkpoints as models another stage can load.

A run is named by its stage cache key (same config + same ladders -> same run): its checkpoints
live under `<root>/training/<key16>/checkpoint-<n>/`, its curriculum is `train-<key16>` and its
final policy is registered as `<recipe>-<key8>`. This module does not import TRL, so evaluation can
use it without loading the trainer.

TRL names a checkpoint by its optimizer step n; everything else (the curriculum, the step logs,
`checkpoints()`, evaluation) counts RL steps. With `training.updates_per_step` u > 1, checkpoint-n
holds RL step n / u: the run writes u to `wrl_steps.json` in its work folder before training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_LOG = "trainer_log.jsonl"  # TRL's own per-step log dicts, one JSON line each, in the work dir
STEPS_FILE = "wrl_steps.json"  # {"updates_per_step": u}: TRL's optimizer steps per RL step


@dataclass(frozen=True)
class TrainingRunPaths:
    work_dir: Path  # checkpoints
    curriculum_id: str  # also the train_run_id of metrics, judgments and registered models
    model_id: str
    model_dir: Path  # the final policy (LoRA merged)


def training_run_paths(root: Path, recipe_name: str, cache_key: str) -> TrainingRunPaths:
    key = cache_key[:16]
    model_id = f"{recipe_name}-{key[:8]}"
    return TrainingRunPaths(
        Path(root) / "training" / key, f"train-{key}", model_id, Path(root) / "models" / model_id
    )


def write_updates_per_step(work_dir: Path, updates_per_step: int) -> None:
    """Record the run's optimizer updates per RL step (before its first checkpoint can exist)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = work_dir / f".{STEPS_FILE}.{os.getpid()}"
    partial.write_text(json.dumps({"updates_per_step": updates_per_step}))
    partial.replace(work_dir / STEPS_FILE)


def updates_per_step(work_dir: Path) -> int:
    """The run's optimizer updates per RL step; 1 for a run that recorded none (written before it)."""
    path = Path(work_dir) / STEPS_FILE
    return int(json.loads(path.read_text())["updates_per_step"]) if path.is_file() else 1


def checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints and their RL steps, oldest first. A folder without trainer_state.json was
    being written when the process died (or is being written now): not a checkpoint yet. One not at
    the end of an RL step cannot be resumed exactly and is not listed (the trainer never writes one)."""
    updates = updates_per_step(work_dir)
    found = []
    for path in Path(work_dir).glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            optimizer_step = int(match.group(1))
            if optimizer_step % updates:
                logger.warning("%s: not at the end of an RL step (%d updates each); ignored", path, updates)
                continue
            found.append((optimizer_step // updates, path))
    return sorted(found)


def latest_checkpoint(work_dir: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint folder and its RL step."""
    found = checkpoints(work_dir)
    if not found:
        return None
    step, path = found[-1]
    return path, step


def is_adapter(checkpoint: Path) -> bool:
    return (Path(checkpoint) / "adapter_config.json").is_file()


def merge_adapter(adapter: Path, base_model: str, out: Path, dtype: str = "float32") -> None:
    """The LoRA adapter in `adapter` merged into `base_model` (loaded in `dtype`), saved with the
    adapter's tokenizer (the base model's when the adapter has none) as a plain model in `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = Path(adapter)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype))
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(str(out))
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").is_file() else base_model
    AutoTokenizer.from_pretrained(str(tokenizer_source)).save_pretrained(str(out))


def checkpoint_model(checkpoint: Path, base_model_path: str, cache_dir: Path) -> Path:
    """A plain model folder for `checkpoint`: itself for a full fine-tune, else the LoRA adapter
    merged into the base model once, under `cache_dir/<name>` (written aside and renamed into
    place, so a killed merge leaves nothing a later run would mistake for a model)."""
    checkpoint = Path(checkpoint)
    if not is_adapter(checkpoint):
        return checkpoint
    target = Path(cache_dir) / f"{checkpoint.parent.name}-{checkpoint.name}"
    if (target / "config.json").is_file():
        return target
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    merge_adapter(checkpoint, base_model_path, partial)
    lineage = checkpoint / "wrl_lineage.json"
    if lineage.is_file():
        record = json.loads(lineage.read_text())
        (partial / "wrl_lineage.json").write_text(
            json.dumps({**record, "merged_from": str(checkpoint)}, indent=2)
        )
    try:
        partial.rename(target)
    except OSError:  # another process merged it first
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    logger.info("merged LoRA checkpoint %s into %s", checkpoint, target)
    return target
