"""The Writing-RL reward outside TRL: which rung each rollout is judged against, what a judge
failure becomes (nothing: None, never a loss), and the once-per-step curriculum update."""

from __future__ import annotations

import asyncio
import sys

import pytest

from configs.schema import CurriculumConfig, Decoding, JudgeConfig, RewardConfig, StorageConfig
from storage import open_storage
from tasks.curriculum import substitute_retired
from tasks.llm.base import Completion, Usage
from tasks.training.data import Rung, TrainingItem
from tasks.training.rank_reward import RankReward
from tasks.training.ranks import Ranks
from tasks.training.reward import Rollout, WritingRLReward
from tasks.training.reward_service import RewardService
from tasks.training.trainer import retired_rows


class VerdictJudge:
    """A pairwise judge that answers from the policy's text: GOODX wins, MEHX ties, FAILX is an
    API failure, anything else loses. Records which reference each call saw."""

    backend_name, model = "fake", "judge"

    def __init__(self):
        self.references = []

    def identity(self):
        return {"backend": "fake"}

    async def chat(self, messages, params: Decoding, *, sample_index=0):
        prompt = messages[-1]["content"]
        # "sibling": no ladder reference in the prompt (curriculum.top 'group': another rollout).
        self.references.append(next((r for r in ("ref-0", "ref-1", "ref-2") if r in prompt), "sibling"))
        policy = prompt.split("<<<RESPONSE B", 1)[-1]  # the policy is B: its section, to the end
        if "FAILX" in policy:
            return Completion.failure("HTTP 503 after 6 retries")
        letter = "B" if "GOODX" in policy else ("C" if "MEHX" in policy else "A")
        return Completion(text=f"Reasoning.\n[[{letter}]]", finish_reason="stop", usage=Usage(50, 5))


def _items():
    rungs = tuple(
        Rung(g, s, f"ref-{i} text") for i, (g, s) in enumerate([("policy", 3.0), ("x", 5.0), ("y", 7.0)])
    )
    return {
        "i1": TrainingItem("i1", "Write a poem.", (), None, rungs),
        "i2": TrainingItem("i2", "Write a story.", (), None, rungs),
    }


def _reward(tmp_path, curriculum=None, reward=None):
    curriculum, reward = curriculum or CurriculumConfig(), reward or RewardConfig()
    storage = open_storage(StorageConfig(root=tmp_path / "store"))
    items = _items()
    storage.curriculum.create("c", {iid: it.n_rungs for iid, it in items.items()})
    judge = JudgeConfig(backend="fake", model="judge", max_parse_retries=0)
    client = VerdictJudge()
    reward = WritingRLReward(client=client, judge=judge, reward=reward, curriculum=curriculum, items=items,
                             store=storage.curriculum, curriculum_id="c")  # fmt: skip
    return reward, client, storage


def _trl_step(reward, step, texts):
    """A step as the TRL engine runs it: one reward call with the step's rollouts."""
    results = asyncio.run(reward.score(step, [Rollout(iid, i, t) for i, (iid, t) in enumerate(texts)]))
    judged, promotions = reward.finish_step(step)
    return [r.reward for r in results], judged, promotions


def _verl_step(reward, step, texts):
    """A step as the verl engine runs it: the service told the step begins, one concurrent call per
    rollout (verl's reward workers), then the step's end."""
    service = RewardService(reward)
    service.begin_step(step)

    async def each():
        return await asyncio.gather(*(service.score(iid, text) for iid, text in texts))

    replies = asyncio.run(each())
    finished = service.finish_step(step)
    return [None if r["judge_failed"] else r["score"] for r in replies], finished.judged, finished.promotions


_step = _trl_step


@pytest.fixture(params=["trl", "verl"])
def engine(request, monkeypatch):
    """The curriculum tests run on both engines' calling conventions: one implementation."""
    monkeypatch.setattr(sys.modules[__name__], "_step", _trl_step if request.param == "trl" else _verl_step)
    return request.param


@pytest.mark.usefixtures("engine")
def test_a_judge_failure_is_none_never_a_loss_and_never_promotes(tmp_path):
    reward, _, storage = _reward(tmp_path)
    rewards, judged, promotions = _step(
        reward, 1, [("i1", "FAILX"), ("i1", "FAILX"), ("i2", "BADX"), ("i2", "FAILX")]
    )
    assert rewards == [None, None, 0.0, None]
    assert [j.error is not None for j in judged] == [True, True, False, True]
    assert promotions == [] and storage.curriculum.state("c") == {"i1": 0, "i2": 0}
    history = {h["instruction_id"]: h for h in storage.curriculum.history("c").to_pylist()}
    assert (history["i1"]["wins"], history["i1"]["losses"], history["i1"]["failures"]) == (0, 0, 2)
    assert (history["i2"]["losses"], history["i2"]["failures"]) == (1, 1)


@pytest.mark.usefixtures("engine")
def test_one_rung_per_step_and_every_rollout_of_a_step_sees_the_same_rung(tmp_path):
    reward, client, storage = _reward(tmp_path)
    rewards, _, promotions = _step(
        reward, 1, [("i1", "GOODX"), ("i1", "GOODX"), ("i2", "MEHX"), ("i2", "BADX")]
    )
    assert rewards == [1.0, 1.0, 0.5, 0.0]
    assert [(p.instruction_id, p.rung_before, p.rung_after) for p in promotions] == [("i1", 0, 1)]
    assert client.references == ["ref-0"] * 4  # all judged against rung 0: the state when generated
    client.references.clear()
    _step(reward, 2, [("i1", "GOODX"), ("i2", "GOODX")])
    assert client.references == ["ref-1", "ref-0"]
    _step(reward, 3, [("i1", "GOODX"), ("i2", "GOODX")])
    _step(reward, 4, [("i1", "GOODX"), ("i2", "GOODX")])
    assert storage.curriculum.state("c") == {"i1": 2, "i2": 2}  # the top rung stays the top


@pytest.mark.usefixtures("engine")
def test_the_rungs_kept_in_memory_follow_promotions_and_restores_and_match_the_store(tmp_path, monkeypatch):
    reward, client, storage = _reward(tmp_path)
    _step(reward, 1, [("i1", "GOODX"), ("i2", "BADX")])
    storage.curriculum.snapshot("c", 1)
    _step(reward, 2, [("i1", "GOODX"), ("i2", "GOODX")])
    assert reward.current_rungs() == storage.curriculum.state("c") == {"i1": 2, "i2": 1}
    # A step reads no rung from the store: one transaction per step.
    monkeypatch.setattr(type(storage.curriculum), "state", lambda *a, **k: pytest.fail("store read"))
    _step(reward, 3, [("i2", "GOODX")])
    monkeypatch.undo()
    assert reward.current_rungs() == storage.curriculum.state("c") == {"i1": 2, "i2": 2}
    # Back to the checkpoint of step 1: the next step is judged against the restored rungs.
    assert reward.restore(1) == {"i1": 1, "i2": 0}
    client.references.clear()
    _step(reward, 2, [("i1", "BADX"), ("i2", "BADX")])
    assert client.references == ["ref-1", "ref-0"]
    assert reward.current_rungs() == storage.curriculum.state("c") == {"i1": 1, "i2": 0}


def test_the_trl_adapter_labels_the_step_being_trained_and_returns_none_for_failures(tmp_path):
    class State:
        global_step = 4  # TRL's counter before the step: rollouts belong to step 5

    reward, _, _ = _reward(tmp_path)
    logged = {}
    fn = RankReward(Ranks(), reward).as_trl_reward()  # one process: rank 0 of 1
    out = asyncio.run(fn(prompts=[[], []], completions=[[{"role": "assistant", "content": "GOODX"}],
                                                      [{"role": "assistant", "content": "FAILX"}]],
                         instruction_id=["i1", "i2"], trainer_state=State(), log_metric=logged.__setitem__))  # fmt: skip
    assert out == [1.0, None]
    assert logged["judge/failures"] == 1.0 and logged["judge/win_rate"] == 1.0
    assert reward.step_outcomes(5) and not reward.step_outcomes(4)


@pytest.mark.parametrize(
    "curriculum,expected",
    [(CurriculumConfig(schedule="static", static_rung="best"), {"ref-2"}),
     (CurriculumConfig(schedule="static", static_rung=1), {"ref-1"}),
     (CurriculumConfig(schedule="static", static_rung="self"), {"ref-0"}),
     (CurriculumConfig(schedule="random"), {"ref-1", "ref-2"}),
     (CurriculumConfig(schedule="static", static_generator="y"), {"ref-2"}),  # section 6.3: by name
     # section 6.4: the staged static curriculum, one rung up at steps 2 and 3
     (CurriculumConfig(schedule="staged", stage_steps=(2, 3)), ["ref-0"] * 8 + ["ref-1"] * 8 + ["ref-2"] * 8)],
)  # fmt: skip
@pytest.mark.usefixtures("engine")
def test_ablation_schedules_judge_against_their_rung_and_never_promote(tmp_path, curriculum, expected):
    reward, client, storage = _reward(tmp_path, curriculum=curriculum)
    for step in (1, 2, 3):
        _, _, promotions = _step(reward, step, [("i1", "GOODX")] * 4 + [("i2", "GOODX")] * 4)
        assert promotions == []
    seen = client.references if isinstance(expected, list) else set(client.references)
    assert seen == expected and storage.curriculum.state("c") == {"i1": 0, "i2": 0}


def test_auxiliary_rewards_are_combined_but_never_rescue_a_failure(tmp_path):
    reward, _, _ = _reward(tmp_path, reward=RewardConfig(format_weight=1.0))
    results = asyncio.run(
        reward.score(1, [Rollout("i1", 0, "GOODX " + "word " * 3), Rollout("i1", 1, "FAILX")])
    )
    assert results[0].components["format"] is not None and results[0].reward is not None
    assert results[0].reward == pytest.approx((1.0 + results[0].components["format"]) / 2)
    assert results[1].reward is None and results[1].components.get("format") is not None


class PointwiseJudge:
    """A JSON pointwise judge: 7/10 for every criterion, or an API failure for FAILX."""

    backend_name, model = "fake", "judge"

    def identity(self):
        return {"backend": "fake"}

    async def chat(self, messages, params, *, sample_index=0):
        if "FAILX" in messages[-1]["content"]:
            return Completion.failure("HTTP 500")
        return Completion(text='{"score": 7, "reason": "Solid."}', finish_reason="stop", usage=Usage(40, 8))


def test_the_pointwise_ablation_rewards_score_over_ten_and_keeps_failures_none(tmp_path):
    storage = open_storage(StorageConfig(root=tmp_path / "store"))
    items = _items()
    storage.curriculum.create("c", {iid: it.n_rungs for iid, it in items.items()})
    reward = WritingRLReward(
        client=PointwiseJudge(), judge=JudgeConfig(backend="fake", model="judge", max_parse_retries=0),
        reward=RewardConfig(kind="pointwise"), curriculum=CurriculumConfig(), items=items,
        store=storage.curriculum, curriculum_id="c",
    )  # fmt: skip
    results = asyncio.run(reward.score(1, [Rollout("i1", 0, "A poem."), Rollout("i2", 1, "FAILX")]))
    assert results[0].reward == pytest.approx(0.7) and results[0].verdict == "score"
    assert results[0].input_tokens == 40 and results[0].llm_calls == 1  # one holistic criterion
    assert results[1].reward is None and results[1].error


def test_think_then_write_rollouts_are_judged_on_their_visible_answer(tmp_path):
    reward, client, _ = _reward(tmp_path)
    reward.think_format = True
    prompts = []
    real_chat = client.chat

    async def chat(messages, params, *, sample_index=0):
        prompts.append(messages[-1]["content"])
        return await real_chat(messages, params, sample_index=sample_index)

    client.chat = chat
    text = "<think>I will write GOODX but must not show it.</think>BADX final answer"
    (result,) = asyncio.run(reward.score(1, [Rollout("i1", 0, text)]))
    assert result.reward == 0.0  # judged on "BADX final answer", not on the hidden GOODX
    assert "BADX final answer" in prompts[0] and "I will write" not in prompts[0]


def test_the_training_prompts_are_the_policy_strategys_messages():
    from configs.schema import GeneratorConfig
    from tasks.training.data import train_dataset

    items = _items()
    direct = GeneratorConfig(name="policy", role="policy", backend="b", model="m", system_prompt="Be vivid.")
    rows = train_dataset(items, direct).to_list()
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be vivid."},
                                 {"role": "user", "content": "Write a poem."}]  # fmt: skip
    think = direct.model_copy(update={"strategy": "think-then-write", "system_prompt": None})
    (system, user) = train_dataset(items, think).to_list()[0]["prompt"]
    assert (
        system["role"] == "system" and "<think>" in system["content"] and user["content"] == "Write a poem."
    )
    with pytest.raises(ValueError, match=r"agentwrite.*cannot be the policy"):
        train_dataset(items, direct.model_copy(update={"strategy": "agentwrite"}))


def test_prompts_over_the_budget_are_cut_on_the_left_inside_the_instruction(tiny_model_dir):
    from transformers import AutoTokenizer

    from configs.schema import GeneratorConfig
    from tasks.training.data import prompt_tokens, train_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = GeneratorConfig(name="policy", role="policy", backend="b", model="m", system_prompt="Be vivid.")
    long_prompt = " ".join(f"word{i}" for i in range(400)) + " Now write the ending."
    items = {**_items(), "long": TrainingItem("long", long_prompt, (), None, _items()["i1"].rungs)}
    full = train_dataset(items, policy).to_list()
    budget = 120
    assert prompt_tokens(full[2]["prompt"], tokenizer) > budget
    rows = {
        r["instruction_id"]: r["prompt"] for r in train_dataset(items, policy, tokenizer, budget).to_list()
    }
    assert rows["i1"] == full[0]["prompt"]  # within the budget: untouched
    (system, user) = rows["long"]
    assert prompt_tokens(rows["long"], tokenizer) <= budget
    assert prompt_tokens(rows["long"], tokenizer) >= budget - 2  # cut to the budget, not beyond
    assert system == {"role": "system", "content": "Be vivid."}  # the template and system prompt stay
    assert user["content"].endswith("Now write the ending.") and "word0 " not in user["content"]
    with pytest.raises(ValueError, match=r"max_prompt_tokens: 8 leaves no room for instruction 'i1'"):
        train_dataset(items, policy, tokenizer, 8)


# --- validation on the held-out ladders ------------------------------------------------------


class RefusingStore:
    """A curriculum store that fails the test on any use: validation must never touch one."""

    def __getattr__(self, name):
        pytest.fail(f"validation touched the curriculum store ({name})")


class JudgeByReference(VerdictJudge):
    """GOODX beats ref-0 and ref-1 but loses to ref-2; FAILX fails against ref-1 only."""

    async def chat(self, messages, params: Decoding, *, sample_index=0):
        prompt = messages[-1]["content"]
        ref = next(r for r in ("ref-0", "ref-1", "ref-2") if r in prompt)
        self.references.append(ref)
        if "FAILX" in prompt and ref == "ref-1":
            return Completion.failure("HTTP 503 after 6 retries")
        win = ("GOODX" in prompt or "FAILX" in prompt) and ref != "ref-2"
        return Completion(
            text=f"Reasoning.\n[[{'B' if win else 'A'}]]", finish_reason="stop", usage=Usage(50, 5)
        )


def test_validation_judges_every_rung_of_the_held_out_ladder_and_never_touches_the_curriculum(tmp_path):
    rungs = tuple(
        Rung(g, s, f"ref-{i} text") for i, (g, s) in enumerate([("x", 3.0), ("policy", 5.0), ("y", 7.0)])
    )
    held_out = {"v1": TrainingItem("v1", "Write a letter.", (), None, rungs, policy_rung=1)}
    judge, client = JudgeConfig(backend="fake", model="judge", max_parse_retries=0), JudgeByReference()
    reward = WritingRLReward(
        client=client, judge=judge, reward=RewardConfig(), curriculum=CurriculumConfig(), items=_items(),
        store=RefusingStore(), curriculum_id="c", validation_items=held_out,
    )  # fmt: skip
    rewards, metrics = asyncio.run(reward.validate([Rollout("v1", 0, "GOODX"), Rollout("v1", 1, "FAILX")]))
    assert sorted(client.references) == ["ref-0", "ref-0", "ref-1", "ref-1", "ref-2", "ref-2"]
    assert rewards == [pytest.approx(2 / 3), 0.5]  # FAILX: its failed judgment counts neither way
    assert metrics == {
        "validation/failures": 1.0,
        "validation/reward": pytest.approx(3 / 5),
        "validation/reward_vs_initial": 1.0,  # rung 1, the policy's own initial response
        "validation/reward_vs_top": 0.0,
    }
    assert reward._pending == {} and reward._rungs is None  # nothing queued for a step, no rung read
    with pytest.raises(ValueError, match="'i1' is not a held-out ladder"):
        asyncio.run(reward.validate([Rollout("i1", 0, "GOODX")]))


def test_a_validation_batch_through_the_trl_reward_leaves_the_curriculum_as_it_was(tmp_path):
    reward, _, storage = _reward(tmp_path)
    reward.validation_items = {"v1": TrainingItem("v1", "Write a letter.", (), None, _items()["i1"].rungs)}
    rank_reward = RankReward(Ranks(), reward)
    rank_reward.start(None, lambda step: None)
    before = (storage.curriculum.state("c"), storage.curriculum.history("c").num_rows)
    logged = {}
    trl_reward = rank_reward.as_trl_reward()
    rewards = asyncio.run(
        trl_reward(prompts=["p"], completions=["GOODX"], instruction_id=["v1"], validation=[True],
                   log_metric=logged.__setitem__)
    )  # fmt: skip
    assert rewards == [1.0] and logged["validation/reward"] == 1.0
    judged, promotions = rank_reward.finish_step(1)  # the step that follows: nothing of validation
    assert judged == [] and promotions == []
    assert (storage.curriculum.state("c"), storage.curriculum.history("c").num_rows) == before


# -- the top of the ladder (curriculum.top) ------------------------------------------------------


def _climb_to_the_top(reward, steps=(1, 2, 3)):
    """i1 wins every step: rung 0 -> 1 -> 2, then beats its top rung (2) at the third step."""
    for step in steps:
        _step(reward, step, [("i1", "GOODX")])


@pytest.mark.usefixtures("engine")
def test_stay_records_when_an_instruction_beats_its_top_rung_and_keeps_judging_it_there(tmp_path):
    reward, client, storage = _reward(tmp_path)  # top: stay, the paper
    _climb_to_the_top(reward)
    assert reward.topped() == storage.curriculum.topped("c") == {"i1": 3}
    client.references.clear()
    _step(reward, 4, [("i1", "GOODX"), ("i2", "BADX")])
    assert client.references == ["ref-2", "ref-0"]  # still its top rung
    assert storage.curriculum.topped("c") == {"i1": 3}  # reached once, at step 3
    history = storage.curriculum.history("c").to_pylist()
    assert [(h["step"], h["instruction_id"]) for h in history if h["reached_top"]] == [(3, "i1")]
    assert storage.curriculum.state("c") == {"i1": 2, "i2": 0}


def test_group_judges_a_topped_instruction_against_the_next_rollout_of_its_group(tmp_path):
    reward, client, storage = _reward(tmp_path, CurriculumConfig(top="group"))
    _climb_to_the_top(reward)
    client.references.clear()
    rollouts = [("i1", "GOODX a"), ("i1", "BADX b"), ("i1", "BADX c"), ("i2", "GOODX d")]
    rewards, judged, promotions = _step(reward, 4, rollouts)
    # a vs b (a wins), b vs c (b, the policy, loses), c vs a (loses); i2 against its rung 0.
    assert rewards == [1.0, 0.0, 0.0, 1.0]
    assert sorted(client.references) == ["ref-0", "sibling", "sibling", "sibling"]
    assert [j.rung for j in judged] == [None, None, None, 0]
    assert [(p.instruction_id, p.rung_after) for p in promotions] == [("i2", 1)]
    step4 = {h["instruction_id"]: h for h in storage.curriculum.history("c").to_pylist() if h["step"] == 4}
    assert (
        step4["i1"]["rung_judged"] is None and not step4["i1"]["promoted"] and not step4["i1"]["reached_top"]
    )
    assert (step4["i1"]["wins"], step4["i1"]["losses"]) == (1, 2)
    # A single rollout in the call has no sibling: its top rung.
    client.references.clear()
    _step(reward, 5, [("i1", "GOODX")])
    assert client.references == ["ref-2"]


@pytest.mark.usefixtures("engine")
def test_retire_draws_a_replacement_and_resumes_with_the_checkpoints_retirements(tmp_path):
    reward, _, storage = _reward(tmp_path, CurriculumConfig(top="retire"))
    _climb_to_the_top(reward, (1, 2))
    storage.curriculum.snapshot("c", 2)
    _step(reward, 3, [("i1", "GOODX")])
    storage.curriculum.snapshot("c", 3)
    assert reward.topped() == {"i1": 3}
    ids = ["i1", "i1", "i2", "i2"]
    assert substitute_retired(ids, reward.topped(), reward.items, seed=0, step=4) == ["i2"] * 4
    # Nothing left in play: the batch is unchanged (judged against the top rung, as under stay).
    assert substitute_retired(ids, {"i1", "i2"}, reward.items, seed=0, step=4) == ids
    # Resume from checkpoint 3: still retired. From checkpoint 2: not yet, and the history's
    # reached_top row of step 3 is gone with the lost tail.
    assert reward.restore(3) and reward.topped() == storage.curriculum.topped("c") == {"i1": 3}
    reward.restore(2)
    assert reward.topped() == storage.curriculum.topped("c") == {}
    assert not any(h["reached_top"] for h in storage.curriculum.history("c").to_pylist())
    _step(reward, 3, [("i1", "BADX")])
    assert reward.topped() == {} and storage.curriculum.state("c")["i1"] == 2


def test_the_trainer_replaces_a_retired_instructions_rows_with_the_drawn_instructions_rows():
    import datasets

    dataset = datasets.Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": f"Write {i}."}], "instruction_id": i}
            for i in ("i1", "i2", "i3")
        ]
    )

    class Ranked:  # a RankReward's view on any rank: the retired instructions
        def __init__(self, topped):
            self.topped = lambda: topped

    retire = retired_rows(Ranked({"i1": 3}), dataset, seed=0, updates_per_step=1)
    rows = [dataset[0], dataset[0], dataset[1]]
    (drawn,) = substitute_retired(["i1"], {"i1"}, ["i1", "i2", "i3"], seed=0, step=4)  # optimizer step 3
    out = retire(rows, 3)
    assert drawn != "i1" and [r["instruction_id"] for r in out] == [drawn, drawn, "i2"]
    assert out[0] == dataset[["i1", "i2", "i3"].index(drawn)]  # the replacement's own prompt
    untouched = retired_rows(Ranked({}), dataset, seed=0, updates_per_step=1)
    assert untouched(rows, 3) is rows
