"""The recipe answers "which judge, which models": `Recipe.judge_for` and `Recipe.models`, and the
one judge label every stage, artifact and lineage view shows."""

from __future__ import annotations

import pytest

from configs.schema import Recipe
from tasks.stages import score as score_stage
from tasks.stages import train as train_stage
from tasks.stages.publish import describe_judge


def _recipe(**blocks) -> Recipe:
    api = {"kind": "openai-compatible", "base_url": "http://127.0.0.1:1/v1"}
    base = {
        "name": "t",
        "backends": {"local": {"kind": "transformers"}, "api": api},
        "generators": [
            {
                "name": "policy",
                "role": "policy",
                "backend": "local",
                "model": "embedded:smollm2-135m-instruct",
            }
        ],
        "judge": {"backend": "api", "model": "curation-judge"},
        "training": {"max_steps": 1},
        "evaluation": {
            "candidates": [
                {"name": "base", "from_training": "base"},
                {"name": "gpt", "backend": "api", "model": "gpt-x"},
            ],
            "benchmarks": {
                "writingbench": {"path": "wb.jsonl", "judge": {"backend": "api", "model": "wb-judge"}},
                "longbench_write": {"path": "lbw.jsonl"},
                "longbench_v2": {"path": "lbv2.json"},
            },
        },
    }
    return Recipe.model_validate(base | blocks)


def test_judge_for_answers_each_use_with_its_precedence():
    recipe = _recipe()
    assert recipe.judge_for("score").model == "curation-judge"
    assert recipe.judge_for("reward").model == "curation-judge"  # no reward.judge: the curation judge
    assert recipe.judge_for("writingbench").model == "wb-judge"  # the benchmark's own
    assert recipe.judge_for("longbench_write").model == "curation-judge"  # no evaluation.judge either

    evaluation = recipe.evaluation.model_dump() | {"judge": {"backend": "api", "model": "eval-judge"}}
    recipe = _recipe(reward={"judge": {"backend": "api", "model": "reward-judge"}}, evaluation=evaluation)
    assert recipe.judge_for("reward").model == "reward-judge"
    assert recipe.judge_for("score").model == "curation-judge"
    assert recipe.judge_for("writingbench").model == "wb-judge"
    assert recipe.judge_for("longbench_write").model == "eval-judge"
    with pytest.raises(KeyError, match="creative_writing_v3"):
        recipe.judge_for("creative_writing_v3")  # not a benchmark of this recipe


def test_the_stages_key_on_the_judge_the_recipe_names():
    recipe = _recipe(reward={"judge": {"backend": "api", "model": "reward-judge"}})
    assert score_stage.SPEC.config_slice(recipe)["judge"]["model"] == "curation-judge"
    assert train_stage.SPEC.config_slice(recipe)["judge"]["model"] == "reward-judge"


def test_models_lists_every_model_called_including_writer_and_benchmark_judges():
    recipe = _recipe(criteria_writer={"backend": "api", "model": "writer"})
    uses = {(u.where, u.model) for u in recipe.models()}
    assert ("criteria_writer", "writer") in uses
    assert ("evaluation.benchmarks.writingbench.judge", "wb-judge") in uses
    assert ("evaluation.candidates.gpt", "gpt-x") in uses
    assert ("generators.policy", "embedded:smollm2-135m-instruct") in uses
    assert ("reward.judge", "curation-judge") in uses
    assert not any(u.where == "evaluation.candidates.base" for u in recipe.models())  # the policy's own


def test_one_judge_label_in_results_and_in_artifacts():
    recipe = _recipe()
    judge = recipe.judge_for("writingbench")
    slice_ = {"judge": recipe.call_identity(judge)}  # as a stage's config slice stores it
    assert judge.label == "api/wb-judge/json/v1" == describe_judge(slice_)
