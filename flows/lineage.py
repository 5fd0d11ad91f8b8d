"""`wrl lineage TARGET`: walk from a dataset version, a training checkpoint or a trained model back
to everything that produced it: the ladders, scores, generations and instructions, each with its
stage run, config hash and the judge or generators it used."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from storage import DatasetRef, Storage
from tasks.stages.publish import describe_judge

LINEAGE_FILE = "wrl_lineage.json"  # written into each checkpoint by the trainer callback


def resolve_target(storage: Storage, target: str) -> dict[str, Any]:
    """{kind, label, start: [DatasetRef], head: stage run dict or None, detail}."""
    folder = Path(target)
    if (folder / LINEAGE_FILE).is_file():
        record = json.loads((folder / LINEAGE_FILE).read_text())
        return _from_training(storage, f"checkpoint {folder} (step {record.get('step')})", record)
    model_id = target.removeprefix("model:")
    model = storage.training.model(model_id)
    if model is not None:
        record = {
            "ladders": model["ladders_ref"],
            "stage_run_id": model["stage_run_id"],
            "step": model["step"],
        }
        return _from_training(storage, f"model {model_id} ({model['path']}, step {model['step']})", record)
    try:
        ref = DatasetRef.parse(target)
    except ValueError:
        raise ValueError(
            f"'{target}' is neither a dataset version (name@N), a checkpoint folder with {LINEAGE_FILE}, "
            "nor a registered model id (`wrl models`)"
        ) from None
    if not storage.datasets.exists(ref):
        raise ValueError(
            f"dataset version {ref} does not exist in {storage.root} (`wrl datasets` lists them)"
        )
    return {"label": f"dataset {ref}", "chain": storage.catalog.upstream(ref), "detail": {}}


def _from_training(storage: Storage, label: str, record: dict[str, Any]) -> dict[str, Any]:
    chain = []
    if record.get("ladders"):
        chain = storage.catalog.upstream(DatasetRef.parse(record["ladders"]))
    head = None
    if record.get("stage_run_id"):
        rows = storage.catalog.query(
            "SELECT stage, status, config_hash, config_json, started_at FROM stage_runs WHERE stage_run_id = ?",
            [record["stage_run_id"]],
        ).to_dict("records")
        if rows:
            head = {**rows[0], "stage_run_id": record["stage_run_id"],
                    "config": json.loads(rows[0].pop("config_json") or "null")}  # fmt: skip
    return {"label": label, "chain": ([head] if head else []) + chain, "detail": record}


def describe_config(stage: str, config: Any) -> str:
    """The part of a stage's config slice a reader needs to recognise the run."""
    if not isinstance(config, dict):
        return ""
    parts = []
    if judge := describe_judge(config):
        parts.append(f"judge {judge}")
    if stage == "generate":
        parts.append("generators " + ", ".join(
            f"{g['name']}={g['model']} ({g['strategy']})" for g in config.get("generators", [])))  # fmt: skip
    if stage == "select" and isinstance(config.get("selection"), dict):
        s = config["selection"]
        parts.append(
            f"selection {s.get('strategy')} top_k={s.get('top_k')} top_fraction={s.get('top_fraction')}"
        )
    if stage == "train" and isinstance(config.get("training"), dict):
        t = config["training"]
        parts.append(f"{t.get('algorithm')} lr={t.get('learning_rate')} steps={t.get('max_steps')}")
    if stage in ("sft_writer", "sft_reference") and isinstance(config.get("sft"), dict):
        t = config["sft"]
        parts.append(f"sft from {config.get('policy', {}).get('model')} lr={t.get('learning_rate')} "
                     f"epochs={t.get('epochs')} max_steps={t.get('max_steps')} lora={t.get('lora') is not None}")  # fmt: skip
    return "; ".join(parts)
