"""A fifth benchmark touches no module of the project: the suite below (word count against the
required length, plus one judge question: is the response on topic?) is registered into `SUITES`
by this test alone, named in a recipe without any change to configs/, and runs end to end through
the real evaluate stage (response cache, stage cache, eval_items, eval_scores, eval_results) with
fake candidate and judge clients, in both judge modes. No model is loaded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from configs.loading import ConfigError
from configs.schema import BenchmarkConfig, Decoding, JudgeConfig, Recipe
from storage import open_storage
from tasks.evaluation.base import BenchItem, BenchmarkResult, ItemScore
from tasks.evaluation.common import check_aligned, generation_failed, jsonl_files, suite_judge
from tasks.evaluation.registry import SUITES
from tasks.evaluation.report import comparison_table
from tasks.judging.judgment import Ask, ParseFailure, Probe, expected_value
from tasks.llm.base import LLMClient
from tests.support.fake_llm import FakeLLM, FakeProbe

# ---------------------------------------------------------------------------------------------
# The benchmark: everything a new one needs, in one module
# ---------------------------------------------------------------------------------------------

REASK = 'Your reply could not be used: {error}. Reply with only "yes" or "no".'


def parse_yes_no(text: str) -> float | ParseFailure:
    answer = text.strip().lower()
    if answer not in ("yes", "no"):
        return ParseFailure(f'expected "yes" or "no", got {text.strip()[:20]!r}')
    return 1.0 if answer == "yes" else 0.0


@dataclass(frozen=True)
class OnTopicForm:
    """Is the response on topic? json: "yes"/"no"; logprob: P(Y) renormalised over Y and N."""

    prompt: str
    response: str

    def _messages(self, answer: str) -> list[dict[str, str]]:
        text = f"Request: {self.prompt}\nResponse: {self.response}\nIs the response on topic? {answer}"
        return [{"role": "user", "content": text}]

    def asks(self) -> list[Ask[float]]:
        return [Ask(self._messages('Reply "yes" or "no".'), parse_yes_no, REASK.format)]

    def probes(self) -> list[Probe[float]]:
        return [Probe(self._messages("Answer Y or N."), ("Y", "N"), self._p_yes)]

    @staticmethod
    def _p_yes(logprobs: dict[str, float]) -> tuple[float, float] | ParseFailure:
        return expected_value(logprobs, {"Y": 1.0, "N": 0.0})


class ToyLengthSuite:
    """Items `{"id", "prompt", "words"}`, one per line; score = (length score + 100 x on topic) / 2,
    where the length score is 100 x min(y, x) / max(y, x) for y words written and x required."""

    name = "toy_length"
    version = 1
    needs_judge = True
    judge_modes = ("json", "logprob")
    truncates_input = False
    uses_writing_strategy = True

    def data_files(self, config: BenchmarkConfig) -> list[Path]:
        return jsonl_files(config)

    def load(self, config: BenchmarkConfig) -> list[BenchItem]:
        rows = [json.loads(line) for p in self.data_files(config) for line in p.read_text().splitlines()]
        items = [
            BenchItem(id=r["id"], prompt=r["prompt"], data={"words": r["words"]}, required_length=r["words"])
            for r in rows
        ]
        return items[: config.limit]

    def generation_decoding(self, config: BenchmarkConfig, seed: int | None) -> Decoding:
        return Decoding(temperature=0.0, max_tokens=config.max_tokens or 64, seed=seed)

    def judge_form(self, item: BenchItem, response: str, judge: JudgeConfig) -> OnTopicForm:
        return OnTopicForm(item.prompt, response)

    async def score(
        self, item: BenchItem, response: str | None, judge_client: LLMClient | None, judge: JudgeConfig | None
    ) -> ItemScore:
        judged_by = suite_judge(self.name, judge_client, judge)
        if response is None:
            return generation_failed()
        words, required = len(response.split()), int(item.data["words"])
        length = 100 * min(words, required) / max(words, required)
        (on_topic,) = await judged_by.judge(self.judge_form(item, response, judged_by.config))
        details = {"words": words, "length_score": length, "on_topic": on_topic.value, "mass": on_topic.mass}
        if not on_topic.ok:
            return ItemScore(
                None, details, error=on_topic.error, retryable=on_topic.retryable, llm_calls=on_topic.calls
            )
        assert on_topic.value is not None
        return ItemScore((length + 100 * on_topic.value) / 2, details, llm_calls=on_topic.calls)

    def aggregate(self, items: Sequence[BenchItem], scores: Sequence[ItemScore]) -> BenchmarkResult:
        check_aligned(items, scores)
        scored = [s.score for s in scores if s.score is not None]
        mean = sum(scored) / len(scored) if scored else None
        return BenchmarkResult(mean, {"score": mean}, n_items=len(items), n_failed=len(items) - len(scored))


# ---------------------------------------------------------------------------------------------
# The test: register, name it in a recipe, run the evaluate stage
# ---------------------------------------------------------------------------------------------

ROWS = [
    {"id": "toy-1", "prompt": "Write 6 words about tides.", "words": 6},
    {"id": "toy-2", "prompt": "Write 10 words about harbours.", "words": 10},
]
WRITTEN = {  # what the fake candidate writes for each prompt
    "Write 6 words about tides.": "Tides rise and fall each day.",  # 6 words: length 100
    "Write 10 words about harbours.": "Boats rest in calm harbours.",  # 5 of 10: length 50
}


@pytest.fixture
def toy_suite():
    suite = ToyLengthSuite()
    SUITES.register(suite.name)(suite)
    yield suite
    SUITES.unregister(suite.name)
    assert suite.name not in SUITES


def _recipe(tmp_path: Path, mode: str, benchmark: str = "toy_length") -> Recipe:
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return Recipe.model_validate(
        {
            "name": "toy",
            "storage": {"root": str(tmp_path / "store")},
            "backends": {"local": {"kind": "transformers"}},
            "generators": [{"name": "policy", "role": "policy", "backend": "local", "model": "fake-writer"}],
            "evaluation": {
                "judge": {"backend": "local", "model": "fake-judge", "mode": mode},
                "candidates": [{"name": "writer", "model": "fake-writer"}],
                "benchmarks": {benchmark: {"path": str(data)}},
            },
        }
    )


@pytest.mark.parametrize(
    ("mode", "on_topic", "scores", "mass"),
    [
        ("logprob", [0.75, 0.75], [(100 + 75) / 2, (50 + 75) / 2], 0.8),
        ("json", [1.0, 0.0], [(100 + 100) / 2, (50 + 0) / 2], None),
    ],
)
def test_a_fifth_benchmark_runs_through_the_evaluate_stage(
    toy_suite, tmp_path, monkeypatch, mode, on_topic, scores, mass
):
    import tasks.stages.runner as runner
    from flows.evaluate import _result_rows
    from tasks.evaluation.candidates import resolve_candidates
    from tasks.stages import evaluate as evaluate_stage

    writer = FakeLLM(lambda call: WRITTEN[call.user])
    judge = (  # logprob: P(Y) 0.6 and P(N) 0.2 on every probe (E = 0.75, mass 0.8)
        FakeProbe(lambda messages, candidates: {"Y": 0.6, "N": 0.2})
        if mode == "logprob"
        else FakeLLM(lambda call: "yes" if "tides" in call.user else "no")
    )
    clients = {"fake-writer": writer, "fake-judge": judge}
    monkeypatch.setattr(runner, "create_client", lambda recipe, backend, model: clients[model])

    recipe = _recipe(tmp_path, mode)
    storage = open_storage(recipe.storage)
    (candidate,) = resolve_candidates(recipe, storage)
    evaluate_stage.check_evaluation(recipe, [candidate], ["toy_length"])
    run_id = storage.catalog.start_run(
        flow="evaluate", recipe=recipe.name, recipe_path=None, config_hash="c", code_version="x",
        prefect_flow_run_id=None,
    )  # fmt: skip
    result = evaluate_stage.evaluate.fn(recipe, candidate, "toy_length", run_id=run_id)

    assert not result.cached and result.summary["score"] == pytest.approx(sum(scores) / 2)
    items = storage.datasets.read(result.outputs["eval_items"]).to_pylist()
    assert [(i["item_id"], i["response"]) for i in items] == [(r["id"], WRITTEN[r["prompt"]]) for r in ROWS]
    assert [i["score"] for i in items] == pytest.approx(scores)
    assert [i["judge_calls"] for i in items] == [1, 1] and not any(i["error"] for i in items)
    details = [json.loads(i["details_json"]) for i in items]
    assert [d["words"] for d in details] == [6, 5] and [d["length_score"] for d in details] == [100, 50]
    assert [d["on_topic"] for d in details] == pytest.approx(on_topic)
    assert [d["mass"] for d in details] == ([pytest.approx(mass)] * 2 if mass else [None, None])
    if mode == "logprob":
        assert [c for _, c in judge.probes] == [("Y", "N")] * 2
    else:  # each judge question asked once, with the candidate's response in it
        assert sorted(c.user.split("\n")[1] for c in judge.calls) == sorted(
            f"Response: {t}" for t in WRITTEN.values()
        )

    storage.evaluations.record(_result_rows(storage, run_id, [(candidate, result)]))
    (row,) = storage.evaluations.results(eval_run_id=run_id)
    assert (row["candidate"], row["benchmark"]) == ("writer", "toy_length")
    assert row["benchmark_version"].startswith("toy_length-v1-")
    assert row["score"] == pytest.approx(sum(scores) / 2)
    assert (row["n_items"], row["n_failed"]) == (2, 0)
    assert row["judge"] == f"local/fake-judge/{mode}/v1"
    (table_row,) = comparison_table([row])  # the report shows the new column without knowing it
    assert table_row["toy_length"] == pytest.approx(round(sum(scores) / 2, 2))

    # The same pair again is a stage cache hit: no new generation, no new judge call.
    calls = len(writer.calls), len(getattr(judge, "probes", None) or judge.calls)
    again = evaluate_stage.evaluate.fn(recipe, candidate, "toy_length", run_id=run_id)
    assert again.cached and again.outputs == result.outputs
    assert (len(writer.calls), len(getattr(judge, "probes", None) or judge.calls)) == calls


def test_an_unregistered_benchmark_name_is_refused_naming_the_field_and_the_suites(tmp_path):
    from tasks.stages.evaluate import check_benchmark_paths, check_evaluation

    recipe = _recipe(tmp_path, "json", benchmark="toy_nope")  # the schema takes any slug
    for check in (lambda: check_evaluation(recipe, [], ["toy_nope"]), lambda: check_benchmark_paths(recipe)):
        with pytest.raises(ConfigError) as info:
            check()
        message = str(info.value)
        assert message.startswith("evaluation.benchmarks.toy_nope: no benchmark suite is registered")
        assert "writingbench, longbench_write, creative_writing_v3, longbench_v2" in message
    with pytest.raises(ValueError, match="String should match pattern"):
        _recipe(tmp_path, "json", benchmark="Toy Nope")
