"""Supervised fine-tuning with TRL's SFTTrainer: the policy's SFT starting point (`sft.writer`) and
the Reference-SFT baseline (`sft.reference`), run by tasks/stages/sft.py.

As its own process tree, always (one rank too, so one code path): `run_sft` pickles an
SFTLaunchSpec into the work folder and runs `accelerate launch -m tasks.training.sft_worker <spec>`
through tasks/training/launch.py, laid out by the `sft` block as the RL trainer is by `training`
(`gpus` / `processes`, `distributed`: ddp | fsdp2 | zero3, `cpu_offload`; several CPU ranks run DDP
over gloo). Rank 0 reports each log line and a rank's failure as events; the stage waits, logs and
records. `sft.batch_size` counts the pairs of one forward pass over all ranks (each takes its share),
so an update is the same pairs whatever the layout. Every pair is one prompt-completion
conversational row (the prompt's messages, then the response as the assistant's turn), so the loss
is on the response only. On the CPU the model trains in float32, without bf16 or gradient
checkpointing (both only cost time there), as the train stage does.

Restartable: checkpoints go to the run's work folder, keyed on the stage's cache key, and a killed run
resumes from the newest complete one. The final model is a plain folder (a LoRA adapter merged into
the base), written aside by rank 0 (after `save_model` gathered sharded weights on every rank) and
renamed into place, with `wrl_sft.json` (steps, losses, ranks) and `wrl_lineage.json`; a folder that
holds `wrl_sft.json` is finished, and a stage run with the same key takes it as it is. The work
folder (checkpoints, spec, the ranks' output log) is deleted once the model is in place.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from configs.schema import SFTConfig
from tasks.training.launch import TrainerFailedError, read_spec, run_trainer, write_spec

logger = logging.getLogger(__name__)

OUTCOME_FILE = "wrl_sft.json"  # in the finished model folder: what training did
LINEAGE_FILE = "wrl_lineage.json"
LOSS_LOG = "sft_log.jsonl"  # the trainer's log dicts, one JSON line each, in the work folder


@dataclass(frozen=True)
class SFTExample:
    messages: list[dict[str, str]]  # the prompt as the policy reads it (system prompt, instruction)
    response: str
    source: str = ""  # where the pair came from: a file location or an instruction id


@dataclass(frozen=True)
class SFTRunPaths:
    work_dir: Path  # checkpoints (deleted when the model is in place)
    model_id: str
    model_dir: Path


def sft_run_paths(root: Path, recipe_name: str, mode: str, cache_key: str) -> SFTRunPaths:
    """Named by the stage's cache key: same config, same data -> same run, same model."""
    model_id = f"{recipe_name}-sft-{mode}-{cache_key[:8]}"
    return SFTRunPaths(Path(root) / "sft" / cache_key[:16], model_id, Path(root) / "models" / model_id)


@dataclass(frozen=True)
class SFTOutcome:
    steps: int  # optimizer updates
    examples: int
    final_loss: float | None  # the last logged training loss
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), every logged step
    resumed_from: int | None = None
    ranks: int = 1  # the processes it trained on (its last run's, after a resume)
    reused: bool = False  # the model folder was already there (same key): nothing trained

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "reused"}


def on_cpu(sft: SFTConfig) -> bool:
    if sft.device == "cpu":
        return True
    if sft.device == "cuda":
        return False
    import torch

    return not torch.cuda.is_available()


def sft_layout(sft: SFTConfig) -> SFTConfig:
    """The `sft` block with its device resolved (auto: cuda when there is a GPU here), what the
    launcher lays the ranks out by and what every rank trains with."""
    return sft.model_copy(update={"device": "cpu" if on_cpu(sft) else "cuda"})


@dataclass
class SFTLaunchSpec:
    """Everything an SFT rank needs, pickled into the work folder by `run_sft` (same code, same
    machine: pickle is the handoff, not a format anyone keeps)."""

    sft: SFTConfig  # device resolved (sft_layout)
    base_model: str
    examples: list[SFTExample]
    work_dir: Path
    model_dir: Path
    partial_dir: Path  # where rank 0 writes the model before renaming it into model_dir
    lineage: dict[str, Any] = field(default_factory=dict)

    worker: ClassVar[str] = "tasks.training.sft_worker"

    @property
    def layout(self) -> SFTConfig:
        return self.sft

    def write(self, path: Path) -> Path:
        return write_spec(self, path)

    @staticmethod
    def read(path: Path) -> SFTLaunchSpec:
        return read_spec(path)


def per_device_batch(sft: SFTConfig, world_size: int) -> int:
    """Each rank's share of `sft.batch_size`, the pairs of one forward pass over all ranks."""
    if sft.batch_size % world_size:
        raise ValueError(
            f"sft.batch_size ({sft.batch_size}) must divide evenly over {world_size} rank(s): it counts the "
            "pairs of one forward pass over all of them"
        )
    return sft.batch_size // world_size


def sft_args(sft: SFTConfig, output_dir: Path, *, cpu: bool, world_size: int = 1):
    """TRL's SFTConfig from the recipe's `sft` block for one of `world_size` ranks (TRL defaults bf16
    and gradient checkpointing on: both are set here, and off on the CPU)."""
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        output_dir=str(output_dir),
        learning_rate=sft.learning_rate,
        lr_scheduler_type=sft.lr_scheduler,
        warmup_steps=sft.warmup_ratio,  # transformers 5: below 1, the share of the updates
        weight_decay=sft.weight_decay,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps if sft.max_steps is not None else -1,
        per_device_train_batch_size=per_device_batch(sft, world_size),
        gradient_accumulation_steps=sft.gradient_accumulation_steps,
        max_length=sft.max_seq_tokens,
        packing=False,
        completion_only_loss=True,  # the loss on the response only
        save_strategy="steps",
        save_steps=sft.save_steps,
        save_total_limit=sft.save_total_limit,
        logging_steps=1,
        seed=sft.seed,
        report_to="none",
        disable_tqdm=True,
        use_cpu=cpu,
        bf16=sft.bf16 and not cpu,
        gradient_checkpointing=sft.gradient_checkpointing and not cpu,
        model_init_kwargs={"dtype": "bfloat16" if sft.bf16 and not cpu else "float32"},
    )


def sft_dataset(examples: list[SFTExample]):
    """Prompt-completion conversational rows: TRL computes the loss on the completion only."""
    import datasets

    return datasets.Dataset.from_list(
        [
            {"prompt": ex.messages, "completion": [{"role": "assistant", "content": ex.response}]}
            for ex in examples
        ]
    )


def finished_outcome(model_dir: Path) -> SFTOutcome | None:
    """The outcome recorded in a finished model folder; None when there is none."""
    path = Path(model_dir) / OUTCOME_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    record["losses"] = [tuple(x) for x in record.get("losses", [])]
    return SFTOutcome(**record, reused=True)


def run_sft(
    *,
    base_model: str,
    examples: list[SFTExample],
    sft: SFTConfig,
    work_dir: Path,
    model_dir: Path,
    lineage: dict[str, Any] | None = None,
    on_log: Callable[[int, int, dict[str, float]], None] | None = None,
    env: dict[str, str] | None = None,
) -> SFTOutcome:
    """Fine-tune `base_model` on `examples` as a process tree laid out by `sft` (resuming from the
    newest checkpoint in `work_dir`) and save a plain model folder in `model_dir`. A `model_dir`
    finished before is returned as it is. `on_log(step, max_steps, logs)` gets each of the trainer's
    log dicts (loss, grad_norm, ...) as rank 0 reports it. A failed job raises the error of the first
    rank that reported one: a ValueError as such (a length limit that leaves no response), anything
    else as TrainerFailedError with that rank's error and the tail of the ranks' output."""
    work_dir, model_dir = Path(work_dir), Path(model_dir)
    done = finished_outcome(model_dir)
    if done is not None:
        logger.info("sft: %s is already trained (%d steps); reusing it", model_dir, done.steps)
        return done
    if not examples:
        raise ValueError("sft: no examples to train on")
    spec = SFTLaunchSpec(
        sft=sft_layout(sft), base_model=base_model, examples=list(examples), work_dir=work_dir,
        model_dir=model_dir, partial_dir=model_dir.with_name(f".{model_dir.name}.partial-{os.getpid()}"),
        lineage=dict(lineage or {}),
    )  # fmt: skip
    failures: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "log" and on_log is not None:
            on_log(event["step"], event["max_steps"], event["logs"])
        elif kind == "resumed":
            logger.info("sft: resuming from %s", event["checkpoint"])
        elif kind == "dropped":
            logger.warning(
                "sft: %d of %d pairs have no response tokens within sft.max_seq_tokens=%d (their prompt fills "
                "it); training on the other %d", event["total"] - event["kept"], event["total"],
                sft.max_seq_tokens, event["kept"],
            )  # fmt: skip
        elif kind == "failed":
            failures.append(event)

    try:
        run_trainer(spec, on_event=on_event, env=env, section="sft")
    except TrainerFailedError as exc:
        if not failures:
            raise TrainerFailedError(f"sft: {exc}") from None
        # The first rank to report: the others' errors follow from it (a peer gone mid-collective).
        first = failures[0]
        if first["type"] == "ValueError":  # the data or the settings, as the rank found them
            raise ValueError(first["error"]) from exc
        raise TrainerFailedError(
            f"sft: rank {first['rank']}: {first['type']}: {first['error']}\n{exc}"
        ) from None
    outcome = finished_outcome(model_dir)
    if outcome is None:
        raise TrainerFailedError(
            f"sft: the trainer exited cleanly without writing {model_dir / OUTCOME_FILE}"
        )
    shutil.rmtree(work_dir, ignore_errors=True)  # the checkpoints only served a resume
    return replace(outcome, reused=False)


def train_rank(spec: SFTLaunchSpec) -> None:
    """One rank's share of the SFT job (tasks/training/sft_worker.py): build TRL's SFTTrainer, train
    (resuming from the newest checkpoint), `save_model` on every rank (it gathers sharded weights),
    and on rank 0 merge a LoRA adapter, write the record and lineage, and rename the model into place."""
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    from tasks.training.args import peft_lora_config, world_size
    from tasks.training.checkpoints import latest_checkpoint, merge_adapter
    from tasks.training.launch import emit

    sft, examples = spec.sft, spec.examples
    work_dir, model_dir, partial = Path(spec.work_dir), Path(spec.model_dir), Path(spec.partial_dir)
    cpu = sft.device == "cpu"
    ranks = world_size()
    args = sft_args(sft, work_dir, cpu=cpu, world_size=ranks)
    main = args.process_index == 0  # sets up accelerate's state, and with it the process group
    log_path = work_dir / LOSS_LOG
    checkpoint = latest_checkpoint(work_dir)
    resumed_from = None if checkpoint is None else checkpoint[1]
    if checkpoint is not None and main:
        emit("resumed", checkpoint=str(checkpoint[0]), step=checkpoint[1])

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            numeric = {
                k: float(v) for k, v in (logs or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
            }  # fmt: skip
            # Rank 0 reports; its logged loss is already the ranks' mean (the Trainer gathers it).
            if numeric and state.global_step > 0 and state.is_world_process_zero:
                with log_path.open("a") as handle:
                    handle.write(json.dumps({"step": state.global_step, **numeric}) + "\n")
                emit("log", step=state.global_step, max_steps=state.max_steps, logs=numeric)
            return control

    peft_config = peft_lora_config(sft.lora)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    trainer = SFTTrainer(
        model=spec.base_model,
        args=args,
        train_dataset=sft_dataset(examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_Log()],
    )
    trainer.remove_callback(ProgressCallback)  # the stage logs its own lines
    trainer.remove_callback(PrinterCallback)
    kept = len(trainer.train_dataset)  # TRL drops pairs whose response the length limit cuts away entirely
    if kept == 0:
        raise ValueError(f"sft: sft.max_seq_tokens={sft.max_seq_tokens} leaves no response token of any pair")
    if kept < len(examples) and main:
        emit("dropped", kept=kept, total=len(examples))
    saved = partial.with_name(partial.name + "-adapter") if peft_config is not None else partial
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint[0]) if checkpoint else None)
        steps = int(trainer.state.global_step)
        if main:  # a killed run's leftovers
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(saved, ignore_errors=True)
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(saved))  # every rank: it gathers ZeRO-3 / FSDP shards; rank 0 writes
    finally:
        del trainer
        _release_memory()
    if not main:
        return
    if peft_config is not None:
        merge_adapter(
            saved, spec.base_model, partial, dtype="bfloat16" if sft.bf16 and not cpu else "float32"
        )
        shutil.rmtree(saved)
    losses = _losses(log_path, steps)
    outcome = SFTOutcome(
        steps=steps, examples=len(examples), final_loss=losses[-1][1] if losses else None, losses=losses,
        resumed_from=resumed_from, ranks=ranks,
    )  # fmt: skip
    (partial / OUTCOME_FILE).write_text(json.dumps(outcome.record(), indent=2))
    (partial / LINEAGE_FILE).write_text(json.dumps({**spec.lineage, "step": steps}, indent=2, sort_keys=True))
    shutil.rmtree(model_dir, ignore_errors=True)  # an unfinished leftover (no OUTCOME_FILE)
    partial.rename(model_dir)


def _losses(log_path: Path, last_step: int) -> list[tuple[int, float]]:
    """(step, loss) of every logged step up to `last_step`, the newest line per step (a resumed run
    logs the steps after its checkpoint again)."""
    by_step: dict[int, float] = {}
    if log_path.is_file():
        for line in log_path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and record["step"] <= last_step:
                by_step[int(record["step"])] = float(record["loss"])
    return sorted(by_step.items())


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
