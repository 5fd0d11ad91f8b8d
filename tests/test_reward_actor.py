"""The verl engine's reward actor under Ray on the CPU: several reward workers call verl's
`compute_score` (tasks/training/verl_reward.py) concurrently, and the one named actor
(tasks/training/reward_service.py) judges over the real OpenAI SDK against the fault server. One
judge client means one limit for all workers; one curriculum writer means one promotion per
instruction per step; a failed judgment is marked, never a win or a loss; the held-out split never
touches the curriculum. The step semantics themselves are tests/test_training_reward.py's, which
run on both engines' calling conventions."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from configs.loading import load_recipe  # noqa: E402
from storage import open_storage  # noqa: E402
from tasks.training.data import Rung, TrainingItem  # noqa: E402
from tasks.training.launch import LaunchSpec  # noqa: E402
from tasks.training.reward_service import ACTOR_NAMESPACE, actor_name, start_reward_actor  # noqa: E402
from tests.support.fault_server import Fault, FaultServer  # noqa: E402


def judge_reply(body: dict) -> str:
    """The policy's response is B (position-disadvantage): GOODX wins, anything else loses."""
    prompt = body["messages"][-1]["content"]
    policy = prompt.split("<<<RESPONSE B", 1)[-1]
    return f"Compared.\n[[{'B' if 'GOODX' in policy else 'A'}]]"


def items() -> dict[str, TrainingItem]:
    rungs = tuple(
        Rung(g, s, f"ref-{i} text") for i, (g, s) in enumerate([("policy", 3.0), ("x", 5.0), ("y", 7.0)])
    )
    return {iid: TrainingItem(iid, f"Write {iid}.", (), None, rungs) for iid in ("i1", "i2", "i3")}


@pytest.fixture(scope="module")
def ray_session():
    temp = Path(f"/tmp/ray-wrl-{os.getpid()}")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024**2,
             namespace=ACTOR_NAMESPACE, _temp_dir=str(temp), log_to_driver=False)  # fmt: skip
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def launch_spec(tmp_path: Path, server: FaultServer, max_consecutive_failures: int = 25) -> Path:
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(f"""\
name: actor
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
backends:
  oai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', max_retries: 0, timeout_s: 10,
         max_concurrency: 2, max_consecutive_failures: {max_consecutive_failures}}}
generators:
  - {{name: policy, role: policy, backend: oai, model: writer}}
judge: {{backend: oai, model: judge, mode: json, max_parse_retries: 0}}
training: {{device: cpu}}
""")
    recipe = load_recipe(recipe_path)
    work = items()
    open_storage(recipe.storage).curriculum.create("c", {iid: it.n_rungs for iid, it in work.items()})
    spec = LaunchSpec(recipe=recipe, judge=recipe.judge_for("reward"), items=work, base_model="unused",
                      work_dir=tmp_path / "work", model_dir=tmp_path / "model", curriculum_id="c",
                      stage_run_id="run1", validation_items={"v1": items()["i1"]})  # fmt: skip
    return spec.write(tmp_path / "work" / "spec.pkl")


@ray.remote
def reward_worker(actor: str, rollouts: list[tuple[str, str, str]]) -> list[dict]:
    """One of verl's reward workers: compute_score on each of its rollouts, concurrently."""
    from tasks.training.verl_reward import compute_score

    async def all_of_them():
        return await asyncio.gather(*(
            compute_score("writing", text, None, {"instruction_id": iid, "split": split}, actor=actor)
            for iid, text, split in rollouts
        ))  # fmt: skip

    return asyncio.run(all_of_them())


def test_reward_workers_share_one_actor_one_curriculum_and_one_judge_limit(ray_session, tmp_path):
    faults = [Fault("500")] * 2  # the first two judge calls fail (no retries): marked, never a loss
    with FaultServer(faults, reply_text=judge_reply, latency_s=0.05) as server:
        spec = launch_spec(tmp_path, server)
        actor = start_reward_actor(spec, "run1")
        name = actor_name("run1")
        ray.get(actor.begin_step.remote(1))
        # three workers, four rollouts each: i1 wins everywhere, i2 loses everywhere, i3 mixed
        batches = [[("i1", f"GOODX w{k}", "train"), ("i2", f"BADX w{k}", "train"), ("i3", f"GOODX w{k}", "train"),
                    ("i3", f"BADX w{k}", "train")] for k in range(3)]  # fmt: skip
        replies = [r for batch in ray.get([reward_worker.remote(name, b) for b in batches]) for r in batch]
        assert len(replies) == 12 and all(set(r) == {"score", "judge_failed", "rung"} for r in replies)
        failed = [r for r in replies if r["judge_failed"]]
        assert len(failed) == 2 and all(r["score"] == 0.0 for r in failed)
        assert all(r["rung"] == 0.0 for r in replies)  # every rollout of step 1 sees rung 0
        # one judge client for every worker: the backend's max_concurrency 2 held across all of them
        assert server.max_in_flight <= 2
        metrics = ray.get(actor.finish_step.remote(1))
        rungs = ray.get(actor.current_rungs.remote())
        # i1 won every judged rollout and i3 some (two failures cannot take all three of either):
        # each up one rung, once, though several workers reported wins; i2 lost everywhere: stays
        assert (rungs["i1"], rungs["i2"], rungs["i3"]) == (1, 0, 1)  # any-win: up one rung, once
        assert metrics["curriculum/promotions"] == 2.0 and metrics["judge/failures"] == 2.0

        # the held-out split: judged against every rung of its ladder, the curriculum untouched
        before = open_storage(load_recipe(tmp_path / "r.yaml").storage).curriculum.state("c")
        held_out = ray.get(reward_worker.remote(name, [("v1", "GOODX", "test")]))
        assert held_out[0]["rung"] == -1.0 and held_out[0]["score"] == 1.0
        ray.get(actor.begin_step.remote(2))
        metrics_2 = ray.get(actor.finish_step.remote(2))  # a step with no rollouts promotes nothing
        assert metrics_2["curriculum/promotions"] == 0
        assert open_storage(load_recipe(tmp_path / "r.yaml").storage).curriculum.state("c") == before
        usage = ray.get(actor.usage.remote())
        assert sum(row["requests"] for row in usage) >= 12
        ray.get(actor.close.remote())
        ray.kill(actor)


class FakeVerlTrainer:
    """verl 0.9.1's v1 trainer reduced to the order of its hooks (trainer_base.py): `init` loads the
    newest checkpoint (`_load_checkpoint` sets global_steps); per step, on_step_begin, step (the
    rollouts' rewards, then `_compute_advantage`), _save_checkpoint when due, on_step_end."""

    def __init__(self, save_freq: int, rollouts_of_step, checkpoints: Path, resume_at: int = 0):
        self.save_freq, self.rollouts_of_step, self.resume_at = save_freq, rollouts_of_step, resume_at
        self.config = SimpleNamespace(trainer=SimpleNamespace(default_local_dir=str(checkpoints)))
        self.global_steps, self.events = 0, []

    def _load_checkpoint(self):
        self.global_steps = self.resume_at

    def on_step_begin(self):
        self.events.append(("begin", self.global_steps))

    def step(self):
        self.events.append(("rewards", self.global_steps))
        try:
            ray.get(reward_worker.remote(actor_name("hooks"), self.rollouts_of_step(self.global_steps)))
        except ray.exceptions.RayTaskError:  # verl logs a raising compute_score and pads the group
            self.events.append(("reward raised", self.global_steps))
        self._compute_advantage(None, {})

    def _compute_advantage(self, batch, metrics):
        self.events.append(("update", self.global_steps))

    def _save_checkpoint(self):
        self.events.append(("checkpoint", self.global_steps))
        folder = Path(self.config.trainer.default_local_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "latest_checkpointed_iteration.txt").write_text(str(self.global_steps))

    def on_step_end(self):
        self.events.append(("end", self.global_steps))

    def fit(self, steps: int):
        self._load_checkpoint()
        for step in range(self.global_steps + 1, steps + 1):
            self.global_steps = step
            self.on_step_begin()
            self.step()
            if step % self.save_freq == 0:
                self._save_checkpoint()
            self.on_step_end()


def test_the_trainer_hooks_finish_each_step_once_and_snapshot_it_before_its_checkpoint(ray_session, tmp_path):
    from tasks.training.verl_hooks import CurriculumHooks

    class Trainer(CurriculumHooks, FakeVerlTrainer):
        pass

    with FaultServer(reply_text=judge_reply) as server:
        spec = launch_spec(tmp_path, server)
        trainer = Trainer(save_freq=2, rollouts_of_step=lambda s: [("i1", f"GOODX s{s}", "train")],
                          checkpoints=tmp_path / "ckpt")  # fmt: skip
        trainer.reward_actor = start_reward_actor(spec, "hooks")
        trainer.fit(3)
        store = open_storage(load_recipe(tmp_path / "r.yaml").storage).curriculum
        # i1 wins every step: one rung per step, up to its top (rung 2 of 3)
        history = [(h["step"], h["rung_before"], h["rung_after"]) for h in store.history("c").to_pylist()
                   if h["instruction_id"] == "i1"]  # fmt: skip
        assert history == [(1, 0, 1), (2, 1, 2), (3, 2, 2)]
        # the checkpoint of step 2 holds step 2's promotion: snapshot after finish, before the save
        snapshot = open_storage(load_recipe(tmp_path / "r.yaml").storage).catalog.query(
            "SELECT instruction_id, rung FROM curriculum_snapshots WHERE curriculum_id = 'c' AND step = 2"
        )
        assert dict(zip(snapshot["instruction_id"], snapshot["rung"], strict=True))["i1"] == 2
        assert store.snapshot_steps("c") == [0, 2]  # the initial state, and step 2's checkpoint
        assert [e for e in trainer.events if e[1] == 2] == [
            ("begin", 2),
            ("rewards", 2),
            ("update", 2),
            ("checkpoint", 2),
            ("end", 2),
        ]
        assert trainer.curriculum_metrics["curriculum/promotions"] == 0.0  # step 3: already at the top
        ray.get(trainer.reward_actor.close.remote())
        ray.kill(trainer.reward_actor)


def test_a_judge_that_stops_answering_ends_the_run_with_a_checkpoint_and_the_run_resumes_there(
    ray_session, tmp_path
):
    """Step 3's judge is down (the endpoint's breaker opens): no update for step 3; step 2 (the last
    finished one) is checkpointed with its snapshot, unless on disk already, and the run stops. The
    next run resumes at that checkpoint: the curriculum goes back to its snapshot and the training
    log forgets the steps after it, as the TRL engine's resume does."""
    from tasks.training.verl_hooks import CurriculumHooks, JudgeStopError

    class Trainer(CurriculumHooks, FakeVerlTrainer):
        pass

    def rollouts(step):  # i1 wins steps 1 and 2; step 3's texts hit a dead judge
        return (
            [("i1", f"GOODX s{step}", "train")]
            if step < 3
            else [("i2", f"DOWNX {k}", "train") for k in range(4)]
        )

    with FaultServer(reply_text=judge_reply, triggers={"DOWNX": Fault("500")}) as server:
        spec = launch_spec(tmp_path, server, max_consecutive_failures=2)
        trainer = Trainer(save_freq=5, rollouts_of_step=rollouts, checkpoints=tmp_path / "ckpt")
        trainer.reward_actor = start_reward_actor(spec, "hooks")
        with pytest.raises(JudgeStopError, match="failed at step 3: the judge stopped answering"):
            trainer.fit(4)
        assert ("update", 3) not in trainer.events and ("checkpoint", 2) in trainer.events
        storage = open_storage(load_recipe(tmp_path / "r.yaml").storage)
        assert storage.curriculum.snapshot_steps("c") == [0, 2]
        assert storage.curriculum.state("c")["i1"] == 2  # steps 1 and 2 promoted i1, step 3 nothing
        ray.get(trainer.reward_actor.close.remote())
        ray.kill(trainer.reward_actor)

        # A later step ran past the checkpoint before the run died: the resume forgets it.
        storage.training.record_step("c", 3, [], {"reward/mean": 0.5})
        resumed = Trainer(save_freq=5, rollouts_of_step=lambda s: [("i1", f"BADX s{s}", "train")],
                          checkpoints=tmp_path / "ckpt", resume_at=2)  # fmt: skip
        resumed.reward_actor = start_reward_actor(spec, "hooks")
        resumed.fit(3)
        assert [e for e in resumed.events if e[0] == "begin"] == [("begin", 3)]
        assert sorted({s for s in storage.training.metrics("c").column("step").to_pylist()}) == [1, 2, 3]
        history = [(h["step"], h["rung_before"]) for h in storage.curriculum.history("c").to_pylist()
                   if h["instruction_id"] == "i1"]  # fmt: skip
        assert history[-1] == (3, 2)  # step 3 starts from step 2's snapshot
        assert ray.get(resumed.reward_actor.resumed_from.remote()) == 2
        ray.get(resumed.reward_actor.close.remote())
        ray.kill(resumed.reward_actor)
