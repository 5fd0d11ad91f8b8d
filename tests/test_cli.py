"""The `wrl` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def wrl(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "flows", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


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
