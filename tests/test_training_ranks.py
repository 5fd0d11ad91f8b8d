"""Training on two CPU ranks (gloo, DDP) with one curriculum: the train stage launches the trainer
as its own process tree (`accelerate launch`, tasks/training/launch.py), rank 0 judges every rank's
rollouts through one client and owns the curriculum, and every rank holds the same rungs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from configs.loading import load_recipe
from flows.train import train_policy
from storage import open_storage
from tests.support.fault_server import FaultServer
from tests.support.recipes import train_recipe

RPM = 120  # the judge's limit: one request per 0.5 s, for the whole job


def _verdict(body: dict) -> str:
    """A deterministic pairwise verdict from the prompt (the judge fault drill's)."""
    from benchmarks.judge_fault_drill import pairwise_reply

    return pairwise_reply(body)


def _rank_rungs(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank-{rank}.jsonl").read_text().splitlines()]


def test_two_ranks_train_one_curriculum_under_one_judge_rate_limit(
    prefect_harness, tiny_model_dir, tmp_path, monkeypatch
):
    rungs = tmp_path / "rungs"
    rungs.mkdir()
    monkeypatch.setenv("WRL_TRAINER_PLUGINS", "tests.support.trainer_plugin")
    monkeypatch.setenv("WRL_TEST_RUNGS_DIR", str(rungs))
    with FaultServer([], reply_text=_verdict) as server:
        # One prompt per step, 4 rollouts: 2 on each rank. Position swap: 2 judge calls per rollout.
        recipe_path = train_recipe(
            tmp_path, tiny_model_dir, batch_size=1, num_generations=4, max_steps=3,
            curriculum="schedule: dynamic, promotion: majority",
            backends_extra=f"  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}', "
                           f"requests_per_minute: {RPM}, max_concurrency: 8}}\n",
            reward="{kind: pairwise, position: swap, judge: {backend: api, model: judge, mode: json}}",
            training_extra="  processes: 2\n",
        )  # fmt: skip
        summary = train_policy(recipe_path)
        first_calls = len(server.requests)
        # As if killed before its final checkpoint: the same run again, recomputed, resumes from
        # checkpoint-2; step 3 is redone and its judge calls come back from the response cache.
        (last,) = (tmp_path / "store" / "training").glob("*/checkpoint-3")
        shutil.rmtree(last)
        again = train_policy(recipe_path, refresh=["train"])
        arrivals = sorted(r.time for r in server.requests)

    train = {s["stage"]: s for s in summary["stages"]}["train"]["summary"]
    assert train["steps"] == 3 and train["judgments"] == 12
    resumed = {s["stage"]: s for s in again["stages"]}["train"]["summary"]
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3
    assert len(server.requests) == first_calls  # nothing judged twice

    storage = open_storage(load_recipe(recipe_path).storage)
    with storage.catalog.connect() as con:
        history = con.execute(
            "SELECT step, instruction_id, wins + ties + losses + failures FROM curriculum_history ORDER BY step"
        ).fetchall()
        samples = con.execute(
            "SELECT step, list(sample_index ORDER BY sample_index) FROM train_judgments GROUP BY step ORDER BY step"
        ).fetchall()
    # One row per (step, instruction), and the promotion rule counted the rollouts of both ranks.
    assert [h[0] for h in history] == [1, 2, 3] and all(h[2] == 4 for h in history)
    # Sample indices are unique across the ranks.
    assert samples == [(step, [0, 1, 2, 3]) for step in (1, 2, 3)]

    # Both ranks held the same rungs at the start, after every step, and after the resume.
    rank0, rank1 = _rank_rungs(rungs, 0), _rank_rungs(rungs, 1)
    assert rank0 == rank1
    assert [r["at"] for r in rank0] == ["start None", "step 1", "step 2", "step 3", "start 2", "step 3"]
    assert rank0[-1]["rungs"] == storage.curriculum.state(_curriculum_id(storage))

    # The judge's limit held for the whole job: requests evenly spaced at 60/RPM s, so no 1-second
    # window holds more than RPM/60 + 1 (two ranks judging on limiters of their own would send
    # twice that).
    assert len(arrivals) == 24
    most = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert most <= RPM // 60 + 1, most


def _curriculum_id(storage) -> str:
    with storage.catalog.connect() as con:
        return con.execute("SELECT curriculum_id FROM curricula").fetchone()[0]


@pytest.mark.slow
def test_a_judge_that_stops_answering_mid_training_leaves_a_checkpoint_of_the_last_finished_step(
    prefect_harness, tiny_model_dir, tmp_path
):
    """Step 1 is judged (8 calls); then every call fails and the breaker trips in step 2. Every rank
    stops (none waits in a collective), step 1 is checkpointed with its curriculum snapshot, the
    stage fails naming the judge, and the next run (on one rank) resumes from step 1 and judges
    only step 2 on."""
    with FaultServer(["ok"] * 8 + ["500"] * 200, reply_text=_verdict) as server:
        recipe_path = train_recipe(
            tmp_path, tiny_model_dir, batch_size=1, num_generations=4, max_steps=3,
            backends_extra=f"  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}', "
                           "max_retries: 0, max_consecutive_failures: 3, max_concurrency: 8}\n",
            reward="{kind: pairwise, position: swap, judge: {backend: api, model: judge, mode: json}}",
            training_extra="  processes: 2\n",
        )  # fmt: skip
        rarely = {"training": {"save_steps": 50}}  # no checkpoint but the one the failure writes
        with pytest.raises(Exception, match="the judge stopped answering"):
            train_policy(recipe_path, overrides=rarely)
        (checkpoint,) = (tmp_path / "store" / "training").glob("*/checkpoint-*")
        assert checkpoint.name == "checkpoint-1"
        storage = open_storage(load_recipe(recipe_path).storage)
        curriculum_id = _curriculum_id(storage)
        with storage.catalog.connect() as con:  # its curriculum snapshot was taken
            assert con.execute(
                "SELECT DISTINCT step FROM curriculum_snapshots WHERE curriculum_id = ? AND step > 0",
                [curriculum_id],
            ).fetchall() == [(1,)]
        failed_calls = len(server.requests)

        server.clear_faults()
        # On one rank this time: the layout is not part of the run's identity, so it resumes.
        summary = train_policy(recipe_path, overrides={"training": {"save_steps": 50, "processes": 1}})
    train = {s["stage"]: s for s in summary["stages"]}["train"]["summary"]
    assert train["resumed_from"] == 1 and train["steps"] == 3 and train["judge_failures"] == 0
    # Step 1's judgments came from the response cache; steps 2 and 3 were judged (8 calls each).
    assert len(server.requests) - failed_calls == 16
    with storage.catalog.connect() as con:
        assert con.execute(
            "SELECT list(step ORDER BY step) FROM curriculum_history WHERE curriculum_id = ?", [curriculum_id]
        ).fetchone() == ([1, 2, 3],)


@pytest.mark.slow
def test_a_sigterm_to_the_stage_stops_every_rank(tiny_model_dir, tmp_path):
    """A cancel reaches the stage's process as SIGTERM: the stage stops the trainer's process group
    (launcher and ranks) before it exits, leaving nothing behind."""
    import signal
    import time

    from benchmarks.kill_drill import _trainer_ranks, _wait_for_no_ranks
    from tests.support import train_worker

    recipe = train_recipe(tmp_path, tiny_model_dir, max_steps=6, training_extra="  processes: 2\n")
    calls = tmp_path / "calls"
    worker = train_worker.start(recipe, delay_s=2.0, calls_file=calls)
    deadline = time.monotonic() + 600
    while worker.poll() is None and not calls.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)  # training has started once rank 0's judge made a call
    assert worker.poll() is None, worker.communicate()[1][-3000:]
    assert len(_trainer_ranks(tmp_path)) >= 3  # the launcher and two ranks
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=120)
    assert worker.returncode != 0
    assert _wait_for_no_ranks(tmp_path, timeout_s=5) == []
