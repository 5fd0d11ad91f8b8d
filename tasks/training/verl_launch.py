"""The train stage's launch of the verl engine (`training.engine: verl`): the ladders as verl's
parquet, verl's configuration generated from the recipe, and the driver
(`python -m tasks.training.verl_main`, in verl's environment) as a process tree the stage owns,
the same way it runs the TRL engine's ranks (tasks/training/launch.py: killed with the stage,
stopped as a group on a cancel, its output in `<work_dir>/trainer_output.log`).

The run's work folder holds `data/` (train.parquet, test.parquet: the ladder export's format,
tasks/curation/exports.py), `checkpoints/` (verl's `global_step_N`, each with the curriculum's
snapshot of that step in the store) and the spec. The final policy goes to the run's model folder,
as with TRL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from configs.loading import ConfigError
from tasks.curation.exports import VERL_SYSTEM_MESSAGE, write_verl_splits
from tasks.training.launch import SPEC_FILE, LaunchSpec, VerlLaunchSpec, run_process_tree
from tasks.training.reward_service import ACTOR_NAMESPACE, actor_name
from tasks.training.verl_config import VerlRun, overrides


def verl_python(environment: Path) -> Path:
    python = Path(environment) / "bin" / "python"
    if not python.is_file():
        raise ConfigError(
            f"training.verl.environment: {python} does not exist; build verl's environment with `make verl` "
            "(GPU machines) or `make verl-cpu`, or point training.verl.environment at one"
        )
    return python


def verl_spec(base: LaunchSpec, ladders: Any) -> VerlLaunchSpec:
    """`base` (the stage's spec, as for TRL) with the ladders written as verl's parquet and verl's
    configuration generated from the recipe and those files."""
    recipe, training = base.recipe, base.recipe.training
    assert training is not None
    work_dir = Path(base.work_dir)
    written = write_verl_splits(
        ladders, work_dir / "data", system_prompt=recipe.policy.system_prompt or VERL_SYSTEM_MESSAGE
    )
    val_files = written.get("test") if base.validation_items else None
    checkpoints = work_dir / "checkpoints"
    run = VerlRun(
        model=base.base_model, train_files=written["train"], val_files=val_files,
        train_rows=pq.read_metadata(written["train"]).num_rows, checkpoints=checkpoints,
        reward_function=Path(__file__).with_name("verl_reward.py"), experiment=recipe.name,
        reward_kwargs={"actor": actor_name(base.stage_run_id), "namespace": ACTOR_NAMESPACE},
    )  # fmt: skip
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return VerlLaunchSpec(**fields, verl_overrides=overrides(training, run), checkpoint_dir=checkpoints)


def run_verl_trainer(spec: VerlLaunchSpec, *, on_event: Callable[[dict[str, Any]], None]) -> None:
    """Run the driver for `spec` in verl's environment and wait (TrainerFailedError otherwise)."""
    assert spec.recipe.training is not None
    python = verl_python(spec.recipe.training.verl_settings.environment)
    spec_file = spec.write(Path(spec.work_dir) / SPEC_FILE)
    # Ray folds repeated lines of its workers into one; every trainer line matters in the log.
    run_process_tree([str(python), "-m", spec.worker, str(spec_file)], Path(spec.work_dir), on_event=on_event,
                     env={"RAY_DEDUP_LOGS": "0"}, what="the verl trainer")  # fmt: skip
