"""`wrl`: the command line. Thin: it parses options, calls flows and storage, and prints.

Heavy imports (torch, prefect) happen inside commands so `wrl --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.local_api import LocalAPIError, start_local_api
from tasks.stages import STAGE_ORDER

app = typer.Typer(
    name="wrl",
    help="Writing-RL: build reference ladders with LLM judges and train long-form writers with RL.\n\n"
    "Every command takes a recipe (--config, a YAML file under configs/). Start with `wrl demo`.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
config_app = typer.Typer(help="Validate and inspect recipes.", no_args_is_help=True)
model_app = typer.Typer(help="Local models: provision the embedded model.", no_args_is_help=True)
data_app = typer.Typer(help="Instruction data: check a source before running on it.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
judge_app = typer.Typer(help="The reward judge: measure it before training.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(judge_app, name="judge")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Recipe YAML.", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe field: KEY=VALUE (dotted path; value is YAML)."),
]
DEFAULT_CONFIG = Path("configs/demo.yaml")


def main() -> None:
    """Console-script entry point."""
    _defaults_for_local_runs()
    try:
        app()
    except _UserFacingError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(2)


class _UserFacingError(Exception):
    pass


def _defaults_for_local_runs() -> None:
    # Prefect state stays inside the project (not ~/.prefect) and sends no analytics; a user's own
    # settings (PREFECT_API_URL for a real server, PREFECT_HOME) win.
    os.environ.setdefault("PREFECT_HOME", str(Path(".wrl/prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect waits 20 s for its ephemeral API by default; a cold start (fresh database) took ~19 s on
    # a slow 2-core machine, so the default could fail a run by chance. Wait up to 2 minutes.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for chatty in ("httpx", "httpcore"):  # one line per Prefect API request drowns the stage logs
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _load(config: Path, sets: list[str] | None):
    from configs.loading import ConfigError, load_recipe, parse_set_option

    try:
        overrides = dict(parse_set_option(s) for s in sets or [])
        return load_recipe(config, overrides), overrides
    except ConfigError as exc:
        raise _UserFacingError(str(exc)) from None


def _user_errors():
    """Exceptions that are the user's input, shown without a traceback."""
    from configs.loading import ConfigError
    from storage import DatasetNotFoundError, StorageBusyError
    from tasks.instructions import InstructionDataError

    return (ConfigError, InstructionDataError, StorageBusyError, DatasetNotFoundError, LocalAPIError)


# -- pipeline ------------------------------------------------------------------------------------


def _run_flow(
    flow_name: str, config: Path, sets: list[str] | None, refresh: list[str], until: str | None = None
) -> dict:
    recipe, overrides = _load(config, sets)
    if flow_name == "evaluate":
        _check_evaluation(recipe, config)
    # Once the input is known to be good (a refused recipe starts and writes nothing), and before
    # the model checks and the flow's imports, which its start overlaps.
    api_ready = start_local_api()
    from tasks.llm.embedded import ensure_recipe_models

    ensure_recipe_models(recipe)
    try:
        if flow_name == "evaluate":
            from flows.evaluate import evaluate_candidates

            with api_ready:
                return evaluate_candidates(
                    recipe_path=str(config), overrides=overrides or None, refresh=bool(refresh)
                )
        if flow_name == "train":
            from flows.train import train_policy

            with api_ready:
                return train_policy(recipe_path=str(config), overrides=overrides or None, refresh=refresh)
        from flows.build_dataset import build_dataset

        with api_ready:
            return build_dataset(
                recipe_path=str(config), overrides=overrides or None, refresh=refresh, until=until
            )
    except _user_errors() as exc:
        raise _UserFacingError(str(exc)) from None


FLOWS = ("build-dataset", "train", "evaluate")


@app.command()
def demo(config: ConfigOpt = DEFAULT_CONFIG, sets: SetOpt = None) -> None:
    """Run the main job on the embedded default: the built-in sample and SmolLM2 on the CPU
    (curation, then RL training when the recipe has a `training:` block, then the evaluation of
    the base and trained policies when it has an `evaluation:` block)."""
    started = time.perf_counter()
    recipe, _ = _load(config, sets)
    for name, bench in recipe.evaluation.benchmarks.items() if recipe.evaluation else ():
        if not bench.path.exists():  # say so now, not after the training
            raise _UserFacingError(
                f"evaluation.benchmarks.{name}.path: {bench.path} does not exist (cwd {Path.cwd()}); run "
                f"from the project root or --set evaluation.benchmarks.{name}.path=/your/copy"
            )
    summary = _run_flow("train" if recipe.training is not None else "build-dataset", config, sets, [])
    _print_summary(summary, time.perf_counter() - started)
    if recipe.evaluation is not None:
        evaluated = time.perf_counter()
        _print_evaluation(_run_flow("evaluate", config, sets, []), time.perf_counter() - evaluated)


@app.command("evaluate")
def evaluate(
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    candidate: Annotated[
        list[str] | None, typer.Option("--candidate", help="Only this candidate (repeatable).")
    ] = None,
    benchmark: Annotated[
        list[str] | None, typer.Option("--benchmark", help="Only this benchmark (repeatable).")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every pair, ignoring the stage cache.")] = False,
) -> None:
    """Evaluate the recipe's candidates on its benchmarks and print the comparison table.
    Pairs evaluated before (same model, benchmark slice and judge) are cache hits."""
    recipe, overrides = _load(config, sets)
    _check_evaluation(recipe, config)
    api_ready = start_local_api()  # see _run_flow
    from tasks.llm.embedded import ensure_recipe_models

    ensure_recipe_models(recipe)
    started = time.perf_counter()
    from flows.evaluate import evaluate_candidates

    try:
        with api_ready:
            summary = evaluate_candidates(
                recipe_path=str(config), overrides=overrides or None, candidates=candidate or None,
                benchmarks=benchmark or None, refresh=refresh,
            )  # fmt: skip
    except _user_errors() as exc:
        raise _UserFacingError(str(exc)) from None
    _print_evaluation(summary, time.perf_counter() - started)


def _check_evaluation(recipe, config: Path) -> None:
    if recipe.evaluation is None:
        raise _UserFacingError(
            f"{config}: no `evaluation:` block (candidates and benchmarks); see docs/evaluation.md"
        )
    from configs.loading import ConfigError
    from tasks.stages.evaluate import check_benchmark_paths

    try:
        check_benchmark_paths(recipe)
    except ConfigError as exc:
        raise _UserFacingError(str(exc)) from None


def _print_evaluation(summary: dict[str, Any], elapsed: float) -> None:
    from tasks.evaluation.report import scale_note, score_cell, shown_columns

    rows = summary["table"]
    table = Table(
        title=f"{summary['recipe']}: evaluation {summary['run_id'][:12]} (scores {scale_note(rows[0] if rows else ())}, "
        "[95% interval])"
    )

    columns = shown_columns(rows[0]) if rows else []
    for column in columns:
        # Never truncate a name or a number: headers wrap at spaces, cells keep their width.
        widest = max([len(word) for word in column.split()] + [len(score_cell(r, column)) for r in rows])
        table.add_column(column, justify="left" if column == "candidate" else "right", min_width=widest)
    for row in rows:
        table.add_row(*(score_cell(row, c) for c in columns))
    console.print(table, width=max(console.width, 120), crop=False)  # narrow terminals wrap; nothing is cut
    for d in summary.get("differences", ()):
        if d["difference"] is not None and d["interval"] is not None:
            verdict = "excludes 0" if d["significant"] else "within noise: the interval holds 0"
            console.print(
                f"{d['candidate']} - {d['baseline']} on {d['benchmark']}: {d['difference']:+.2f} "
                f"[{d['interval'][0]:+.2f}, {d['interval'][1]:+.2f}] over {d['items']} items ({verdict})",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
    cached = sum(1 for r in summary["results"] if r["cached"])
    judges = sorted({r["judge"] for r in summary["results"] if r["judge"]})
    console.print(
        f"{len(summary['results'])} (candidate, benchmark) pairs, {cached} from the cache; judge: "
        f"{', '.join(judges) or 'none'}.",
        highlight=False,
    )
    for train_run_id, plot in summary["plots"].items():
        console.print(f"Scores over the steps of {train_run_id}: {plot['path']}", highlight=False)
    console.print(f"Results in {summary['storage']} (eval_results, eval_items, eval_scores). {elapsed:.1f}s.")


@judge_app.command("calibrate")
def judge_calibrate(
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    pairs: Annotated[
        Path | None,
        typer.Option(
            "--pairs", help="A labelled pairs file (JSONL) instead of pairs from the recipe's ladders."
        ),
    ] = None,
    refresh: Annotated[
        bool, typer.Option(help="Recompute the calibration, ignoring the stage cache.")
    ] = False,
) -> None:
    """Measure the reward judge on pairs from the recipe's ladders (curating first if needed) or
    a labelled file: position flip rate, ties, self-consistency, length bias, cost per judgment,
    agreement with labels; and the `reward.position` it recommends, with the reason."""
    if pairs is not None:
        sets = [*(sets or []), f"calibration.pairs_file={json.dumps(str(pairs))}"]
    recipe, overrides = _load(config, sets)
    api_ready = start_local_api()  # see _run_flow
    from tasks.llm.embedded import ensure_recipe_models

    ensure_recipe_models(recipe)
    started = time.perf_counter()
    from flows.calibrate import calibrate_judge

    try:
        with api_ready:
            summary = calibrate_judge(recipe_path=str(config), overrides=overrides or None, refresh=refresh)
    except _user_errors() as exc:
        raise _UserFacingError(str(exc)) from None
    from tasks.rewards.calibration import calibration_rows

    metrics = summary["metrics"]
    table = Table(title=f"{summary['recipe']}: judge calibration of {metrics['judge']}")
    for column in ("metric", "value", "meaning"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for row in calibration_rows(metrics):
        table.add_row(row["metric"], row["value"], row["meaning"])
    console.print(table, width=max(console.width, 120), crop=False)
    console.print(
        f"{metrics['pairs']} pairs from {metrics['source']}, {metrics['judgments']} judgments "
        f"({metrics['failed']} failed){', from the cache' if summary['cached'] else ''}.",
        highlight=False,
    )
    console.print(
        f"Recommended reward.position: {metrics['recommended_position'] or 'none'}: {metrics['recommendation']}.",
        highlight=False, soft_wrap=True,
    )  # fmt: skip
    console.print(f"Plot: {summary['plot']}. Rows: {summary['output']}. {time.perf_counter() - started:.1f}s.",
                  highlight=False)  # fmt: skip


@app.command("run")
def run_flow(
    flow_name: Annotated[
        str, typer.Argument(help="Flow to run: build-dataset, train or evaluate.")
    ] = "build-dataset",
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    refresh: Annotated[
        list[str] | None, typer.Option(help="Force this stage to recompute (repeatable).")
    ] = None,
) -> None:
    """Run a flow from a recipe. Stages whose inputs and config are unchanged are cache hits."""
    if flow_name not in FLOWS:
        raise _UserFacingError(f"unknown flow '{flow_name}'; available: {', '.join(FLOWS)}")
    started = time.perf_counter()
    summary = _run_flow(flow_name, config, sets, refresh or [])
    _print_flow_summary(flow_name, summary, time.perf_counter() - started)


@app.command("stage")
def run_one_stage(
    name: Annotated[str, typer.Argument(help=f"Stage to run: {', '.join((*STAGE_ORDER, 'evaluate'))}.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute even when the cache is valid.")] = False,
) -> None:
    """Run one stage. Its upstream stages are served from the cache (computed if missing)."""
    from flows.stage import flow_for_stage

    try:
        flow_name = flow_for_stage(name)
    except ValueError as exc:
        raise _UserFacingError(str(exc)) from None
    started = time.perf_counter()
    # `until` stops the build-dataset flow after the stage; the train and evaluate flows end with it.
    summary = _run_flow(flow_name, config, sets, [name] if refresh else [], until=name)
    _print_flow_summary(flow_name, summary, time.perf_counter() - started)


def _print_flow_summary(flow_name: str, summary: dict[str, Any], elapsed: float) -> None:
    if flow_name == "evaluate":
        _print_evaluation(summary, elapsed)
    else:
        _print_summary(summary, elapsed)


def _print_summary(summary: dict[str, Any], elapsed: float) -> None:
    table = Table(title=f"{summary['recipe']}: run {summary['run_id'][:12]}", show_lines=False)
    for column in ("stage", "status", "outputs", "rows / details", "time"):
        table.add_column(column)
    for stage in summary["stages"]:
        details = {k: v for k, v in stage["summary"].items() if k not in ("cached_from",)}
        status = "cached" if stage["cached"] else ("done" if not details.get("failures") else "failures")
        table.add_row(
            stage["stage"],
            status,
            ", ".join(stage["outputs"].values()),
            ", ".join(f"{k}={v}" for k, v in details.items()) or "-",
            f"{stage['elapsed_s']:.1f}s",
        )
    console.print(table)
    if "report" in summary:
        from flows.reporting import print_report

        print_report(summary["report"], console)
    console.print(
        f"Stored under [bold]{summary['storage']}[/] (catalog.duckdb + datasets/). Total {elapsed:.1f}s."
    )


# -- local Prefect services ----------------------------------------------------------------------

StateDirOpt = Annotated[
    Path, typer.Option("--state-dir", help="Where PID files, logs and the server DB live.")
]


@app.command("up")
def services_up(
    configs: Annotated[
        list[Path] | None,
        typer.Option("--config", "-c", help="Recipe whose deployments to serve (repeatable)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of the Prefect server on 127.0.0.1.")] = 4200,
    state_dir: StateDirOpt = Path(".wrl/services"),
) -> None:
    """Start a local Prefect server and a process serving the recipes' deployments (idempotent)."""
    from flows.deployments import deployment_specs
    from flows.services import ServiceError, Services, up

    paths = [str(p) for p in configs or [DEFAULT_CONFIG]]
    specs = []
    for path in paths:
        recipe, _ = _load(Path(path), None)
        specs += deployment_specs(path, recipe)
    expected = {spec["name"] for spec in specs}
    try:
        info = up(paths, Services(state_dir), port=port, expected_deployments=expected)
    except ServiceError as exc:
        raise _UserFacingError(str(exc)) from None
    kept = f" (kept running: {', '.join(info['kept'])})" if info["kept"] else ""
    console.print(f"Prefect server: {info['ui_url']} (pid {info['server_pid']}){kept}", highlight=False)
    console.print(
        f"Serving {len(specs)} deployments of {', '.join(paths)} (pid {info['serve_pid']})",
        highlight=False,
    )
    console.print(
        f"Point the prefect CLI at it:  export PREFECT_API_URL={info['api_url']}\n"
        f"  (or: source {Path(info['state_dir']) / 'env'}); logs under {info['state_dir']}; stop with `wrl down`.",
        highlight=False,
    )


@app.command("down")
def services_down(state_dir: StateDirOpt = Path(".wrl/services")) -> None:
    """Stop the serve process, then the Prefect server."""
    from flows.services import Services, down

    stopped = down(Services(state_dir))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running", highlight=False)


@app.command("services")
def services_status(state_dir: StateDirOpt = Path(".wrl/services")) -> None:
    """Show whether the local Prefect server and the serve process run."""
    from flows.services import Services, status

    info = status(Services(state_dir))
    server, serve = info["server"], info["serve"]
    server_text = (
        "down" if server is None else f"pid {server['pid']}, {info['api_url']}, healthy={server['healthy']}"
    )
    serve_text = "down" if serve is None else f"pid {serve['pid']}, recipes {serve['recipes']}"
    console.print(f"server: {server_text}\nserve:  {serve_text}", highlight=False)


# -- config --------------------------------------------------------------------------------------


@config_app.command("validate")
def config_validate(paths: Annotated[list[Path], typer.Argument(help="Recipe files.")]) -> None:
    """Validate recipes; print every problem with file, line and field."""
    from configs.loading import ConfigError, load_recipe

    bad = 0
    for path in paths:
        try:
            recipe = load_recipe(path)
        except ConfigError as exc:
            err_console.print(str(exc), highlight=False, markup=False)
            bad += 1
            continue
        problems = []
        from tasks.generation import configured_strategy

        for i, generator in enumerate(recipe.generators):
            try:
                configured_strategy(generator, where=f"generators[{i}]")
            except ConfigError as exc:
                problems.append(str(exc))
        if recipe.evaluation is not None:  # a benchmark name without a registered suite
            from tasks.evaluation.registry import check_benchmark_names

            try:
                check_benchmark_names(recipe.evaluation.benchmarks)
            except ConfigError as exc:
                problems.append(str(exc))
        if recipe.training is not None and recipe.training.engine == "verl":
            # verl's configuration, generated as the train stage will (`wrl config verl --check`
            # has verl compose it).
            from tasks.training.verl_config import overrides, preview_run

            try:
                overrides(recipe.training, preview_run(recipe))
            except ConfigError as exc:
                problems.append(str(exc))
        elif recipe.training is not None:
            # TRL's own config checks, on 1-8 devices and the ranks the recipe launches, without
            # needing the hardware here; then the accelerate configuration the stage would write.
            from tasks.training.args import validate_training
            from tasks.training.launch import accelerate_config, processes

            ranks = processes(recipe.training)
            sizes = (1,) if recipe.training.device == "cpu" else (1, 2, 4, 8)
            problems += validate_training(recipe.training, world_sizes=tuple(sorted({*sizes, ranks})))
            try:
                accelerate_config(recipe.training, port=0)
            except ValueError as exc:
                problems.append(str(exc))
        # Memory on the GPUs the recipe declares (verl always runs on GPUs).
        plans_memory = recipe.training is not None and (
            recipe.training.engine == "verl" or recipe.training.device != "cpu"
        )
        if plans_memory:
            try:
                plan = _memory_plan(recipe)
            except ValueError as exc:  # an architecture we cannot read is not a recipe error
                memory = f", memory not estimated ({exc})"
            else:
                problems += plan.problems()
                memory = f", its memory on {plan.gpus} x {plan.gpu_memory_gib:g} GiB"
        if problems:
            err_console.print(f"Invalid recipe {path}:", highlight=False, markup=False)
            for problem in problems:
                err_console.print(f"  - {problem}", highlight=False, markup=False)
            bad += 1
            continue
        what = f"{len(recipe.generators)} generators"
        if recipe.training is not None:
            what += (
                ", verl's configuration generated (`wrl config verl --check` composes it in verl's environment)"
                if recipe.training.engine == "verl"
                else ", training checked for 1-8 devices"
            )
        if plans_memory:
            what += memory
        console.print(f"[green]ok[/] {path} ({recipe.name}: {what})")
    if bad:
        raise typer.Exit(2)


def _memory_plan(recipe, gpus: int | None = None, gpu_memory_gib: float | None = None):
    """The recipe's memory plan; ValueError naming the policy's field when its architecture is unknown."""
    from tasks.training.memory_plan import architecture_of, plan_training

    training = recipe.training
    try:
        arch = architecture_of(recipe.policy.model)
    except ValueError as exc:
        raise ValueError(f"generators[{recipe.generators.index(recipe.policy)}].model: {exc}") from None
    return plan_training(training, arch, gpus or training.gpus, gpu_memory_gib or training.gpu_memory_gib)


@config_app.command("plan")
def config_plan(
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    gpus: Annotated[int | None, typer.Option(min=1, help="GPUs (default: training.gpus).")] = None,
    gpu_memory_gib: Annotated[
        float | None, typer.Option(min=1, help="Memory per GPU, GiB (default: training.gpu_memory_gib).")
    ] = None,
) -> None:
    """Estimate the training's memory per GPU, term by term with its arithmetic; exit 1 when it does
    not fit, naming the largest term and what to change (tasks/training/memory_plan.py)."""
    recipe, _ = _load(config, sets)
    if recipe.training is None:
        raise _UserFacingError(f"{config}: no `training:` block to plan")
    try:
        plan = _memory_plan(recipe, gpus, gpu_memory_gib)
    except ValueError as exc:
        raise _UserFacingError(f"{config}: {exc}") from None
    t = recipe.training
    console.print(
        f"{recipe.name}: policy {recipe.policy.model}, {t.distributed}"
        f"{' + CPU offload' if t.cpu_offload else ''}, bf16 {t.bf16}, LoRA {t.lora is not None}, kl_coef {t.kl_coef}",
        highlight=False, markup=False,
    )  # fmt: skip
    console.print(plan.render(), highlight=False, markup=False, soft_wrap=True)
    if not plan.fits:
        raise typer.Exit(1)


@config_app.command("verl")
def config_verl(
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Have verl compose and validate it, in verl's environment (`make verl`)."
        ),
    ] = False,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="--check: a local folder with the policy's config.json to check with (verl reads it).",
        ),
    ] = None,
) -> None:
    """Print verl's configuration for this recipe (training.engine: verl) as verl's command line,
    generated from the recipe (tasks/training/verl_config.py); the paths the stage fills in are
    named in <>. The train stage's driver composes exactly these overrides and trains through
    verl's `run_ppo` with the Writing-RL trainer (tasks/training/verl_main.py)."""
    from dataclasses import replace

    from configs.loading import ConfigError
    from tasks.training.verl_config import (
        ENTRY_POINT,
        compose_with_verl,
        override_args,
        overrides,
        preview_run,
    )

    recipe, _ = _load(config, sets)
    if recipe.training is None or recipe.training.engine != "verl":
        raise _UserFacingError(f"{config}: training.engine is not verl (nothing for verl to run)")
    try:
        settings = overrides(recipe.training, preview_run(recipe))
    except ConfigError as exc:
        raise _UserFacingError(str(exc)) from None
    console.print(
        "# verl's configuration for this recipe. `wrl run train` runs it through the driver "
        "(python -m tasks.training.verl_main: the reward actor, the curriculum hooks), not this command",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip
    console.print(f"python -m {ENTRY_POINT} \\", highlight=False, markup=False)
    args = override_args(settings)
    for i, arg in enumerate(args):
        end = " \\" if i < len(args) - 1 else ""
        console.print(f"    {arg}{end}", highlight=False, markup=False, soft_wrap=True)
    if not check:
        return
    python = recipe.training.verl_settings.environment / "bin" / "python"
    if not python.exists():
        raise _UserFacingError(
            f"{python}: no verl environment; build it with `make verl` (GPU) or `make verl-cpu`"
        )
    if model is not None:
        settings = overrides(recipe.training, replace(preview_run(recipe), model=str(model)))
    report = compose_with_verl(settings, python)
    if "error" in report:
        hint = (
            f"\nverl reads the policy's config.json ({settings['actor_rollout_ref.model.path']}): where the hub "
            "is out of reach, pass --model with a local folder of the same model"
            if "huggingface.co" in report["error"]
            else ""
        )
        raise _UserFacingError(f"verl refuses this configuration: {report['error']}{hint}")
    console.print(f"verl composed and validated it (critic: {report['critic']}, reference model: {report['reference']})",
                  highlight=False)  # fmt: skip


@config_app.command("cost")
def config_cost(
    config: ConfigOpt = DEFAULT_CONFIG,
    sets: SetOpt = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Ignore the store: as on a new machine, from the budgets.")
    ] = False,
    detail: Annotated[bool, typer.Option("--detail", help="One row per stage, model and purpose.")] = False,
) -> None:
    """Forecast the recipe's LLM calls, tokens and cost per stage and in total, before they are paid
    for: output lengths from the token budgets (or measured in the store), minus the stages the
    store already holds (tasks/stages/forecast.py)."""
    from storage import open_storage
    from tasks.stages.forecast import forecast

    recipe, _ = _load(config, sets)
    storage = None if fresh or not Path(recipe.storage.root).exists() else open_storage(recipe.storage)
    try:
        result = forecast(recipe, storage)
    except (ValueError, FileNotFoundError) as exc:
        raise _UserFacingError(f"{config}: {exc}") from None

    def usd(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    numbers = ("calls", "input tokens", "output tokens", "USD")
    if detail:
        table = Table(title=f"{recipe.name}: forecast, per stage, model and purpose")
        for column in ("stage", "what", "model", *numbers, "basis"):
            table.add_column(column, justify="right" if column in numbers else "left", overflow="fold")
        for line in result.lines:
            for row in (line, line.per_step) if line.per_step is not None else (line,):
                table.add_row(row.stage, row.what + (" (in the store)" if row.cached else ""), row.model,
                              f"{row.calls:,}", f"{row.input_tokens:,}", f"{row.output_tokens:,}",
                              usd(0.0 if row.cached else row.cost(recipe)), row.basis)  # fmt: skip
    else:
        table = Table(title=f"{recipe.name}: forecast of what is still to pay (--detail: per model)")
        for column in ("stage", *numbers):
            table.add_column(column, justify="right" if column in numbers else "left")
        for stage, row in result.by_stage().items():
            table.add_row(stage, f"{row['calls']:,}", f"{row['input_tokens']:,}", f"{row['output_tokens']:,}",
                          usd(row["cost_usd"]))  # fmt: skip
        for line in result.lines:
            if line.per_step is not None and not line.cached:
                step = line.per_step
                table.add_row("  train, one RL step", f"{step.calls:,}", f"{step.input_tokens:,}",
                              f"{step.output_tokens:,}", usd(step.cost(recipe)))  # fmt: skip
        cached = sorted({line.stage for line in result.lines if line.cached})
        if cached:
            table.caption = f"already in the store, nothing to pay: {', '.join(cached)}"
    console.print(table)
    totals = result.totals()
    cost = "-" if totals["cost_usd"] is None else f"${totals['cost_usd']:,.2f}"
    console.print(
        f"total to pay: {totals['calls']:,} calls, {totals['input_tokens']:,} input and "
        f"{totals['output_tokens']:,} output tokens, {cost}"
        + (f" (no price for {', '.join(totals['unpriced_models'])})" if totals["unpriced_models"] else ""),
        highlight=False, markup=False,
    )  # fmt: skip


@config_app.command("show")
def config_show(config: ConfigOpt = DEFAULT_CONFIG, sets: SetOpt = None) -> None:
    """Print the resolved recipe (defaults filled in) and each stage's config hash: the hash of
    the config slice in its cache key (evaluate's is per candidate and benchmark; see the note)."""
    import yaml

    recipe, _ = _load(config, sets)
    console.print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), highlight=False)
    from flows.stage import stage_config_hashes

    try:
        rows = stage_config_hashes(recipe)
    except (FileNotFoundError, *_user_errors()) as exc:  # ingest's and sft_writer's slices hash their data
        raise _UserFacingError(str(exc)) from None
    for row in rows:
        label = f"{row['stage']} v{row['version']}" + (f" [{row['benchmark']}]" if row["benchmark"] else "")
        value = row["config_hash"][:16] if row["config_hash"] else row["note"]
        console.print(f"{label} config hash: {value}", highlight=False, markup=False)


# -- data, models, storage ----------------------------------------------------------------------


@data_app.command("check")
def data_check(config: ConfigOpt = DEFAULT_CONFIG, sets: SetOpt = None) -> None:
    """Load and validate the recipe's instruction source; write nothing."""
    from collections import Counter

    from tasks.instructions import InstructionDataError, load_instructions

    recipe, _ = _load(config, sets)
    try:
        rows = load_instructions(recipe.data)
    except InstructionDataError as exc:
        raise _UserFacingError(str(exc)) from None
    langs = Counter(r.language for r in rows)
    console.print(
        f"[green]ok[/] {len(rows)} instructions; languages {dict(langs)}; "
        f"{sum(1 for r in rows if r.criteria)} with criteria"
    )


@model_app.command("provision")
def model_provision(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Convert the embedded model(s) the recipe uses into the local model cache (idempotent)."""
    recipe, _ = _load(config, None)
    from tasks.llm.embedded import ensure_recipe_models

    ensure_recipe_models(recipe)
    console.print(f"[green]ok[/] models ready under {recipe.storage.model_cache}")


@app.command("runs")
def list_runs(config: ConfigOpt = DEFAULT_CONFIG, limit: int = 10) -> None:
    """Recent runs and their stage runs, newest first."""
    from storage import open_storage

    recipe, _ = _load(config, None)
    _print_rows(open_storage(recipe.storage).catalog.recent_runs(limit=limit), RUN_COLUMNS, "runs")


@app.command("datasets")
def list_datasets(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Every dataset version in storage, with the stage run that wrote it."""
    from storage import open_storage

    recipe, _ = _load(config, None)
    rows = open_storage(recipe.storage).catalog.dataset_versions_summary()
    _print_rows(rows, DATASET_VERSION_COLUMNS, "dataset versions")


@app.command("show")
def show_dataset(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, or NAME for the latest version.")],
    config: ConfigOpt = DEFAULT_CONFIG,
    limit: int = 5,
) -> None:
    """Preview a dataset version and print the lineage stored in its commit."""
    from storage import DatasetRef, open_storage

    recipe, _ = _load(config, None)
    storage = open_storage(recipe.storage)
    try:
        dataset_ref = DatasetRef.parse(ref) if "@" in ref else storage.datasets.latest(ref)
        df = storage.datasets.query(f"SELECT * FROM t LIMIT {int(limit)}", {"t": dataset_ref})
    except (ValueError, *_user_errors()) as exc:
        raise _UserFacingError(str(exc)) from None
    for index, record in enumerate(df.to_dict(orient="records")):  # rows are wide: one block per row
        table = Table(title=f"{dataset_ref} row {index}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for key, value in record.items():
            text = str(value)
            table.add_row(key, text if len(text) <= 400 else text[:400] + " ...")
        console.print(table)
    console.print(f"[bold]lineage of {dataset_ref}[/]")
    for key, value in storage.datasets.lineage(dataset_ref).items():
        console.print(f"  {key}: {value}", highlight=False)


# The columns of `wrl runs` and `wrl datasets`: the keys of the catalog's rows, in this order (the
# header is printed even when there are no rows).
RUN_COLUMNS = ("run", "flow", "recipe", "run_status", "started", "stage", "stage_status", "seconds", "config")
DATASET_VERSION_COLUMNS = ("dataset", "version", "rows", "stage", "stage_run", "config", "created")


def _print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], title: str) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold", max_width=60)
    for row in rows:
        # A missing value prints as "nan", as it did when these tables were pandas frames.
        table.add_row(*("nan" if row[c] is None else str(row[c])[:200] for c in columns))
    console.print(table)


# -- serve ---------------------------------------------------------------------------------------


_SERVE_DEVICES = ("auto", "cpu", "cuda")


@app.command("lineage")
def show_lineage(
    target: Annotated[
        str, typer.Argument(help="A dataset version (ladders@3), a checkpoint folder or a model id.")
    ],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Print the chain that produced TARGET: each stage run, its inputs and outputs, its judge."""
    from flows.lineage import describe_config, resolve_target
    from storage import open_storage

    recipe, _ = _load(config, None)
    try:
        found = resolve_target(open_storage(recipe.storage), target)
    except ValueError as exc:
        raise _UserFacingError(str(exc)) from None
    console.print(f"[bold]{found['label']}[/]", highlight=False)
    if not found["chain"]:
        console.print("  no recorded producer (an input, or written outside a stage)")
    for hop in found["chain"]:
        outputs = ", ".join(str(r) for r in hop.get("outputs", {}).values()) or "-"
        inputs = ", ".join(str(r) for r in hop.get("inputs", {}).values()) or "the source data"
        console.print(
            f"  [bold]{hop['stage']}[/] (stage run {hop['stage_run_id'][:12]}, {hop['status']}, "
            f"config {str(hop['config_hash'])[:12]}): {outputs} <- {inputs}",
            highlight=False,
        )
        described = describe_config(hop["stage"], hop.get("config"))
        if described:
            console.print(f"      {described}", highlight=False)


@app.command("models")
def list_models(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Trained policies registered in storage (serve one with `wrl serve model:<id>`)."""
    from storage import open_storage

    recipe, _ = _load(config, None)
    models = open_storage(recipe.storage).training.models()
    table = Table(title=f"models in {recipe.storage.root}")
    for column in ("model_id", "step", "base_model", "ladders_ref", "path", "created_at"):
        table.add_column(column, overflow="fold")
    for m in models:
        table.add_row(
            *(str(m[c]) for c in ("model_id", "step", "base_model", "ladders_ref", "path", "created_at"))
        )
    console.print(table)


def _serve_device(value: str) -> str:
    if value not in _SERVE_DEVICES:
        raise typer.BadParameter(f"'{value}' is not one of {', '.join(_SERVE_DEVICES)}")
    return value


@app.command("serve")
def serve(
    model_dir: Annotated[
        str,
        typer.Argument(
            help="A local model folder, embedded:<name> (e.g. embedded:smollm2-135m-instruct), or "
            "model:<id> (a trained policy, see `wrl models`).",
            show_default=False,
        ),
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    device: Annotated[
        str, typer.Option(help="Where the model runs: auto, cpu or cuda.", callback=_serve_device)
    ] = "auto",
    config: ConfigOpt = DEFAULT_CONFIG,
    startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to answer.")] = 300.0,
    continuous_batching: Annotated[
        bool, typer.Option(help="Batch concurrent requests together (off: one request at a time).")
    ] = True,
    cache_tokens: Annotated[
        int,
        typer.Option(help="Continuous batching: KV cache size in tokens (prompts and answers in flight)."),
    ] = 8192,
) -> None:
    """Serve a local model over an OpenAI-compatible HTTP API (`transformers serve`) until Ctrl-C.

    An embedded model is resolved (converted on first use) into the recipe's model cache.
    """
    from rich.markup import escape

    from configs.loading import ConfigError
    from tasks.llm.embedded import EmbeddedModelError
    from tasks.llm.serve_command import (
        ServerExitedError,
        UnknownTrainedModelError,
        client_examples,
        foreground_server,
        resolve_model_folder,
        serve_until_stopped,
    )
    from tasks.llm.serving import ServerStartError

    try:
        folder = resolve_model_folder(model_dir, config)
    except (ConfigError, UnknownTrainedModelError, EmbeddedModelError) as exc:
        raise _UserFacingError(str(exc)) from None
    try:
        server = foreground_server(
            folder, host=host, port=port, device=device, startup_timeout_s=startup_timeout,
            continuous_batching=continuous_batching, cache_tokens=cache_tokens,
        )  # fmt: skip
    except ValueError as exc:
        raise _UserFacingError(escape(str(exc))) from None

    def on_ready() -> None:
        # soft_wrap: commands stay on one line, ready to copy; every value is escaped from markup.
        examples = "".join(f"{name}:\n  {escape(text)}\n" for name, text in client_examples(server).items())
        console.print(
            f"[green]ready[/] (pid {server.pid}, log {escape(str(server.log_path))})\n"
            f"  base_url: [bold]{escape(server.base_url)}[/]\n"
            f"  model:    [bold]{escape(server.model_name)}[/]\n\n"
            f"{examples}\n"
            "Serving until Ctrl-C.",
            highlight=False,
            soft_wrap=True,
        )

    console.print(
        f"Starting transformers serve for {escape(server.model_name)} on {device} ...", highlight=False
    )
    try:
        code = serve_until_stopped(
            server, on_ready=on_ready, on_stopping=lambda: console.print("stopping ...")
        )
    except (ServerStartError, ServerExitedError) as exc:  # their messages end with the server's log
        raise _UserFacingError(escape(str(exc))) from None
    console.print(f"[green]stopped[/] the server (exit code {code}: SIGTERM is the orderly way)")
