"""What a recipe will spend before it runs: LLM calls, tokens and cost per stage (`wrl config cost`).

Per stage and model, the forecast counts the calls the stage makes and estimates their tokens:

- **Calls** follow each stage's own structure: a generator's strategy (direct and think-then-write:
  one call; AgentWrite: a plan, then the sections its even split would give), one pointwise call
  per (response, criterion) plus the criteria writer, the reward's orders per rollout for every RL
  step (and the validation judgments every `eval_steps`), and per benchmark item the candidate's
  generation and the questions its suite's judge form asks in the judge's mode
  (`BenchmarkSuite.judge_form`, `tasks.judging.judgment.questions_for`), so a new benchmark or
  judge mode is counted without touching this module. Re-asks of unparsable replies and retries
  are not forecast (they are failures' costs, not the plan's).
- **Input tokens** are the real prompts' characters / 4 (`tasks.llm.limits.CHARS_PER_TOKEN`, the
  rate limiter's estimate): the judge prompts are built with a stand-in response of the estimated
  length, so the templates count as they are.
- **Output tokens** are each call's budget (`max_tokens`, an upper bound: a json judge's reply is
  usually far shorter than its 1,024), or, when the store already holds responses of that model in
  that stage, their measured mean (`basis: measured`). A logprob probe writes no tokens.
- **Cost** uses the recipe's `prices` (USD per million tokens); a model without a price has none.
  Calls that go through a provider batch (a `batch: true` backend in generate, score or evaluate)
  cost the price's `batch_discount` of it.
- **What the store already holds is subtracted at the stage level**: a stage whose cache key is
  already answered (given the cached outputs of the stages before it) costs nothing, which is what
  a re-run after, say, a judge change pays: generate is free, score and what follows are not.
  Evaluation pairs are looked up the same way once their candidates resolve.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from configs.loading import ConfigError
from configs.schema import GeneratorConfig, JudgeConfig, Recipe
from storage import DatasetRef, Storage
from tasks.generation import configured_strategy, prompts
from tasks.generation.agentwrite import AgentWriteStrategy, section_count
from tasks.instructions import Instruction, load_instructions
from tasks.judging.judgment import Ask, JudgeForm, Probe, questions_for
from tasks.judging.pointwise import HOLISTIC, POINTWISE_PROMPTS, CriterionForm
from tasks.llm.base import Message
from tasks.llm.limits import CHARS_PER_TOKEN
from tasks.rewards.pairwise import PAIRWISE_PROMPTS, POLICY_POSITIONS, VerdictForm
from tasks.stages import STAGE_ORDER, generate, ingest, order, score, select, sft, train
from tasks.stages import evaluate as evaluate_stage
from tasks.stages.runner import StageSpec, batches_on, stage_keys
from tasks.text import prompt_language

SPECS: dict[str, StageSpec] = {
    "ingest": ingest.SPEC, "sft_writer": sft.WRITER_SPEC, "generate": generate.SPEC, "score": score.SPEC,
    "select": select.SPEC, "order": order.SPEC, "sft_reference": sft.REFERENCE_SPEC, "train": train.SPEC,
}  # fmt: skip
assert set(SPECS) == set(STAGE_ORDER)


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def message_tokens(messages: Iterable[Message]) -> int:
    return sum(tokens(m["content"]) for m in messages)


def stand_in(n_tokens: int) -> str:
    """A response of about `n_tokens` tokens under the forecast's own estimate."""
    return "word" * max(0, n_tokens)


@dataclass
class Line:
    """The calls of one stage to one model for one purpose."""

    stage: str  # generate, score, train, evaluate
    what: str  # e.g. "policy (direct)", "judge", "base on writingbench: judge"
    backend: str
    model: str
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    basis: str = "budget"  # how output lengths were estimated: budget (max_tokens) or measured
    cached: bool = False  # the stage's result is already in the store: nothing is paid
    per_step: Line | None = None  # train: one RL step's share

    def add(self, calls: int, input_tokens: int, output_tokens: int) -> None:
        self.calls += calls
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens

    def batched(self, recipe: Recipe) -> bool:
        """Whether these calls go through the provider's batch API (tasks/llm/batch.py)."""
        # The evaluate pairs' specs are made per pair (evaluate.spec_for): SPECS has no entry for them.
        stage_batches = evaluate_stage.BATCHES if self.stage == "evaluate" else SPECS[self.stage].batches
        return batches_on(stage_batches, recipe, self.backend)

    def cost(self, recipe: Recipe) -> float | None:
        price = recipe.prices.get(self.model)
        if price is None:
            return None
        if self.cached:
            return 0.0
        return price.cost(self.input_tokens, self.output_tokens, batched=self.batched(recipe))


@dataclass
class Forecast:
    recipe: Recipe
    lines: list[Line] = field(default_factory=list)

    def payable(self) -> list[Line]:
        return [line for line in self.lines if not line.cached]

    def totals(self) -> dict[str, Any]:
        lines = self.payable()
        costs = [line.cost(self.recipe) for line in lines]
        priced = [c for c in costs if c is not None]
        return {
            "calls": sum(line.calls for line in lines),
            "input_tokens": sum(line.input_tokens for line in lines),
            "output_tokens": sum(line.output_tokens for line in lines),
            "cost_usd": sum(priced) if priced else None,
            "unpriced_models": sorted(
                {line.model for line, c in zip(lines, costs, strict=True) if c is None}
            ),
        }

    def by_stage(self) -> dict[str, dict[str, Any]]:
        """Per stage still to pay: calls, tokens and cost (None when no model of it has a price)."""
        out: dict[str, dict[str, Any]] = {}
        for line in self.payable():
            row = out.setdefault(
                line.stage, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": None}
            )
            row["calls"] += line.calls
            row["input_tokens"] += line.input_tokens
            row["output_tokens"] += line.output_tokens
            cost = line.cost(self.recipe)
            if cost is not None:
                row["cost_usd"] = (row["cost_usd"] or 0.0) + cost
        return out


# ---------------------------------------------------------------------------------------------
# Measured lengths and the stage cache
# ---------------------------------------------------------------------------------------------


def measured_output_tokens(storage: Storage | None) -> dict[tuple[str, str], float]:
    """(stage, model) -> mean output tokens of the responses the store holds (chat calls only)."""
    if storage is None:
        return {}
    with storage.catalog.connect("forecast: measured lengths") as con:
        rows = con.execute(
            "SELECT s.stage, r.model, avg(r.output_tokens) FROM llm_responses r "
            "JOIN stage_runs s ON s.stage_run_id = r.stage_run_id WHERE r.output_tokens > 0 "
            "GROUP BY s.stage, r.model"
        ).fetchall()
    return {(stage, model): float(mean) for stage, model, mean in rows}


def cached_stages(recipe: Recipe, storage: Storage | None) -> set[str]:
    """The stages whose result the store already holds, walking the DAG from ingest: a stage is
    cached when its cache key (its config and its inputs, the cached outputs before it) is."""
    if storage is None:
        return set()
    outputs: dict[str, DatasetRef] = {}
    cached = set()
    for name in STAGE_ORDER:
        spec = SPECS[name]
        if not spec.enabled(recipe):
            continue
        roles = spec.inputs_for(recipe)
        if any(role not in outputs for role in roles):
            break  # an upstream stage will compute: its outputs, and so this key, are not known
        _, key = stage_keys(spec, recipe, {role: outputs[role] for role in roles})
        hit = storage.catalog.lookup_cache(key)
        if hit is None or not all(storage.datasets.exists(ref) for ref in hit.outputs.values()):
            break
        cached.add(name)
        outputs |= hit.outputs
    return cached


# ---------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lengths:
    measured: dict[tuple[str, str], float]

    def output(self, stage: str, model: str, budget: int) -> tuple[int, str]:
        mean = self.measured.get((stage, model))
        return (round(mean), "measured") if mean is not None else (budget, "budget")


def _generation_calls(
    generator: GeneratorConfig, instruction: Instruction, output: int
) -> list[tuple[int, int]]:
    """(input tokens, output tokens) of each call a generator's strategy makes for one instruction."""
    strategy = configured_strategy(generator)
    system = tokens(generator.system_prompt or "")
    prompt = system + tokens(instruction.prompt)
    if not isinstance(strategy, AgentWriteStrategy):
        return [(prompt, output)]
    # The plan's prompt and each section's, from the strategy's own templates (tasks.generation.prompts).
    lang = prompt_language(instruction)
    target = instruction.required_length or strategy.default_length
    n = section_count(target, section_words=strategy.fallback_section_words,
                      min_sections=strategy.min_sections, max_sections=strategy.max_sections)  # fmt: skip
    plan_user = strategy.plan_prompt(instruction, lang, target)
    plan = (system + tokens(plan_user), min(strategy.plan_max_tokens, generator.decoding.max_tokens))
    section_output = min(output, generator.decoding.max_tokens)
    plan_text = "\n".join(f"{i}. ({target // n} words) {stand_in(12)}" for i in range(1, n + 1))
    context = dict(strategy.context_chars)[lang] // CHARS_PER_TOKEN
    calls = [plan]
    for i in range(1, n + 1):  # each section sees the plan and the text so far (cut to context_chars)
        user = prompts.SECTION[lang].format(
            prompt=instruction.prompt, target_words=target, plan=plan_text,
            written=stand_in(min((i - 1) * section_output, context)) or prompts.NOTHING_WRITTEN[lang],
            index=i, total=n, main_point=stand_in(12), words=target // n,
        )  # fmt: skip
        calls.append((system + tokens(user), section_output))
    return calls


def _judge_calls(
    judge: JudgeConfig, form: JudgeForm[Any], output_budget: int | None = None
) -> list[tuple[int, int]]:
    """(input tokens, output tokens) of each question the judge asks for `form` in its mode."""
    calls = []
    for question in questions_for(judge.mode, form):
        if isinstance(question, Probe):
            calls.append((message_tokens(question.messages), 0))
        else:
            assert isinstance(question, Ask)
            budget = output_budget or (question.decoding or judge.decoding).max_tokens
            calls.append((message_tokens(question.messages), budget))
    return calls


def _add_calls(
    line: Line, calls: Sequence[tuple[int, int]], times: int = 1, output: int | None = None
) -> None:
    line.add(len(calls) * times, sum(i for i, _ in calls) * times,
             sum(output if output is not None and o else o for _, o in calls) * times)  # fmt: skip


def forecast(recipe: Recipe, storage: Storage | None = None) -> Forecast:
    """The recipe's forecast; with `storage`, measured lengths and what the store already holds."""
    lengths = _Lengths(measured_output_tokens(storage))
    cached = cached_stages(recipe, storage)
    result = Forecast(recipe)
    instructions = load_instructions(recipe.data)

    # generate: every generator writes every instruction.
    response_tokens: dict[str, int] = {}
    for g in recipe.generators:
        output, basis = lengths.output("generate", g.model, g.decoding.max_tokens)
        line = Line("generate", f"{g.name} ({g.strategy})", g.backend, g.model, basis=basis,
                    cached="generate" in cached)  # fmt: skip
        for instruction in instructions:
            _add_calls(line, _generation_calls(g, instruction, output))
        result.lines.append(line)
        response_tokens[g.name] = output

    # score: each response on each criterion, plus the criteria writer where there are none.
    judge = recipe.judge_for("score")
    if judge is not None:
        output, basis = lengths.output("score", judge.model, judge.decoding.max_tokens)
        line = Line("score", "judge", judge.backend, judge.model, basis=basis, cached="score" in cached)
        writer = recipe.criteria_writer
        writer_line = None if writer is None else Line(
            "score", "criteria writer", writer.backend, writer.model, cached="score" in cached
        )  # fmt: skip
        prompt = POINTWISE_PROMPTS[judge.prompt_version]
        for instruction in instructions:
            if instruction.criteria:
                criteria = list(instruction.criteria)
            elif writer is not None and writer_line is not None:
                criteria = [HOLISTIC] * writer.num_criteria  # their wording is unknown: the same length
                writer_line.add(1, tokens(instruction.prompt) + 150, writer.decoding.max_tokens)
            else:
                criteria = [HOLISTIC]
            for g in recipe.generators:
                response = stand_in(response_tokens[g.name])
                for criterion in criteria:
                    form = CriterionForm(prompt, instruction, response, criterion)
                    _add_calls(line, _judge_calls(judge, form), output=output)
        result.lines += [line] + ([writer_line] if writer_line is not None else [])

    if recipe.training is not None and judge is not None:
        result.lines.append(_train_line(recipe, instructions, response_tokens, lengths, "train" in cached))
    if recipe.evaluation is not None:
        result.lines += _evaluation_lines(recipe, storage, lengths)
    return result


def _train_line(
    recipe: Recipe, instructions: Sequence[Instruction], response_tokens: dict[str, int], lengths: _Lengths,
    cached: bool,
) -> Line:  # fmt: skip
    """The reward judge's calls: per RL step, batch_size prompts x num_generations rollouts x the
    orders of `reward.position` (pointwise: x criteria), against a reference of a typical rung's
    length; plus the validation judgments (every rung of each held-out ladder) every eval_steps."""
    training, reward = recipe.training, recipe.reward
    assert training is not None
    judge = recipe.judge_for("reward")
    assert judge is not None
    output, basis = lengths.output("train", judge.model, judge.decoding.max_tokens)
    step = Line("train", "reward judge, one RL step", judge.backend, judge.model, basis=basis, cached=cached)
    rollout = stand_in(training.max_response_tokens)
    reference = stand_in(round(sum(response_tokens.values()) / max(1, len(response_tokens))))
    typical = max(instructions, key=lambda i: len(i.prompt)) if instructions else Instruction(
        id="x", prompt="", source="forecast")  # fmt: skip
    criteria = list(typical.criteria) or [HOLISTIC]
    if reward.kind == "pairwise":
        prompt = PAIRWISE_PROMPTS[judge.prompt_version]
        per_rollout = []
        # recheck's second order is asked only after a verdict that is not a win: counted, an upper bound.
        for position in POLICY_POSITIONS[reward.position]:
            a, b = (rollout, reference) if position == "A" else (reference, rollout)
            form = VerdictForm(prompt, typical.prompt, a, b, typical.criteria, reward.tie_margin)
            per_rollout += _judge_calls(judge, form)
    else:
        pointwise = POINTWISE_PROMPTS[judge.prompt_version]
        per_rollout = [c for criterion in criteria
                       for c in _judge_calls(judge, CriterionForm(pointwise, typical, rollout, criterion))]  # fmt: skip
    rollouts = training.batch_size * training.num_generations
    _add_calls(step, per_rollout, times=rollouts, output=output)
    whole = replace(step, what="reward judge", per_step=step)
    whole.calls, whole.input_tokens, whole.output_tokens = (
        step.calls * training.max_steps, step.input_tokens * training.max_steps, step.output_tokens * training.max_steps
    )  # fmt: skip
    if training.eval_steps and recipe.ordering.validation_size and reward.kind == "pairwise":
        evaluations = training.max_steps // training.eval_steps
        rungs = len(recipe.generators)  # a ladder holds every generator's response, the policy's too
        judged = recipe.ordering.validation_size * training.num_generations * rungs
        _add_calls(whole, per_rollout, times=judged * evaluations, output=output)
    return whole


def _candidate_count(recipe: Recipe, source: str | None) -> int:
    training = recipe.training
    if source != "all" or training is None:
        return 1
    return len(range(training.save_steps, training.max_steps + 1, training.save_steps)) + int(
        training.max_steps % training.save_steps != 0
    )


def _evaluation_lines(recipe: Recipe, storage: Storage | None, lengths: _Lengths) -> list[Line]:
    """Per (candidate, benchmark): the candidate's generations and its judge's questions."""
    from tasks.evaluation.candidates import resolve_candidates
    from tasks.evaluation.registry import SUITES

    evaluation = recipe.evaluation
    assert evaluation is not None
    cached_pairs: set[tuple[str, str]] = set()
    if storage is not None:
        try:
            resolved = resolve_candidates(recipe, storage)
        except ConfigError:  # e.g. no training run yet: nothing of it can be cached either
            resolved = []
        for candidate in resolved:
            for benchmark in evaluation.benchmarks:
                _, key = stage_keys(evaluate_stage.spec_for(candidate, benchmark), recipe, {})
                if storage.catalog.lookup_cache(key) is not None:
                    cached_pairs.add((candidate.name, benchmark))
    lines = []
    policy = recipe.policy
    for c in evaluation.candidates:
        backend, model = c.backend or policy.backend, c.model or policy.model
        copies = _candidate_count(recipe, c.from_training)
        for benchmark, config in evaluation.benchmarks.items():
            suite = SUITES[benchmark]
            items = evaluate_stage.select_items(suite, config)
            cached = (c.name, benchmark) in cached_pairs
            budget = suite.generation_decoding(config, evaluation.seed).max_tokens
            output, basis = lengths.output("evaluate", model, budget)
            writer = GeneratorConfig(name="candidate", backend=backend, model=model,
                                     strategy=c.strategy if suite.uses_writing_strategy else "direct",
                                     system_prompt=c.system_prompt)  # fmt: skip
            gen = Line("evaluate", f"{c.name} on {benchmark}", backend, model, basis=basis, cached=cached)
            judge = recipe.judge_for(benchmark) if suite.needs_judge else None
            judged = None if judge is None else Line(
                "evaluate", f"{c.name} on {benchmark}: judge", judge.backend, judge.model, cached=cached)  # fmt: skip
            for item in items:
                instruction = Instruction(id=item.id, prompt=item.prompt, source=benchmark,
                                          required_length=item.required_length)  # fmt: skip
                calls = _generation_calls(writer, instruction, output)
                if suite.truncates_input:
                    limit = suite.max_input_tokens(config)  # type: ignore[attr-defined]
                    calls = [(min(i, limit), o) for i, o in calls]
                _add_calls(gen, calls, times=copies)
                form = None if judge is None else suite.judge_form(item, stand_in(output), judge)
                if judged is not None and judge is not None and form is not None:
                    _add_calls(judged, _judge_calls(judge, form), times=copies)
            lines += [gen] + ([judged] if judged is not None and judged.calls else [])
    return lines
