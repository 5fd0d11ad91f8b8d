"""Where a training step's time goes: generation, judging, the other forward passes, backward.

Runs the recipe's stages in this process (curation first, then stage 5, train) with timers around
TRL's GRPOTrainer methods, one row per optimisation step:
- generation: `_generate` (tokenising the prompts, sampling the group's rollouts);
- judging: `_calculate_rewards` (the Writing-RL reward: every judge call of the step);
- logprobs + advantages: the rest of `_generate_and_score_completions` (the old / reference
  policy's forward passes and the group advantages);
- loss forward: `compute_loss`; backward: the rest of `training_step` (the loss's backward);
- optimizer + bookkeeping: the rest of the step (optimizer step, the curriculum update and its
  snapshot, logging), from the step's begin to its end callback.

The timers are class-level wrappers on TRL 1.16's methods (the script stops if one is missing), so
they measure the trainer as `wrl` runs it. The trainer runs in processes of its own
(tasks/training/launch.py): the script has its ranks import this module (`WRL_TRAINER_PLUGINS`),
which installs the timers there and has rank 0 append each step's row to the file named by
`WRL_STEP_BREAKDOWN_OUT`. The first step is reported apart (warm-up).

    .venv/bin/python benchmarks/training_step_breakdown.py                     # demo recipe, its 6 steps
    .venv/bin/python benchmarks/training_step_breakdown.py --store /tmp/curated --set training.seed=1

`--store` reuses a store whose curation is done (the curation stages are cache hits); the train
stage must still compute there, and with other rollouts than before: change `training.seed`. With
the seed of an earlier training on that store (even with another --steps, a new cache key), the
first steps sample the same rollouts and their judge calls are response-cache hits (judging then
measures ~0 s).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

PHASES = (
    "generation",
    "judging",
    "logprobs + advantages",
    "loss forward",
    "backward",
    "optimizer + bookkeeping",
)


OUT_ENV = "WRL_STEP_BREAKDOWN_OUT"


class StepClock:
    """Seconds per phase for the current optimisation step; each finished step's row is appended
    to `out` (JSON lines)."""

    def __init__(self, out: Path) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.step_started = 0.0
        self.out = out

    def timed(self, phase: str, method):
        def wrapper(trainer, *args, **kwargs):
            started = time.perf_counter()
            try:
                return method(trainer, *args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - started

        return wrapper

    def begin(self) -> None:
        self.current = defaultdict(float)
        self.step_started = time.perf_counter()

    def end(self, step: int) -> None:
        total = time.perf_counter() - self.step_started
        c = self.current
        row = {
            "step": step,
            "generation": c["_generate"],
            "judging": c["_calculate_rewards"],
            "logprobs + advantages": c["_generate_and_score_completions"]
            - c["_generate"]
            - c["_calculate_rewards"],
            "loss forward": c["compute_loss"],
            "backward": c["training_step"] - c["_generate_and_score_completions"] - c["compute_loss"],
            "optimizer + bookkeeping": total - c["training_step"],
            "total": total,
        }
        with self.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def install(clock: StepClock) -> None:
    """Wraps GRPOTrainer's methods and adds a step-boundary callback to every trainer built."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    for name in ("_generate", "_calculate_rewards", "_generate_and_score_completions", "compute_loss",
                 "training_step"):  # fmt: skip
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            raise SystemExit(f"GRPOTrainer.{name} is gone (TRL changed): update this benchmark's timers")
        setattr(GRPOTrainer, name, clock.timed(name, method))

    class Boundaries(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                clock.end(state.global_step)

    init = GRPOTrainer.__init__

    def init_with_clock(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Boundaries())  # after the curriculum callback: its update is in the step

    GRPOTrainer.__init__ = init_with_clock


def main(
    config: Annotated[Path, typer.Option(help="Recipe.")] = PROJECT_ROOT / "configs" / "demo.yaml",
    steps: Annotated[
        int | None, typer.Option(help="Optimisation steps (default: the recipe's training.max_steps).")
    ] = None,
    store: Annotated[Path | None, typer.Option(help="Store to use (default: a fresh temp dir).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Recipe override KEY=VALUE.")] = None,
) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from configs.loading import load_recipe, parse_set_option
    from tasks.llm.embedded import ensure_recipe_models
    from tests.support.train_worker import run_curation, run_train

    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "steps.jsonl"
        os.environ["WRL_TRAINER_PLUGINS"] = "benchmarks.training_step_breakdown"
        os.environ[OUT_ENV] = str(rows_file)
        root = (store or Path(tmp) / "store").resolve()
        base = load_recipe(config)
        model_cache = (PROJECT_ROOT / base.storage.model_cache).resolve()
        overrides = {"storage.root": str(root), "storage.model_cache": str(model_cache),
                     **({"training.max_steps": steps} if steps else {}),
                     **dict(parse_set_option(s) for s in sets or [])}  # fmt: skip
        recipe = load_recipe(config, overrides)
        if recipe.training is None or recipe.training.algorithm != "grpo":
            raise SystemExit(f"{config}: needs a `training:` block with algorithm grpo")
        ensure_recipe_models(recipe)
        outputs = run_curation(recipe)
        result = run_train(recipe, outputs)
        rows = (
            [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
        )
    if result.cached:
        raise SystemExit("the train stage was a cache hit: use a fresh store or another --steps")
    print(f"train: computed in {result.elapsed_s:.1f} s", file=sys.stderr)
    t = recipe.training
    print(f"recipe {config.name}: policy {recipe.policy.model}, judge {recipe.judge.model} ({recipe.judge.mode}), "
          f"reward {recipe.reward.kind}/{recipe.reward.position}; {t.batch_size} prompt(s) x {t.num_generations} "
          f"rollouts, {t.max_response_tokens} new tokens, LoRA {t.lora is not None}, device {t.device}; "
          f"{os.cpu_count()} CPU cores")  # fmt: skip
    later = rows[1:] or rows
    print("| phase | step 1 (s) | steps 2.. mean (s) | share of steps 2.. |")
    print("|---|---|---|---|")
    mean_total = statistics.fmean(r["total"] for r in later)
    for phase in (*PHASES, "total"):
        mean = statistics.fmean(r[phase] for r in later)
        print(f"| {phase} | {rows[0][phase]:.2f} | {mean:.2f} | {mean / mean_total:.0%} |")
    print(json.dumps({"steps": len(rows), "rows": [{k: round(v, 3) for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    typer.run(main)
elif os.environ.get(OUT_ENV):  # imported by a trainer rank (WRL_TRAINER_PLUGINS)
    install(StepClock(Path(os.environ[OUT_ENV])))
