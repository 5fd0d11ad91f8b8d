"""What a configured candidate is: a model on a backend, with its lineage.

`resolve_candidates` turns `evaluation.candidates` into `Candidate`s. `from_training` reads this
recipe's most recent training run from the catalog (one still running counts, which is what a
nightly evaluation of a long run wants): `base` is the policy before training (step 0), `final`
the registered trained model, `latest` the newest complete checkpoint, `all` every checkpoint kept
(one candidate each, named `<name>@<step>`). LoRA checkpoints are merged once into plain folders
under `<root>/models/checkpoints/`, so every backend can load them. `model: model:<id>` names a
model registered in the catalog.

`from_sft` names this recipe's SFT models (tasks/stages/sft.py), from the newest run of its stage:
`writer` the policy's SFT starting point, `reference` the Reference-SFT baseline. With `sft.writer`,
`from_training: base` is the SFT writer's model too (RL's step 0), and LoRA checkpoints merge into
the model their run started from (their `wrl_lineage.json` says which). The paper's rows for one
base model: `model: <the policy's model>` (base), `from_sft: writer` (SFT), `from_sft: reference`
(Reference-SFT), `from_training: final` (Writing-RL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.loading import ConfigError
from configs.schema import CandidateConfig, Recipe
from storage import Storage
from tasks.llm.embedded import resolve_model_path_once
from tasks.training.checkpoints import TrainingRunPaths, checkpoint_model, checkpoints, training_run_paths
from tasks.training.sft import sft_run_paths

REGISTERED_PREFIX = "model:"


@dataclass(frozen=True)
class Candidate:
    name: str  # the row label (`<name>@<step>` for each checkpoint of `from_training: all`)
    backend: str
    model: str  # what the backend loads or calls: folder, embedded:<name>, API model name
    strategy: str
    system_prompt: str | None
    tokenizer: str | None  # for LongBench v2 truncation; None: the model's own (local models)
    # model | registered | training:base | training:final | checkpoint | sft:writer | sft:reference
    source: str
    train_run_id: str | None = None
    step: int | None = None  # training step of this policy (0 = before training)

    def lineage(self) -> dict[str, Any]:
        return {"candidate": self.name, "candidate_model": self.model, "candidate_source": self.source,
                "train_run_id": self.train_run_id, "step": self.step}  # fmt: skip

    def identity(self, recipe: Recipe) -> dict[str, Any]:
        """Everything that changes what this candidate writes (the stage's cache key)."""
        return {
            "model": self.model,
            "backend": recipe.backend_identity(self.backend),
            "strategy": self.strategy,
            "system_prompt": self.system_prompt,
            "tokenizer": self.tokenizer,
        }


def resolve_candidates(recipe: Recipe, storage: Storage, names: list[str] | None = None) -> list[Candidate]:
    """The recipe's candidates (or the named ones), resolved; ConfigError when one cannot be."""
    if recipe.evaluation is None:
        raise ConfigError(f"recipe '{recipe.name}' has no `evaluation:` block")
    configured = {c.name: c for c in recipe.evaluation.candidates}
    unknown = sorted(set(names or ()) - set(configured))
    if unknown:
        raise ConfigError(f"candidates {unknown} are not in evaluation.candidates ({', '.join(configured)})")
    chosen = [configured[n] for n in names] if names else list(configured.values())
    resolved: list[Candidate] = []
    for config in chosen:
        resolved.extend(_resolve(recipe, storage, config))
    return resolved


def _training_run(recipe: Recipe, storage: Storage) -> TrainingRunPaths | None:
    """The pinned `evaluation.training_run`, else this recipe's most recent one (None: never trained)."""
    pinned = recipe.evaluation.training_run if recipe.evaluation else None
    if pinned is not None:
        return training_run_paths(storage.root, recipe.name, pinned.removeprefix("train-"))
    run = storage.catalog.latest_stage_run("train", recipe.name)
    return None if run is None else training_run_paths(storage.root, recipe.name, run["cache_key"])


def _resolve(recipe: Recipe, storage: Storage, config: CandidateConfig) -> list[Candidate]:
    backend = config.backend or recipe.policy.backend
    common = dict(strategy=config.strategy, system_prompt=config.system_prompt, tokenizer=config.tokenizer)
    where = f"evaluation.candidates '{config.name}'"
    if config.model is not None:
        if config.model.startswith(REGISTERED_PREFIX):
            model_id = config.model.removeprefix(REGISTERED_PREFIX)
            row = storage.training.model(model_id)
            if row is None:
                known = ", ".join(m["model_id"] for m in storage.training.models()) or "none"
                raise ConfigError(f"{where}: no registered model '{model_id}' (registered: {known})")
            return [Candidate(config.name, backend, row["path"], source="registered",
                              train_run_id=row["train_run_id"], step=row["step"], **common)]  # fmt: skip
        return [Candidate(config.name, backend, config.model, source="model", **common)]

    if config.from_sft is not None:
        row = _sft_model(recipe, storage, config.from_sft, where)
        # No training run or step: the comparison table's step column and the plots are RL steps.
        return [Candidate(config.name, backend, row["path"], source=f"sft:{config.from_sft}", **common)]
    paths = _training_run(recipe, storage)
    if config.from_training == "base":
        base = recipe.policy.model
        if recipe.sft is not None and recipe.sft.writer is not None:  # RL starts from the SFT writer
            base = _sft_model(recipe, storage, "writer", where)["path"]
        return [Candidate(config.name, backend, base, source="training:base",
                          train_run_id=paths.curriculum_id if paths else None, step=0, **common)]  # fmt: skip
    if paths is None:
        raise ConfigError(
            f"{where}: from_training '{config.from_training}' needs a training run of recipe "
            f"'{recipe.name}' in {storage.root}; run `wrl run train` first"
        )
    if config.from_training == "final":
        row = storage.training.model(paths.model_id)
        if row is None:
            raise ConfigError(
                f"{where}: training run {paths.curriculum_id} has not finished (no registered model "
                f"'{paths.model_id}'); use from_training: latest for its newest checkpoint"
            )
        return [Candidate(config.name, backend, row["path"], source="training:final",
                          train_run_id=paths.curriculum_id, step=row["step"], **common)]  # fmt: skip
    found = checkpoints(paths.work_dir)
    if not found:
        raise ConfigError(
            f"{where}: training run {paths.curriculum_id} has no checkpoint yet in {paths.work_dir}"
        )
    if config.from_training == "latest":
        found = found[-1:]
    merged_dir = storage.root / "models" / "checkpoints"
    candidates = []
    for step, folder in found:
        base_path = resolve_model_path_once(_run_base(recipe, folder), Path(recipe.storage.model_cache))
        model = str(checkpoint_model(folder, base_path, merged_dir))
        name = config.name if config.from_training == "latest" else f"{config.name}@{step}"
        candidates.append(Candidate(name, backend, model, source="checkpoint",
                                    train_run_id=paths.curriculum_id, step=step, **common))  # fmt: skip
    return candidates


def _run_base(recipe: Recipe, checkpoint: Path) -> str:
    """The model a checkpoint's run started from: its lineage says (the SFT writer's folder when RL
    started from it); the policy's model for checkpoints written before it did."""
    lineage = Path(checkpoint) / "wrl_lineage.json"
    if lineage.is_file():
        base = json.loads(lineage.read_text()).get("base_model")
        if base:
            return str(base)
    return recipe.policy.model


SFT_STAGES = {"writer": "sft_writer", "reference": "sft_reference"}


def _sft_model(recipe: Recipe, storage: Storage, mode: str, where: str) -> dict[str, Any]:
    """The registered model of this recipe's newest `sft_<mode>` stage run (ConfigError when none)."""
    stage = SFT_STAGES[mode]
    run = storage.catalog.latest_stage_run(stage, recipe.name)
    if run is None:
        raise ConfigError(
            f"{where}: from_sft '{mode}' needs a run of stage {stage} of recipe '{recipe.name}' in "
            f"{storage.root}; run `wrl stage {stage}` first (the recipe needs `sft.{mode}`)"
        )
    model_id = sft_run_paths(storage.root, recipe.name, mode, run["cache_key"]).model_id
    row = storage.training.model(model_id)
    if row is None:
        raise ConfigError(
            f"{where}: the newest {stage} run ({run['stage_run_id'][:12]}, {run['status']}) registered no "
            f"model '{model_id}'; run `wrl stage {stage}` to finish it"
        )
    return row
