"""The `wrl` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

from tests.support.cli import wrl
from tests.support.paths import PROJECT_ROOT


def test_help_lists_the_commands():
    result = wrl("--help")
    assert result.returncode == 0
    for command in (
        "demo",
        "run",
        "stage",
        "evaluate",
        "config",
        "data",
        "model",
        "runs",
        "datasets",
        "show",
    ):
        assert command in result.stdout


def test_config_validate_reports_each_bad_file_with_location(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (PROJECT_ROOT / "configs" / "demo.yaml").read_text().replace("max_tokens: 64", "max_tokens: -1", 1)
    )
    unknown = tmp_path / "unknown-option.yaml"
    unknown.write_text(
        (PROJECT_ROOT / "configs" / "demo.yaml").read_text().replace("{max_sections: 2,", "{max_section: 2,")
    )
    result = wrl("config", "validate", str(PROJECT_ROOT / "configs" / "demo.yaml"), str(bad), str(unknown))
    assert result.returncode == 2
    assert "ok" in result.stdout and "demo.yaml" in result.stdout
    assert f"{bad}:" in result.stderr and "generators[0].decoding.max_tokens" in result.stderr
    assert f"{unknown}:" in result.stderr
    assert "generators[2].strategy_options.max_section: 'agentwrite' has no such option" in result.stderr


def test_bad_config_fails_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (PROJECT_ROOT / "configs" / "demo.yaml").read_text().replace("dtype: float32", "dtype: fp8")
    )
    result = wrl("demo", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert (
        f"{bad}:" in result.stderr
        and "backends.embedded.dtype" in result.stderr
        and "'float32'" in result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".wrl").exists()  # nothing provisioned, nothing stored


def test_data_check_on_bad_rows_names_each_row_and_writes_nothing(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"id": "a", "prompt": "Write a poem."}\n{"id": "a", "prompt": ""}\n')
    result = wrl(
        "data",
        "check",
        "--config",
        str(PROJECT_ROOT / "configs" / "demo.yaml"),
        "--set",
        "data.format=jsonl",
        "--set",
        f"data.path={data}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert f"{data}:2" in result.stderr and "prompt" in result.stderr and "id" in result.stderr
    assert not (tmp_path / ".wrl").exists()


def test_unknown_stage_is_refused():
    result = wrl("stage", "scorre")
    assert result.returncode == 2 and "unknown stage 'scorre'" in result.stderr


def test_demo_with_a_missing_benchmark_file_says_so_before_any_work(tmp_path):
    # cwd is not the project root, so the recipe's relative ../shared/benchmarks paths are missing.
    result = wrl("demo", "--config", str(PROJECT_ROOT / "configs" / "demo.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "evaluation.benchmarks.writingbench.path" in result.stderr and "--set" in result.stderr
    assert not (tmp_path / ".wrl").exists()


def test_evaluate_without_an_evaluation_block_is_refused(tmp_path):
    recipe = tmp_path / "r.yaml"
    text = (PROJECT_ROOT / "configs" / "demo.yaml").read_text()
    recipe.write_text(text[: text.index("\nevaluation:")] + "\n")
    result = wrl("evaluate", "--config", str(recipe), "--set", f"storage.root={tmp_path / 's'}", cwd=tmp_path)
    assert result.returncode == 2 and "no `evaluation:` block" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_prints_every_stages_config_hash(tmp_path):
    from configs.loading import load_recipe, parse_set_option, stable_hash
    from flows.pipeline import STAGE_TASKS
    from storage import open_storage
    from tasks.stages import STAGE_ORDER, ingest
    from tasks.stages.runner import run_stage

    pairs = tmp_path / "sft.jsonl"
    pairs.write_text('{"prompt": "Write a poem.", "response": "A poem."}\n')
    sets = [f"sft.writer.data.path={pairs}", "sft.reference.enabled=true", f"storage.root={tmp_path / 's'}"]
    demo = PROJECT_ROOT / "configs" / "demo.yaml"
    result = wrl("config", "show", "--config", str(demo), *(arg for s in sets for arg in ("--set", s)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    recipe = load_recipe(demo, dict(parse_set_option(s) for s in sets))
    for name in STAGE_ORDER:  # every stage, the optional sft ones included (the recipe configures them)
        spec = STAGE_TASKS[name][0]
        assert f"{name} v{spec.version} config hash: {stable_hash(spec.config_slice(recipe))[:16]}" in lines
    for benchmark in recipe.evaluation.benchmarks:  # evaluate: keyed per candidate, one line per benchmark
        note = "one per candidate (base, trained), known once they resolve at run time (see `wrl runs`)"
        assert f"evaluate v2 [{benchmark}] config hash: {note}" in lines
    # It is the hash a stage run records: run ingest and read the catalog's row for what it wrote.
    ran = run_stage(ingest.SPEC, ingest.compute, recipe)
    written = open_storage(recipe.storage).catalog.dataset_versions_summary()
    assert [(r["dataset"], r["stage"], r["config"]) for r in written] == [
        ("instructions", "ingest", ran.config_hash[:12])
    ]
    assert f"ingest v1 config hash: {ran.config_hash[:16]}" in lines

    without = wrl("config", "show", "--config", str(demo))  # the demo runs neither sft stage
    assert "sft_writer v1 config hash: not configured (an optional stage this recipe does not run)" in (
        without.stdout.splitlines()
    )
