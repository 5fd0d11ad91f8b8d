"""`wrl demo` as a user runs it: a real subprocess, the real embedded model, a run recorded on a
real local Prefect server (`wrl up`), whose UI a headless Chromium then checks.

Slow (three generators, a judge, 6 GRPO steps and the evaluation of two policies on four benchmark
slices: 4-6 minutes on a 2-core CPU): run by `make test` after the fast suite, and so by CI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tasks.stages import OPTIONAL_STAGES, STAGE_ORDER
from tests.support.browser import browser_page
from tests.support.paths import PROJECT_ROOT
from tests.support.services import local_prefect

# Twice the slowest measurement or target: the cold demo's subprocess may take 1,200 s (2x its 600 s
# target on the slowest 2-core machine; measured 250-340 s, docs/benchmarks.md), and the first
# test's limit covers that, `wrl up` (300 s) and the test itself.
DEMO_TIMEOUT_S = 1200
# The main job, timed by its users: `make test` runs this module alone, after the other slow tests.
pytestmark = [pytest.mark.slow, pytest.mark.demo, pytest.mark.timeout(1800)]
CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
DEMO_STAGES = tuple(s for s in STAGE_ORDER if s not in OPTIONAL_STAGES)  # the demo runs no SFT


def _wrl(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory, embedded_model_cache):
    """`wrl up`, then the cold `wrl demo` against that server; `wrl down` after the module."""
    root = tmp_path_factory.mktemp("demo")
    recipe = load_recipe(CONFIG)
    # The recipe's benchmark paths are relative to the project root; this run's cwd is `root`.
    sets = ["--set", f"storage.model_cache={embedded_model_cache}"]
    for name, bench in recipe.evaluation.benchmarks.items():
        sets += ["--set", f"evaluation.benchmarks.{name}.path={(PROJECT_ROOT / bench.path).resolve()}"]
    with local_prefect(root, CONFIG) as services:
        first = _wrl("demo", "--config", str(CONFIG), *sets, cwd=root, env=services["env"])
        storage = open_storage(recipe.storage.model_copy(update={"root": root / recipe.storage.root}))
        yield {"root": root, "recipe": recipe, "sets": sets, "first": first, "storage": storage, **services}


def test_demo_runs_the_slice(demo):
    first, recipe, storage, tmp_path = demo["first"], demo["recipe"], demo["storage"], demo["root"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "generations@0" in first.stdout and "Total" in first.stdout

    generations = storage.datasets.read(DatasetRef("generations", 0)).to_pylist()
    assert len(generations) == recipe.data.limit * len(recipe.generators)
    assert all(r["error"] is None and len(r["text"].strip()) >= 20 for r in generations), generations[:2]
    assert storage.datasets.lineage(DatasetRef("generations", 0))["inputs"] == ["instructions@0"]
    judgments = storage.datasets.read(DatasetRef("judgments", 0)).to_pylist()
    assert len(judgments) == len(generations) and all(j["score"] is not None for j in judgments)
    ladders = storage.datasets.read(DatasetRef("ladders", 0)).to_pylist()
    assert ladders and all(lad["rungs"][lad["policy_rung"]]["generator"] == "policy" for lad in ladders)
    for lad in ladders:  # every response ascending by score, the policy's among them (the paper)
        assert [r["score"] for r in lad["rungs"]] == sorted(r["score"] for r in lad["rungs"])
    with storage.catalog.connect() as con:
        usage = con.execute(
            "SELECT backend, sum(requests) FROM llm_usage u JOIN stage_runs s USING (stage_run_id)"
            " WHERE s.stage = 'generate' GROUP BY backend ORDER BY backend"
        ).fetchall()
    # One competitor went over HTTP to the `transformers serve` process the run started.
    served = [g for g in recipe.generators if recipe.backends[g.backend].kind == "openai-compatible"]
    assert served and dict(usage)["served"] == recipe.data.limit * len(served)
    # The end-of-flow report: printed, and its plot written.
    assert "Score per generator" in first.stdout and "Learning potential p" in first.stdout
    plots = list((tmp_path / recipe.storage.root / "reports").glob("*/curation.png"))
    assert len(plots) == 1 and plots[0].read_bytes()[:4] == b"\x89PNG"

    # Training ran for real: every step recorded, the curriculum kept, the policy registered.
    steps = storage.datasets.read(DatasetRef("train_metrics", 0)).to_pylist()
    assert {m["step"] for m in steps} == set(range(1, recipe.training.max_steps + 1))
    grad_norms = [m["value"] for m in steps if m["name"] == "grad_norm"]
    assert len(grad_norms) == recipe.training.max_steps and max(grad_norms) > 0  # the weights moved
    judgments = storage.datasets.read(DatasetRef("train_judgments", 0)).to_pylist()
    per_step = recipe.training.batch_size * recipe.training.num_generations
    assert len(judgments) == recipe.training.max_steps * per_step
    history = storage.datasets.read(DatasetRef("curriculum_history", 0)).to_pylist()
    assert history and all(h["rung_after"] - h["rung_before"] in (0, 1) for h in history)
    (model,) = storage.training.models()
    assert model["step"] == recipe.training.max_steps and (Path(model["path"]) / "config.json").is_file()
    assert "Training:" in first.stdout and list(
        (tmp_path / recipe.storage.root / "reports").glob("*/training.png")
    )

    # The demo ends with the evaluation of the base and the trained policy on the four benchmarks.
    results = storage.evaluations.results()
    assert {(r["candidate"], r["benchmark"]) for r in results} == {
        (c.name, b) for c in recipe.evaluation.candidates for b in recipe.evaluation.benchmarks
    }
    assert {(r["candidate"], r["candidate_source"], r["step"]) for r in results} == {
        ("base", "training:base", 0),
        ("trained", "training:final", recipe.training.max_steps),
    }
    assert all(r["n_items"] > 0 for r in results)
    assert "evaluation" in first.stdout and "Creative Writing v3" in first.stdout
    # Each score with its interval, and the trained policy against the base, paired, with a verdict.
    assert re.search(r"\d \[-?\d+(\.\d+)?, -?\d+(\.\d+)?\]", first.stdout)
    assert re.search(r"trained - base on \w+: [+-]\d+\.\d\d \[.*\] over \d+ items \((excludes 0|within noise)",
                     first.stdout)  # fmt: skip
    assert list((tmp_path / recipe.storage.root / "reports").glob("*/scores-over-steps-train-*.png"))


def test_the_cost_forecast_agrees_with_what_the_demo_called(demo):
    """`wrl config cost` before a run, against the cold demo's llm_usage: the same calls in every
    stage; output tokens at most their budgets; input tokens within the stated tolerance (chars / 4
    against SmolLM2's tokenizer and chat template, docs/operations.md)."""
    from configs.loading import parse_set_option
    from tasks.stages.forecast import forecast

    assert demo["first"].returncode == 0
    overrides = dict(parse_set_option(v) for v in demo["sets"][1::2])
    result = forecast(load_recipe(CONFIG, overrides))
    planned = result.by_stage()
    # The candidates' and generators' chat calls (the judge's probes report no tokens in usage).
    written = {stage: sum(line.input_tokens for line in result.lines
                          if line.stage == stage and not line.what.endswith("judge"))
               for stage in ("generate", "evaluate")}  # fmt: skip
    with demo["storage"].catalog.connect() as con:
        rows = con.execute(
            "SELECT s.stage, sum(u.requests + u.cache_hits), sum(u.input_tokens), sum(u.output_tokens) "
            "FROM llm_usage u JOIN stage_runs s USING (stage_run_id) WHERE s.status = 'completed' "
            "GROUP BY s.stage"
        ).fetchall()
    measured = {stage: (calls, i, o) for stage, calls, i, o in rows}
    assert {s: planned[s]["calls"] for s in planned} == {s: m[0] for s, m in measured.items()}
    for stage in ("generate", "evaluate"):  # the stages with chat calls (probes report no tokens)
        _, input_tokens, output_tokens = measured[stage]
        assert planned[stage]["output_tokens"] >= output_tokens > 0
        assert 0.5 <= written[stage] / input_tokens <= 1.5, (stage, written[stage], input_tokens)


def _open_stage_artifact(page, base_url: str, task_run_href: str, stage: str) -> None:
    """From a link to a stage's task run: its page, its Artifacts tab, its `stage-<name>` artifact."""
    page.goto(base_url + task_run_href)
    page.get_by_text("Artifacts", exact=True).click()
    page.get_by_text(f"stage-{stage}", exact=True).first.click()
    page.get_by_text(f"{stage} (computed in").wait_for()


def _link(page, name: str) -> str:
    link = page.get_by_role("link", name=name).first
    link.wait_for()
    return link.get_attribute("href")


def test_the_prefect_ui_shows_the_run_and_walks_back_from_training_to_the_judge(demo):
    """What a user sees in the UI of the demo's training run: the stages, the artifacts, and the
    walk back from the trained policy to the ladders, the scores, the judge and the generations."""
    assert demo["first"].returncode == 0
    storage, url = demo["storage"], demo["url"]
    (flow_run_id,) = storage.catalog.query("SELECT prefect_flow_run_id FROM runs WHERE flow = 'train'")[
        "prefect_flow_run_id"
    ]
    shots = demo["root"] / "screenshots"
    shots.mkdir()
    with browser_page() as page:
        page.goto(f"{url}/runs/flow-run/{flow_run_id}")
        page.get_by_text("Completed").first.wait_for()
        # The header fills in as its requests return: the flow's name, then the run's first tags
        # (the rest behind "+N"), and the Logs tab with the training's step lines.
        page.get_by_text("train", exact=True).first.wait_for()
        page.get_by_text("ladders@0", exact=True).first.wait_for()
        steps = demo["recipe"].training.max_steps
        page.get_by_text(f"train: step {steps}/{steps}").first.wait_for()
        page.wait_for_timeout(1500)  # the run graph (a canvas) draws after the data arrives
        page.screenshot(path=str(shots / "flow-run.png"))

        # Details lists every tag: the recipe, the judges, each dataset version the run wrote.
        page.get_by_text("Details", exact=True).click()
        page.get_by_text("Flow Run ID", exact=True).wait_for()
        details = page.inner_text("body")
        judge = demo["recipe"].judge
        for tag in (
            "recipe:demo",
            f"judge:{judge.model}",
            "ladders@0",
            "train_metrics@0",
            "curriculum_history@0",
        ):
            assert tag in details, details[-1500:]

        page.get_by_text("Task Runs", exact=True).click()
        page.get_by_text(f"({len(DEMO_STAGES)} Completed)").wait_for()
        for stage in DEMO_STAGES:  # the rows render after the count: wait for each task run's name
            page.get_by_text(re.compile(rf"^{stage}-[0-9a-f]{{3}}$")).first.wait_for()

        page.get_by_text("Artifacts", exact=True).click()
        for key in (
            "demo-curation-summary",
            "demo-training-steps",
            "demo-training-plot",
            "demo-curation-plot",
        ):
            page.get_by_text(key, exact=True).wait_for()

        # The walk back, one link per hop: summary -> train -> order (ladders) -> score (judge).
        page.get_by_text("demo-curation-summary", exact=True).click()
        _open_stage_artifact(page, url, _link(page, "train · stage run"), "train")
        assert "ladders@0" in page.inner_text("body")  # the ladders the policy trained on
        _open_stage_artifact(page, url, _link(page, "order · stage run"), "order")
        _open_stage_artifact(page, url, _link(page, "score · stage run"), "score")
        scored = page.inner_text("body")
        assert judge.label in scored, scored[:2000]  # the one judge label (backend/model/mode/prompt)
        assert "generations@0" in scored and _link(page, "generate · stage run").startswith("/runs/task-run/")
        page.screenshot(path=str(shots / "stage-score.png"), full_page=True)
    assert (shots / "flow-run.png").read_bytes()[:4] == b"\x89PNG"


def test_the_demo_reruns_from_cache(demo):
    assert demo["first"].returncode == 0
    recipe, storage, tmp_path = demo["recipe"], demo["storage"], demo["root"]
    config, sets = CONFIG, demo["sets"]
    second = _wrl("demo", "--config", str(config), *sets, cwd=tmp_path, env=demo["env"])
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    for stage in (*DEMO_STAGES, "evaluate"):
        assert f"{stage}: cache hit" in log
    assert "transformers: loaded" not in log  # the model was not even loaded
    assert "answers at" not in log  # nor was a server started
    with storage.catalog.connect() as con:
        statuses = con.execute("SELECT stage, status FROM stage_runs ORDER BY started_at").fetchall()
    pairs = len(recipe.evaluation.candidates) * len(recipe.evaluation.benchmarks)
    assert statuses == (
        [(s, "completed") for s in DEMO_STAGES] + [("evaluate", "completed")] * pairs
        + [(s, "cached") for s in DEMO_STAGES] + [("evaluate", "cached")] * pairs
    )  # fmt: skip


def test_two_cpu_ranks_train_the_demo_policy_on_one_curriculum(demo):
    """SmolLM2 on two CPU ranks (DDP over gloo), after the demo (curation: cache hits). The rank
    count is not part of the run's identity, so a new seed makes the train stage compute."""
    assert demo["first"].returncode == 0
    storage = demo["storage"]
    sets = [*demo["sets"], "--set", "training.processes=2", "--set", "training.seed=1",
            "--set", "training.max_steps=2"]  # fmt: skip
    run = _wrl("run", "train", "--config", str(CONFIG), *sets, cwd=demo["root"], env=demo["env"])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "launching 2 rank(s)" in log and "train: step 2/2" in log
    with storage.catalog.connect() as con:
        (curriculum_id,) = con.execute(
            "SELECT train_run_id FROM models ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
        history = con.execute(
            "SELECT step, wins + ties + losses + failures FROM curriculum_history WHERE curriculum_id = ? "
            "ORDER BY step", [curriculum_id],
        ).fetchall()  # fmt: skip
        samples = con.execute(
            "SELECT step, count(DISTINCT sample_index), count(*) FROM train_judgments WHERE train_run_id = ? "
            "GROUP BY step ORDER BY step", [curriculum_id],
        ).fetchall()  # fmt: skip
    # 1 prompt x 4 rollouts per step, 2 on each rank: one history row per step counting all 4.
    assert history == [(1, 4), (2, 4)]
    assert samples == [(1, 4, 4), (2, 4, 4)]


def test_judge_calibrate_measures_the_demo_judge_on_its_ladders_and_on_the_labelled_example(demo):
    """`wrl judge calibrate` on the demo's own ladders (curation: cache hits), then on the shipped
    labelled example: the 135M logprob judge's position bias, which docs/training.md describes,
    as a measured number, and the recommendation that follows from it (the demo's own swap)."""
    assert demo["first"].returncode == 0
    storage = demo["storage"]
    example = PROJECT_ROOT / "tasks" / "rewards" / "labelled_pairs_example.jsonl"
    for extra, source in (((), "from ladders"), (("--pairs", str(example)), "labelled_pairs_example")):
        run = _wrl("judge", "calibrate", "--config", str(CONFIG), *demo["sets"], *extra, cwd=demo["root"],
                   env={**demo["env"], "COLUMNS": "200"})  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = run.stdout
        assert source in out and "flip rate" in out and "first-position rate" in out, out[-3000:]
        assert "Recommended reward.position: swap" in out and "judge-calibration.png" in out
    with storage.catalog.connect() as con:
        summaries = con.execute(
            "SELECT summary_json FROM stage_runs WHERE stage = 'calibrate' ORDER BY started_at"
        ).fetchall()  # fmt: skip
    assert [json.loads(s)["recommended_position"] for (s,) in summaries] == ["swap", "swap"]
    ladders = storage.datasets.read(storage.datasets.latest("ladders")).to_pylist()
    pairs = sum(lad["n_rungs"] * (lad["n_rungs"] - 1) // 2 for lad in ladders)
    first = storage.datasets.read(DatasetRef("judge_calibration", 0)).to_pylist()
    assert len(first) == 2 * min(pairs, 50) and all(r["error"] is None for r in first)
    labelled = storage.datasets.read(DatasetRef("judge_calibration", 1)).to_pylist()
    assert len(labelled) == 20 and {r["label"] for r in labelled} == {"x", "y", "tie"}
