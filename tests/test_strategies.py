"""Generation strategies on a scripted fake client: messages, plan parsing, budgets, failures."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from configs.loading import ConfigError
from configs.schema import STRATEGIES as SCHEMA_STRATEGIES
from configs.schema import Decoding, GeneratorConfig
from tasks.generation import (
    STRATEGIES,
    AgentWriteStrategy,
    PlanSection,
    Strategy,
    configured_strategy,
    parse_plan,
)
from tasks.instructions.schema import Instruction
from tasks.llm.base import Completion, EndpointFailingError, LLMClient
from tasks.text import count_words, detect_language, prompt_language, split_think
from tests.support.fake_llm import FakeCall, FakeLLM, fail

EN = Instruction(
    id="en-1",
    prompt="Write an essay about lighthouses and the people who kept them.",
    source="test",
    language="en",
    required_length=1000,
)
ZH = Instruction(
    id="zh-1", prompt="写一篇关于灯塔守护人的散文。", source="test", language="zh", required_length=1200
)
GEN = GeneratorConfig(
    name="writer",
    backend="fake",
    model="fake-model",
    system_prompt="You are a careful writer.",
    decoding=Decoding(temperature=0.7, max_tokens=4000, seed=5),
)

EN_PLAN = """\
Here is the plan:
Paragraph 1 - Main Point: The first lighthouses and why they were built - Word Count: 300 words
Paragraph 2 - Main Point: A keeper's daily routine - Word Count: 400 words
Paragraph 3 - Main Point: Automation and what was lost - Word Count: 300 words
"""
ZH_PLAN = """\
段落1 - 主要内容：灯塔的由来 - 字数要求：400字
段落2 - 主要内容：守护人的一天 - 字数要求：500字
段落3 - 主要内容：自动化之后的灯塔 - 字数要求：300字
"""


def run(coro):
    return asyncio.run(coro)


def generate(strategy: str, client: LLMClient, instruction=EN, generator=GEN, sample_index=0):
    return run(STRATEGIES[strategy].generate(client, instruction, generator, sample_index=sample_index))


def writer(plan: str | list[str], *, section=None):
    """A script: plan replies (one, or one per plan attempt), then `section(i, words)` per section."""
    plans = [plan] if isinstance(plan, str) else list(plan)

    def reply(call: FakeCall):
        asked = re.search(r"(?:Now write section|现在请写第)\s*(\d+).*?(?:about|约)\s*(\d+)", call.user, re.S)
        if asked:
            i, words = int(asked[1]), int(asked[2])
            return section(i, words) if section else " ".join([f"s{i}w"] * words)
        return plans.pop(0) if len(plans) > 1 else plans[0]

    return reply


def user_messages(client: FakeLLM) -> list[str]:
    return [c.user for c in client.calls]


# ---------------------------------------------------------------------------------------------
# registry and fake
# ---------------------------------------------------------------------------------------------


def test_registry_matches_the_schema():
    assert tuple(sorted(STRATEGIES)) == tuple(sorted(SCHEMA_STRATEGIES))
    for name, strategy in STRATEGIES.items():
        assert isinstance(strategy, Strategy)
        assert strategy.name == name and isinstance(strategy.version, int)


def test_fake_is_an_llm_client():
    assert isinstance(FakeLLM(), LLMClient)


# ---------------------------------------------------------------------------------------------
# direct
# ---------------------------------------------------------------------------------------------


def test_direct_sends_system_and_user_and_returns_the_completion():
    client = FakeLLM(["The essay."])
    result = generate("direct", client, sample_index=2)
    assert [s.name for s in result.steps] == ["direct"]
    assert result.completion.text == "The essay." and result.ok
    (call,) = client.calls
    assert call.messages == (
        {"role": "system", "content": "You are a careful writer."},
        {"role": "user", "content": EN.prompt},
    )
    assert call.sample_index == 2 and call.params.seed == 7  # seed + sample_index, like chat_many
    assert call.params.max_tokens == 4000


def test_direct_without_system_prompt_sends_only_the_user_message():
    client = FakeLLM(["ok"])
    generate("direct", client, generator=GEN.model_copy(update={"system_prompt": None}))
    assert client.calls[0].messages == ({"role": "user", "content": EN.prompt},)


def test_direct_failure_passes_through():
    result = generate("direct", FakeLLM([fail("HTTP 500")]))
    assert not result.ok and result.completion.text is None and "HTTP 500" in result.completion.error


# ---------------------------------------------------------------------------------------------
# plan parsing
# ---------------------------------------------------------------------------------------------


def test_parse_longwriter_plan_in_english():
    assert parse_plan(EN_PLAN) == [
        PlanSection("The first lighthouses and why they were built", 300),
        PlanSection("A keeper's daily routine", 400),
        PlanSection("Automation and what was lost", 300),
    ]


def test_parse_chinese_plans():
    assert parse_plan(ZH_PLAN) == [
        PlanSection("灯塔的由来", 400),
        PlanSection("守护人的一天", 500),
        PlanSection("自动化之后的灯塔", 300),
    ]
    assert parse_plan("第一段：介绍背景（约500字）\n第二段：人物故事（800字左右）") == [
        PlanSection("介绍背景", 500),
        PlanSection("人物故事", 800),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "**Paragraph 1** - **Main Point**: Intro to keepers - **Word Count**: 300 words\n"
        "**Paragraph 2** - **Main Point**: Storms - **Word Count**: 1,200 words",
        "### Section 1: Intro to keepers (300 words)\n### Section 2: Storms (1200 words)",
        "1. Intro to keepers - 300 words\n2) Storms - 1200 words",
        "Paragraph 1:\n- Main Point: Intro to keepers\n- Word Count: 300 words\n\n"
        "Paragraph 2:\n- Main Point: Storms\n- Word Count: 1200 words",
        "| 1 | Intro to keepers | 300 words |\n| 2 | Storms | 1200 words |",
        "- Intro to keepers: 300 words\n- Storms: 1200 words",
        "Part 1 - Main Point: Intro to keepers - Word Count: 250-350 words\n"
        "Part 2 - Main Point: Storms - Word Count: about 1200 words",
    ],
)
def test_parse_plan_variants(text):
    assert parse_plan(text) == [PlanSection("Intro to keepers", 300), PlanSection("Storms", 1200)]


def test_item_descriptions_on_following_lines_join_the_main_point():
    plan = "Sure! Here is a plan.\n\n**1. Opening (150 words)**\nSet the scene.\n\n**2. The turn (400 words)**\nThe bakery."
    assert parse_plan(plan) == [
        PlanSection("Opening; Set the scene", 150),
        PlanSection("The turn; The bakery", 400),
    ]


def test_numbered_sub_points_without_counts_join_their_section():
    plan = (
        "Paragraph 1 - Main Point: Origins - Word Count: 300 words\n"
        "Paragraph 2 - Main Point: Daily life - Word Count: 400 words\n"
        "3. especially the night watch\n"
    )
    assert parse_plan(plan) == [
        PlanSection("Origins", 300),
        PlanSection("Daily life; especially the night watch", 400),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Lighthouses have guided ships for centuries. Their keepers lived lonely lives.",
        "Paragraph 1 - Main Point: [describe] - Word Count: [number] words",
        "Paragraph 1 - Main Point: Only one section - Word Count: 800 words",
    ],
)
def test_unparsable_plans(text):
    assert parse_plan(text) is None


# ---------------------------------------------------------------------------------------------
# agentwrite
# ---------------------------------------------------------------------------------------------


def test_agentwrite_plans_then_writes_each_section_in_order():
    client = FakeLLM(writer(EN_PLAN, section=lambda i, w: f"Section {i} text."))
    result = generate("agentwrite", client)
    assert result.ok, result.completion.error
    assert [s.name for s in result.steps] == ["plan", "section-1", "section-2", "section-3"]
    assert result.completion.text == "Section 1 text.\n\nSection 2 text.\n\nSection 3 text."
    assert result.metadata["plan_source"] == "model" and result.metadata["plan_attempts"] == 1
    assert [(p["main_point"], p["words"]) for p in result.metadata["plan"]] == [
        ("The first lighthouses and why they were built", 300),
        ("A keeper's daily routine", 400),
        ("Automation and what was lost", 300),
    ]
    assert result.metadata["plan_rescaled"] is False

    plan_call, *section_calls = client.calls
    assert plan_call.system == "You are a careful writer." and EN.prompt in plan_call.user
    assert "1000 words" in plan_call.user
    for i, call in enumerate(section_calls, start=1):
        assert call.system == "You are a careful writer."
        assert EN.prompt in call.user
        assert "Paragraph 2 - Main Point: A keeper's daily routine - Word Count: 400 words" in call.user
        assert f"Now write section {i} of 3" in call.user
        for earlier in range(1, 4):  # everything written so far, nothing from later sections
            assert (f"Section {earlier} text." in call.user) == (earlier < i)
    assert "nothing yet" in section_calls[0].user


def test_agentwrite_section_max_tokens_follow_budgets_and_are_capped():
    client = FakeLLM(writer(EN_PLAN))
    generate("agentwrite", client)
    assert [c.params.max_tokens for c in client.calls[1:]] == [
        math.ceil(w * 1.5) + 32 for w in (300, 400, 300)
    ]

    capped = FakeLLM(writer(EN_PLAN))
    small = GEN.model_copy(update={"decoding": Decoding(max_tokens=500)})
    result = generate("agentwrite", capped, generator=small)
    assert [c.params.max_tokens for c in capped.calls] == [500, 482, 500, 482]
    assert [p["max_tokens"] for p in result.metadata["plan"]] == [482, 500, 482]


def test_agentwrite_chinese_plan_and_prompts():
    client = FakeLLM(writer(ZH_PLAN, section=lambda i, w: "灯" * w))
    result = generate("agentwrite", client, instruction=ZH)
    assert result.ok and result.metadata["language"] == "zh"
    assert [p["words"] for p in result.metadata["plan"]] == [400, 500, 300]
    assert "写作任务" in client.calls[0].user and "1200字" in client.calls[0].user
    assert "现在请写第2部分（共3部分）：守护人的一天" in client.calls[2].user
    assert [c.params.max_tokens for c in client.calls[1:]] == [
        math.ceil(w * 1.2) + 32 for w in (400, 500, 300)
    ]
    assert count_words(result.completion.text) == 1200


def test_agentwrite_rescales_budgets_to_the_required_length():
    plan = "\n".join(
        f"Paragraph {i} - Main Point: Part {i} - Word Count: {w} words" for i, w in [(1, 1000), (2, 2000)]
    )
    client = FakeLLM(writer(plan))
    result = generate("agentwrite", client)  # required_length 1000, plan says 3000
    assert [p["words"] for p in result.metadata["plan"]] == [330, 670]
    assert result.metadata["plan_rescaled"] is True and result.metadata["plan_words_model"] == 3000
    assert "about 330 words" in client.calls[1].user


def test_agentwrite_default_length_when_none():
    plan = "1. Part one - 100 words\n2. Part two - 100 words"
    result = generate(
        "agentwrite", FakeLLM(writer(plan)), instruction=EN.model_copy(update={"required_length": None})
    )
    assert result.metadata["target_words"] == 800
    assert [p["words"] for p in result.metadata["plan"]] == [400, 400]


def test_agentwrite_merges_plans_beyond_sixteen_sections():
    plan = "\n".join(f"Paragraph {i} - Main Point: P{i} - Word Count: 50 words" for i in range(1, 21))
    result = generate("agentwrite", FakeLLM(writer(plan)))
    assert len(result.metadata["plan"]) == 16 and result.metadata["plan_merged_from"] == 20
    assert result.metadata["plan"][0]["main_point"] == "P1; P2"
    assert len(result.steps) == 17


def test_agentwrite_reasks_once_then_uses_the_plan():
    client = FakeLLM(writer(["I will write a lovely essay!", EN_PLAN]))
    result = generate("agentwrite", client)
    assert [s.name for s in result.steps][:2] == ["plan", "plan-retry"]
    assert result.metadata["plan_source"] == "model" and result.metadata["plan_attempts"] == 2
    retry = client.calls[1].messages
    assert retry[:2] == client.calls[0].messages
    assert retry[2] == {"role": "assistant", "content": "I will write a lovely essay!"}
    assert "could not be read as a plan" in retry[3]["content"]


def test_agentwrite_falls_back_to_an_even_split_and_records_it():
    client = FakeLLM(writer("Lighthouses are great."))
    result = generate("agentwrite", client)
    assert result.ok
    assert [s.name for s in result.steps] == ["plan", "plan-retry", "section-1", "section-2", "section-3"]
    meta = result.metadata
    assert meta["plan_source"] == "fallback" and "2 replies" in meta["fallback_reason"]
    assert [p["words"] for p in meta["plan"]] == [334, 333, 333]  # ceil(1000 / 400) sections
    assert [p["main_point"].split(":")[0] for p in meta["plan"]] == ["Opening", "Development 1", "Conclusion"]
    assert count_words(result.completion.text) == 1000


def test_strategy_options_set_agentwrite_limits_per_generator():
    generator = GEN.model_copy(update={"strategy": "agentwrite", "strategy_options": {"max_sections": 2}})
    strategy = configured_strategy(generator)
    assert strategy.max_sections == 2 and STRATEGIES["agentwrite"].max_sections == 16  # a copy
    client = FakeLLM(writer("Lighthouses are great."))  # no plan: the fallback splits 1000 words
    result = run(strategy.generate(client, EN, generator))
    assert [s.name for s in result.steps] == ["plan", "plan-retry", "section-1", "section-2"]
    assert configured_strategy(GEN.model_copy(update={"strategy": "agentwrite"})) is STRATEGIES["agentwrite"]
    no_retry = generator.model_copy(update={"strategy_options": {"max_sections": 2, "plan_retries": 0}})
    result = run(configured_strategy(no_retry).generate(FakeLLM(writer("Not a plan.")), EN, no_retry))
    assert [s.name for s in result.steps] == ["plan", "section-1", "section-2"]
    assert "1 replies" in result.metadata["fallback_reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_section": 3}, "generators[1].strategy_options.max_section: 'agentwrite' has no such option"),
        ({"max_sections": "3"}, "generators[1].strategy_options.max_sections: expected an integer"),
        (
            {"max_sections": 1},
            "generators[1].strategy_options: min_sections (2) must be at least 1 and at most",
        ),
        ({"version": 9}, "generators[1].strategy_options.version: 'agentwrite' has no such option"),
        ({"plan_retries": 2}, "generators[1].strategy_options: plan_retries must be 0 or 1, got 2"),
    ],
)
def test_bad_strategy_options_are_config_errors_naming_the_field(options, message):
    generator = GEN.model_copy(update={"strategy": "agentwrite", "strategy_options": options})
    with pytest.raises(ConfigError, match=re.escape(message)):
        configured_strategy(generator, where="generators[1]")


def test_agentwrite_failed_section_names_the_step_and_stops():
    def reply(call):
        return fail("HTTP 503") if "Now write section 2" in call.user else writer(EN_PLAN)(call)

    client = FakeLLM(reply)
    result = generate("agentwrite", client)
    assert not result.ok and result.completion.text is None
    assert result.completion.error == "agentwrite section 2/3 failed: HTTP 503"
    assert len(client.calls) == 3 and [s.name for s in result.steps][-1] == "section-2"
    assert result.metadata["plan_source"] == "model"  # what is known is kept


def test_agentwrite_failed_plan_names_the_step():
    result = generate("agentwrite", FakeLLM([fail("timeout")]))
    assert result.completion.error == "agentwrite plan failed: timeout"
    result = generate("agentwrite", FakeLLM(["not a plan", fail("timeout")]))
    assert result.completion.error == "agentwrite plan-retry failed: timeout"


def test_endpoint_failing_propagates():
    with pytest.raises(EndpointFailingError):
        generate("agentwrite", FakeLLM([EN_PLAN, EndpointFailingError("down")]))
    with pytest.raises(EndpointFailingError):
        generate("think-then-write", FakeLLM([EndpointFailingError("down")]))


def test_agentwrite_messages_are_deterministic_and_carry_sample_index():
    first, second = FakeLLM(writer(EN_PLAN)), FakeLLM(writer(EN_PLAN))
    a = generate("agentwrite", first, sample_index=3)
    b = generate("agentwrite", second, sample_index=3)
    assert first.calls == second.calls and a.completion == b.completion
    assert {c.sample_index for c in first.calls} == {3}
    assert {c.params.seed for c in first.calls} == {8}


def test_agentwrite_sums_usage_and_marks_cached_only_when_every_step_was():
    client = FakeLLM(writer(EN_PLAN), cached=True)
    result = generate("agentwrite", client)
    steps = [s.completion for s in result.steps]
    assert result.completion.usage.output_tokens == sum(c.usage.output_tokens for c in steps)
    assert result.completion.latency_s == pytest.approx(0.04) and result.completion.attempts == 4
    assert result.completion.cached

    replies = writer(EN_PLAN)

    def one_fresh(call):
        text = replies(call)
        fresh = "Now write section 3" in call.user
        return Completion(text=text, finish_reason="stop", cached=not fresh)

    assert not generate("agentwrite", FakeLLM(one_fresh)).completion.cached


def test_agentwrite_truncates_earlier_text_from_the_front():
    strategy = AgentWriteStrategy(context_chars=(("en", 300), ("zh", 100)))
    client = FakeLLM(writer(EN_PLAN))
    result = run(strategy.generate(client, EN, GEN))
    assert result.metadata["sections_truncated_context"] == [2, 3]
    last = client.calls[-1].user
    assert "[... earlier text omitted ...]" in last and "s1w" not in last and "s2w" in last
    written = last.split("<written>")[1].split("</written>")[0]
    assert len(written) < 300 + 40


def test_agentwrite_reports_length_when_a_section_hit_its_cap():
    client = FakeLLM(writer(EN_PLAN, section=lambda i, w: "word " * (w * 2)), truncate=True)
    result = generate("agentwrite", client)
    assert result.ok and result.completion.finish_reason == "length"
    assert result.metadata["sections_hit_length"] == [1, 2, 3]


def test_agentwrite_with_only_empty_sections_fails():
    result = generate("agentwrite", FakeLLM(writer(EN_PLAN, section=lambda i, w: "  ")))
    assert not result.ok and "every section came back empty" in result.completion.error
    assert result.metadata["empty_sections"] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# think-then-write
# ---------------------------------------------------------------------------------------------


def test_think_then_write_returns_the_text_after_the_think_block():
    client = FakeLLM(["<think>Plan: three parts.</think>\n\nThe essay itself."])
    result = generate("think-then-write", client, sample_index=1)
    assert result.ok and result.completion.text == "The essay itself."
    assert result.metadata["format_ok"] is True and result.metadata["think"] == "Plan: three parts."
    (call,) = client.calls
    assert call.system.startswith("You are a careful writer.\n\n") and "<think>" in call.system
    assert call.user == EN.prompt and call.sample_index == 1
    assert [s.name for s in result.steps] == ["think-write"]


def test_think_then_write_without_think_block_keeps_the_reply_and_flags_it():
    result = generate("think-then-write", FakeLLM(["Just the essay."]))
    assert result.ok and result.completion.text == "Just the essay."
    assert result.metadata["format_ok"] is False and result.metadata["think"] is None


@pytest.mark.parametrize(
    "reply",
    [
        "<think>Still thinking about the structure",
        "<think>done</think>   ",
        "<think>a</think>answer<think>more",
    ],
)
def test_think_then_write_without_an_answer_is_a_failure(reply):
    result = generate("think-then-write", FakeLLM([Completion(text=reply, finish_reason="length")]))
    assert not result.ok and result.completion.text is None
    assert "no answer after the think block" in result.completion.error


def test_split_think_variants():
    assert split_think("<think>x</think><answer>The piece.</answer>").visible == "The piece."
    no_open = split_think("reasoning here</think>The piece.")
    assert no_open.visible == "The piece." and no_open.think == "reasoning here" and no_open.format_ok
    assert split_think("").visible == "" and not split_think("").format_ok


@pytest.mark.parametrize(
    ("prompt", "detected", "prompted"),
    [
        ("Write a story.", "en", "en"),
        ("写一篇关于灯塔的散文。", "zh", "zh"),
        # The two rules differ here; each keeps its outputs (ingest data and generation messages).
        ("한국어로 에세이를 써 주세요", "en", "zh"),  # Hangul and kana count only for prompt_language
        ("写 an essay 关于 tea", "en", "zh"),  # 3 Han vs 3 words, but 3/13 characters are CJK
        ("Internationalization 国际化", "zh", "en"),  # 3 Han vs 1 word, but 3/23 characters
    ],
)
def test_the_two_language_rules_keep_their_outputs(prompt, detected, prompted):
    assert detect_language(prompt) == detected
    assert prompt_language(Instruction(id="x", prompt=prompt, source="test")) == prompted


def test_think_then_write_uses_chinese_instructions_for_chinese_prompts():
    client = FakeLLM(["<think>想一想</think>正文。"])
    result = generate("think-then-write", client, instruction=ZH.model_copy(update={"language": None}))
    assert result.completion.text == "正文。" and "读者只能看到" in client.calls[0].system


# ---------------------------------------------------------------------------------------------
# the real embedded model (slow)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_agentwrite_on_the_embedded_model_writes_longer_than_direct(caplog, embedded_model_cache):
    """SmolLM2-135M on CPU, greedy, max_tokens 128, one 800-word instruction (~45 s on 2 cores)."""
    import logging

    from configs.schema import DataConfig, Recipe
    from tasks.instructions import load_instructions
    from tasks.llm.registry import create_client

    cache = embedded_model_cache
    instruction = next(i for i in load_instructions(DataConfig()) if i.id == "sample-002")
    recipe = Recipe.model_validate(
        {
            "name": "strategies-slow",
            "storage": {"model_cache": str(cache)},
            "backends": {"local": {"kind": "transformers", "device": "cpu", "dtype": "float32"}},
            "generators": [
                {
                    "name": "policy",
                    "role": "policy",
                    "backend": "local",
                    "model": "embedded:smollm2-135m-instruct",
                    "decoding": {"temperature": 0.0, "max_tokens": 128, "seed": 0},
                }
            ],
        }
    )
    generator = recipe.policy

    async def go():
        client = create_client(recipe, "local", generator.model)
        try:
            direct = await STRATEGIES["direct"].generate(client, instruction, generator)
            agent = await STRATEGIES["agentwrite"].generate(client, instruction, generator)
            return direct, agent
        finally:
            await client.aclose()

    caplog.set_level(logging.INFO, logger="tasks.generation")
    direct, agent = run(go())
    assert direct.ok, direct.completion.error
    assert agent.ok, agent.completion.error
    meta = agent.metadata
    direct_words, agent_words = count_words(direct.completion.text), count_words(agent.completion.text)
    print(
        f"\ndirect: {direct_words} words ({direct.completion.finish_reason}); agentwrite: {agent_words} words "
        f"in {len(meta['plan'])} sections, plan {meta['plan_source']} after {meta['plan_attempts']} "
        f"attempt(s), section words {meta['section_words']}, budgets {[p['words'] for p in meta['plan']]}"
    )
    assert len(agent.steps) >= 3 and meta["plan_source"] in ("model", "fallback")
    assert agent_words > direct_words
