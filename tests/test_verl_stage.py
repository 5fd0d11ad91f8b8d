"""The train stage on `training.engine: verl`, with a stand-in for verl's trainer (verl's PPO loop
needs a GPU rollout engine: tests/support/verl_standin.py says what the stand-in keeps of it).
Everything else is real: the stage writes the ladders as verl's parquet and verl's configuration,
launches the driver (tasks/training/verl_main.py) as a process tree with its own Ray session,
the named reward actor judges every reward worker's rollouts with the recipe's judge (the real
OpenAI SDK against the fault server), the trainer mixin keeps the curriculum in step, and the
stage records the run as it does the TRL engine's. The driver runs in this environment
(training.verl.environment: this venv, which holds Ray and everything the driver imports outside
the entry module) and, where it exists, in verl's own."""

from __future__ import annotations

import glob
import shutil
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from configs.loading import load_recipe
from storage import open_storage
from tests.support.fault_server import FaultServer
from tests.support.recipes import tiny_pipeline_yaml
from tests.support.train_worker import start, summary_of
from tests.support.verl_env import needs_verl, verl_python
from tests.support.verl_standin import STEP_DELAY_ENV

STANDIN = {"WRL_VERL_ENTRY": "tests.support.verl_standin"}


def judge_reply(body: dict) -> str:
    """The policy's response is B (position-disadvantage): it wins on odd steps, loses on even ones."""
    policy = body["messages"][-1]["content"].split("<<<RESPONSE B", 1)[-1]
    return f"Compared.\n[[{'B' if ('step 1 ' in policy or 'step 3 ' in policy) else 'A'}]]"


def verl_recipe(
    tmp_path: Path,
    model: Path,
    server: FaultServer,
    *,
    environment: Path,
    max_steps: int = 4,
    breaker: int = 25,
) -> str:
    path = tmp_path / "verl.yaml"
    api = (f"  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}', max_retries: 0, timeout_s: 10, "
           f"max_consecutive_failures: {breaker}}}\n")  # fmt: skip
    head = tiny_pipeline_yaml(tmp_path, model, name="verl-test", limit=3, rivals=(("rival", 0.7, 16),),
                              backends_extra=api)  # fmt: skip
    path.write_text(f"""\
{head}ordering: {{}}
reward: {{kind: pairwise, position: position-disadvantage, judge: {{backend: api, model: judge, mode: json}}}}
curriculum: {{schedule: dynamic, promotion: any-win}}
training:
  engine: verl
  algorithm: ppo
  num_generations: 1
  batch_size: 2
  max_steps: {max_steps}
  save_steps: 2
  distributed: fsdp2
  lr_scheduler: constant_with_warmup
  clip_ratio_c: 3.0
  max_response_tokens: 8
  verl: {{environment: {environment}, reward_workers: 2}}
""")
    return str(path)


def _rows(storage, sql, params=()):
    with storage.catalog.connect() as con:
        return con.execute(sql, list(params)).fetchall()


def _standin_tree() -> list[str]:
    """Processes of a stand-in run: the driver, and Ray's (their command lines name its folder)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or ())
        if "tasks.training.verl_main" in line or "ray-wrl-standin" in line:
            found.append(line[:120])
    return found


@pytest.fixture
def judge_server():
    with FaultServer(reply_text=judge_reply) as server:
        yield server


@pytest.fixture(autouse=True)
def _standin(monkeypatch):
    for key, value in STANDIN.items():
        monkeypatch.setenv(key, value)
    yield
    for temp in glob.glob("/tmp/ray-wrl-standin-*"):
        shutil.rmtree(temp, ignore_errors=True)


ENVIRONMENTS = [
    pytest.param(Path(sys.prefix), id="this-environment"),
    # verl's own (`make verl-cpu`; skipped in CI): the driver and the reward actor among verl's pins
    pytest.param(None, id="verl-environment", marks=needs_verl),
]


@pytest.mark.slow
@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_a_killed_verl_run_resumes_with_its_checkpoints_curriculum_and_its_tree_dies_with_it(
    environment, judge_server, tiny_model_dir, tmp_path, monkeypatch
):
    """The stage (in a process of its own) is SIGKILLed after checkpoint 2, during step 3: the
    driver, Ray's processes and the reward actor die with it. Run again, the stage resumes at
    step 2 with that checkpoint's curriculum, judges step 3 again, and records the run as the TRL
    engine does (metrics of both sources, judgments, history, snapshots, the registered model)."""
    environment = environment or verl_python().parents[1]
    recipe_path = verl_recipe(tmp_path, tiny_model_dir, judge_server, environment=environment, max_steps=4)
    storage = open_storage(load_recipe(recipe_path).storage)
    monkeypatch.setenv(STEP_DELAY_ENV, "1.5")  # the first run's steps, so the kill lands mid-run
    first = start(recipe_path)  # the stage in a process of its own, SIGKILLed below
    monkeypatch.delenv(STEP_DELAY_ENV)
    try:
        deadline = time.monotonic() + 300
        while True:  # wait for checkpoint 2 and a step after it
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the verl run never got past its first checkpoint"
            try:
                snapshots = _rows(storage, "SELECT DISTINCT step FROM curriculum_snapshots")
                steps = _rows(storage, "SELECT max(step) FROM train_judgments")
            except Exception:  # tables not there yet
                snapshots, steps = [], [(None,)]
            if (2,) in snapshots and steps[0][0] is not None and steps[0][0] >= 3:
                break
            time.sleep(0.05)
        tree = psutil.Process(first.pid).children(recursive=True)
        assert any("tasks.training.verl_main" in " ".join(p.cmdline()) for p in tree)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, f"left running after the stage was killed: {[p.cmdline()[:3] for p in alive]}"
    finally:
        if first.poll() is None:
            first.kill()

    (curriculum_id,) = _rows(storage, "SELECT curriculum_id FROM curricula")[0]
    snapshot = dict(_rows(storage, "SELECT instruction_id, rung FROM curriculum_snapshots WHERE curriculum_id = ? "
                                   "AND step = 2", (curriculum_id,)))  # fmt: skip
    kept = _rows(storage, "SELECT * FROM curriculum_history WHERE step <= 2 ORDER BY step, instruction_id")

    second = start(recipe_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    summary = summary_of(out)
    assert summary["resumed_from"] == 2 and summary["steps"] == 4
    assert (
        _rows(storage, "SELECT * FROM curriculum_history WHERE step <= 2 ORDER BY step, instruction_id")
        == kept
    )
    following = _rows(storage, "SELECT instruction_id, rung_before FROM curriculum_history WHERE step = 3")
    assert following and all(rung == snapshot[iid] for iid, rung in following)
    # every step recorded once: the killed run's step 3 left the log and was judged again
    assert [s for (s,) in _rows(storage, "SELECT step FROM train_judgments GROUP BY step ORDER BY step")] == [
        1, 2, 3, 4
    ]  # fmt: skip
    assert _rows(storage, "SELECT count(*) FROM train_judgments")[0][0] == 8  # 2 prompts x 1 rollout
    history = _rows(storage, "SELECT step, instruction_id, rung_before, rung_after FROM curriculum_history "
                             "ORDER BY step, instruction_id")  # fmt: skip
    last: dict[str, int] = {}
    for step, iid, before, after in history:  # one rung at most per step, each step from the last
        assert before == last.get(iid, 0) and after - before in (0, 1)
        assert after == before or step in (1, 3)  # the judge's verdicts: wins on odd steps only
        last[iid] = after
    assert any(after > before for _, _, before, after in history)
    # a snapshot with each checkpoint (steps 2 and 4), beside the initial one
    assert open_storage(load_recipe(recipe_path).storage).curriculum.snapshot_steps(curriculum_id) == [
        0,
        2,
        4,
    ]
    sources = dict(_rows(storage, "SELECT source, count(DISTINCT step) FROM train_metrics GROUP BY source"))
    assert sources.get("trainer") == 4  # verl's own step metrics, as the TRL engine keeps its trainer's
    names = {n for (n,) in _rows(storage, "SELECT DISTINCT name FROM train_metrics")}
    assert {"reward/mean", "judge/win_rate", "curriculum/mean_rung", "time/step_s"} <= names
    # the final policy registered like the TRL engine's: a plain model folder `wrl serve` takes
    (path, step) = _rows(storage, "SELECT path, step FROM models WHERE train_run_id = ?", (curriculum_id,))[0]
    assert step == 4 and (Path(path) / "config.json").is_file() and Path(path) == Path(summary["model_path"])
    # the judge's calls, made in the reward actor, are metered on the stage run: steps 3 and 4 here,
    # which the killed run had judged already, come back from the response cache
    (run_id,) = _rows(
        storage, "SELECT stage_run_id FROM stage_runs WHERE stage = 'train' ORDER BY started_at DESC"
    )[0]
    usage = _rows(storage, "SELECT sum(requests), sum(cache_hits) FROM llm_usage WHERE stage_run_id = ? "
                           "AND backend = 'api'", (run_id,))  # fmt: skip
    assert usage[0][0] + usage[0][1] == 4 and usage[0][1] >= 2, usage
    # a clean exit leaves nothing behind either: the driver stopped its Ray session
    deadline = time.monotonic() + 60
    while leftover := _standin_tree():
        assert time.monotonic() < deadline, f"left running after the run ended: {leftover}"
        time.sleep(0.5)


@pytest.mark.slow
def test_a_judge_that_stops_answering_stops_the_verl_run_with_a_checkpoint_of_the_last_finished_step(
    tiny_model_dir, tmp_path
):
    """The judge's endpoint fails every call from step 2 on (its breaker opens at the first): no
    update for step 2; step 1, the last finished step, is checkpointed with its curriculum snapshot;
    the driver exits with the judge-failed code, and the stage fails saying why. Nothing is left
    running."""
    from tasks.training.launch import TrainerFailedError
    from tests.support.fault_server import Fault
    from tests.support.train_worker import run_curation, run_train

    with FaultServer(reply_text=judge_reply, triggers={"step 2 ": Fault("500")}) as server:
        recipe = load_recipe(verl_recipe(tmp_path, tiny_model_dir, server, environment=Path(sys.prefix),
                                         max_steps=3, breaker=1))  # fmt: skip
        storage = open_storage(recipe.storage)
        inputs = run_curation(recipe)
        with pytest.raises(TrainerFailedError, match=r"^train: the judge stopped answering") as failed:
            run_train(recipe, inputs)
    assert "the verl trainer exited with code 3" in str(failed.value)  # the judge-failed exit
    (curriculum_id,) = _rows(storage, "SELECT curriculum_id FROM curricula")[0]
    assert storage.curriculum.snapshot_steps(curriculum_id) == [0, 1]
    checkpoints = next(Path(recipe.storage.root, "training").glob("*/checkpoints"))
    assert (checkpoints / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert [s for (s,) in _rows(storage, "SELECT DISTINCT step FROM curriculum_history ORDER BY step")] == [1]
    assert _rows(storage, "SELECT status FROM stage_runs WHERE stage = 'train'") == [("failed",)]
    deadline = time.monotonic() + 60
    while leftover := _standin_tree():
        assert time.monotonic() < deadline, f"left running after the run ended: {leftover}"
        time.sleep(0.5)
