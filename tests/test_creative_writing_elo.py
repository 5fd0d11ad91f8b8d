"""Creative Writing v3's pairwise Elo (`creative_writing_v3_elo`): the official pairwise prompt, plus
counts, fractions, pseudo-games and TrueSkill ratings against hand-computed values, the opponents'
files, the suite's matches and failures, and the flow end to end over the real OpenAI SDK."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path

import pytest

from configs.loading import ConfigError
from configs.schema import BenchmarkConfig, BootstrapConfig, JudgeConfig
from tasks.evaluation import creative_writing_elo as elo
from tasks.evaluation.base import BenchItem, ItemScore
from tasks.evaluation.bootstrap import score_interval
from tasks.evaluation.registry import SUITES
from tasks.instructions.loaders import InstructionDataError
from tests.support.fake_llm import FakeLLM, fail

SUITE = SUITES["creative_writing_v3_elo"]
JUDGE = JudgeConfig(backend="api", model="judge", max_parse_retries=1)
R1, TINY = list(elo.ANCHORS)
CW3_FILE = "creative_writing_v3/creative_writing_prompts_v3.json"


def run(coro):
    return asyncio.run(coro)


def verdicts(winner_plus: dict[str, str]) -> str:
    """A reply naming, per criterion, the winner with its pluses (`A0493++`)."""
    body = {"chain_of_thought_reasoning": "Both are competent."} | {
        c: winner_plus.get(c, "A0493+") for c in elo.PAIRWISE_CRITERIA
    }
    return json.dumps(body)


# ---------------------------------------------------------------------------------------------
# The official pieces, hand-computed
# ---------------------------------------------------------------------------------------------


def test_the_pairwise_prompt_is_the_official_file_and_filled_as_the_harness_fills_it():
    """sha256 of EQ-bench/creative-writing-bench @ e7ab009 `data/pairwise_prompt.txt` (2,107 bytes, no
    final newline)."""
    text = elo.PAIRWISE_PROMPT_TEMPLATE.encode("utf-8")
    assert len(text) == 2107
    assert (
        hashlib.sha256(text).hexdigest() == "4c5e42146ad971a4bdb3a5c1a44be8483aa7ee024516a8dcb7405a2c6f19e3c2"
    )
    long = "x" * 4000 + "TAIL"
    prompt = elo.pairwise_prompt("Write about <SEED>.", long, "short piece")
    assert "[WRITING PROMPT]\nWrite about <SEED>.\n[/WRITING PROMPT]" in prompt
    assert "x" * 4000 + "\n[/WRITER A0493]" in prompt and "TAIL" not in prompt  # cut at 4,000 characters
    assert "[WRITER A0488]\nshort piece\n[/WRITER A0488]" in prompt
    assert '"character_authenticity_insight": "A0293++"' in prompt  # the JSON example's braces untouched


def test_plus_counts_keep_the_harness_quirks():
    reply = {
        "chain_of_thought_reasoning": "A0493 is a+ writer",  # counts: names A0493 and holds one "+"
        "character_authenticity_insight": "A0493+++",
        "interesting_original": "A0488++",
        "writing_quality": "A0493+",
        "coherence": "A0488++++",  # penalising: B +4 and A -4
        "instruction_following": "A0493+",
        "world_and_atmosphere": "A0488+",
        "avoids_cliches": "A0493++",
        "avoids_verbosity": "A0493++",  # penalising: A +2 and B -2
        "avoids_poetic_overload": "A0488+",  # penalising: B +1 and A -1
    }
    # A: 1 + 3 + 1 + 1 + 2 + 2 - 4 - 1 = 5; B: 2 + 4 + 1 + 1 - 2 = 6
    assert elo.plus_counts(reply) == (5, 6)


@pytest.mark.parametrize(
    ("first", "second", "fraction", "games4", "games3"),
    [
        (10, 10, 0.5, (1, 1), (1, 1)),  # a tie: one drawn game
        (19, 10, 0.6, (1, 0), (1, 0)),  # diff 9: 0.5 + 9/45/2; margin 0.1 / 0.125 -> 1 game
        (33, 10, 0.5 + 23 / 90, (3, 0), (2, 0)),  # margin 0.2556: ceil(2.04) = 3; bin 3: ceil(1.53) = 2
        (0, 45, 0.0, (0, 4), (0, 3)),  # the widest loss: every game
    ],
)
def test_fraction_and_pseudo_games(first, second, fraction, games4, games3):
    assert elo.fraction_for_first(first, second) == pytest.approx(fraction)
    assert elo.pseudo_games(fraction, 4) == games4
    assert elo.pseudo_games(fraction, 3) == games3


def test_a_match_sums_both_orders_before_the_outcome():
    # forward: first wins 12 to 3; reverse: second wins 10 to 4 -> 16 vs 13: first wins by 3
    match = elo.Match("x", "y", forward=(12, 3), reverse=(4, 10))
    assert match.fraction == pytest.approx(0.5 + 3 / 90)
    assert elo.Match.from_json(json.loads(json.dumps(match.as_json()))) == match


def test_one_pseudo_game_is_trueskills_update_by_hand():
    """Both at mu 1200, sigma 400; tau 4 is added first; beta 200; no draws: the winner gains
    sigma'^2 / c * v(0), v(0) = pdf(0) / cdf(0)."""
    ratings = elo.solve(["x", "y"], [elo.Match("x", "y", (19, 10), (0, 0))], elo.BIN_SIZE_RATING)
    var = 400.0**2 + 4.0**2
    c = math.sqrt(2 * 200.0**2 + 2 * var)
    v = (1 / math.sqrt(2 * math.pi)) / 0.5
    gain = var / c * v
    assert ratings["x"][0] == pytest.approx(1200 + gain, abs=1e-4)  # the library's erfc is an approximation
    assert ratings["y"][0] == pytest.approx(1200 - gain, abs=1e-4)  # the library's erfc is an approximation
    w = v * (v + 0)
    assert ratings["x"][1] == pytest.approx(
        math.sqrt(var * (1 - var / c**2 * w)), abs=1e-4
    )  # the library's erfc is an approximation


def test_normalisation_sends_the_anchors_to_their_targets():
    matches = [
        elo.Match(elo.CANDIDATE, R1, (5, 20), (6, 18)),
        elo.Match(elo.CANDIDATE, TINY, (30, 2), (28, 1)),
        elo.Match(R1, TINY, (40, 0), (38, 2)),
    ]
    ratings = elo.rate(matches, elo.ANCHORS)
    assert ratings.elo_norm(R1) == pytest.approx(1500) and ratings.elo_norm(TINY) == pytest.approx(200)
    assert 200 < ratings.elo_norm(elo.CANDIDATE) < 1500
    low, high = ratings.interval_norm(elo.CANDIDATE)
    assert low < ratings.elo_norm(elo.CANDIDATE) < high
    assert elo.rate(matches, {R1: 1500, "nobody": 200}) is None  # one anchor is not enough


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_a_reply_must_name_a_writer_for_every_criterion():
    ok = elo.parse_pairwise_reply("<think>hmm {</think>Here: " + verdicts({}) + " done")
    assert isinstance(ok, dict) and ok["writing_quality"] == "A0493+"
    missing = json.loads(verdicts({}))
    del missing["coherence"]
    assert "'coherence' is missing" in elo.parse_pairwise_reply(json.dumps(missing)).error
    both = verdicts({"writing_quality": "A0493+ over A0488"})
    assert "names neither or both" in elo.parse_pairwise_reply(both).error
    number = json.loads(verdicts({}))
    number["writing_quality"] = 3
    assert "'writing_quality' is not a string" in elo.parse_pairwise_reply(json.dumps(number)).error
    assert "no JSON object" in elo.parse_pairwise_reply("A0493 wins").error


# ---------------------------------------------------------------------------------------------
# The opponents' files and the items
# ---------------------------------------------------------------------------------------------


def opponents_jsonl(path: Path, models=(R1, TINY), prompts=range(1, 33), iterations=(1,)) -> Path:
    with path.open("w") as f:
        for model in models:
            for p in prompts:
                for i in iterations:
                    row = {
                        "model": model,
                        "prompt_id": str(p),
                        "iteration": i,
                        "response": f" {model} p{p} i{i} ",
                    }
                    f.write(json.dumps(row) + "\n")
    return path


def config(shared_benchmarks, opponents: Path, **extra) -> BenchmarkConfig:
    return BenchmarkConfig(path=shared_benchmarks / CW3_FILE, opponents=opponents, **extra)


def test_items_leave_out_the_ignored_prompts_and_carry_the_opponents(shared_benchmarks, tmp_path):
    path = opponents_jsonl(tmp_path / "o.jsonl", iterations=(2, 1))
    items = SUITE.load(config(shared_benchmarks, path, limit=6, iterations=2))
    # prompts 1-6 minus the harness's ignored 5; same ids as the rubric run's items
    assert [i.id for i in items] == [f"cw3-{p}-i{k}" for p in (1, 2, 3, 4, 6) for k in (1, 2)]
    rubric = {
        i.id: i
        for i in SUITES["creative_writing_v3"].load(config(shared_benchmarks, path, limit=6, iterations=2))
    }
    assert all(i.prompt == rubric[i.id].prompt for i in items)
    first = items[0]
    assert first.data["opponents"] == {
        R1: f"{R1} p1 i1",
        TINY: f"{TINY} p1 i1",
    }  # the earliest iteration, stripped
    assert first.data["anchors"] == elo.ANCHORS


def test_opponent_file_problems_are_named_and_anchors_required(shared_benchmarks, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"model": "m", "prompt_id": "1", "iteration": "one", "response": "x"}\n'
        "not json\n"
        '{"model": "m", "prompt_id": "1", "iteration": 1, "response": "x", "extra": 1}\n'
    )
    with pytest.raises(InstructionDataError) as err:
        SUITE.load(config(shared_benchmarks, bad, limit=1))
    text = str(err.value)
    assert f"{bad}:1 iteration: must be int" in text and f"{bad}:2 line: not a JSON line" in text
    assert f"{bad}:3 extra: is not a field" in text
    no_anchor = opponents_jsonl(tmp_path / "one.jsonl", models=(R1, "other/model"))
    with pytest.raises(ConfigError, match=r"anchors \['meta-llama/llama-3.2-1b-instruct'\] are not among"):
        SUITE.load(config(shared_benchmarks, no_anchor, limit=1))
    gap = opponents_jsonl(tmp_path / "gap.jsonl", prompts=(1, 3))
    with pytest.raises(ConfigError, match=r"no piece of .* for prompt 2"):
        SUITE.load(config(shared_benchmarks, gap, limit=2))
    with pytest.raises(ConfigError, match="opponents: the opponents' pieces are needed"):
        SUITE.load(BenchmarkConfig(path=shared_benchmarks / CW3_FILE, limit=1))


def test_the_harness_runs_file_is_read_as_the_harness_reads_it(shared_benchmarks, tmp_path):
    def task(model, prompt, status="completed"):
        return {"prompt_id": prompt, "test_model": model, "status": status,
                "results_by_modifier": {"mod": {"model_response": f"  {model} says {prompt}  ", "judge_scores": {}}}}  # fmt: skip

    runs = {
        f"run1__{R1}": {"test_model": R1, "creative_tasks": {
            "1": {"1": task(R1, "1"), "2": task(R1, "2")},
            "2": {"1": task(R1, "1-late"), "2": task(R1, "2", status="error")}}},
        f"run2__{TINY}": {"test_model": TINY, "creative_tasks": {"1": {"1": task(TINY, "1"), "2": task(TINY, "2")}}},
        "run3__other": {"test_model": "other", "creative_tasks": {"1": {"1": task("other", "1")}}},
    }  # fmt: skip
    path = tmp_path / "creative_bench_runs.json"
    path.write_text(json.dumps(runs))
    opponents = elo.load_opponents(path, (R1, TINY))
    assert list(opponents) == [R1, TINY]
    assert opponents[R1] == {"1": f"{R1} says 1", "2": f"{R1} says 2"}  # iteration 1, stripped
    items = SUITE.load(config(shared_benchmarks, path, limit=2, opponent_models=(R1, TINY)))
    assert [i.id for i in items] == ["cw3-1-i1", "cw3-2-i1"]
    with pytest.raises(ConfigError, match=r"has no pieces of \['nobody'\]"):
        elo.load_opponents(path, (R1, "nobody"))


# ---------------------------------------------------------------------------------------------
# The suite: matches, failures, aggregate
# ---------------------------------------------------------------------------------------------

QUALITY = {"cand": 1.0, R1: 2.0, TINY: -2.0}


def item(id="cw3-1-i1") -> BenchItem:
    pieces = {R1: f"{R1} piece " * 5, TINY: f"{TINY} piece " * 5}
    return BenchItem(id=id, prompt="Write. storm", labels={},
                     data={"writing_prompt": "Write. <SEED>", "prompt_id": "1", "iteration": 1, "opponents": pieces,
                           "anchors": elo.ANCHORS})  # fmt: skip


def who(text: str) -> str:
    return next(name for name in QUALITY if name in text)


def judge_by_quality(call) -> str:
    """The stronger writer wins every criterion by 1 + |quality difference| pluses (at most 5)."""
    a = who(call.user.split("[WRITER A0493]")[1].split("[/WRITER A0493]")[0])
    b = who(call.user.split("[WRITER A0488]")[1].split("[/WRITER A0488]")[0])
    plus = "+" * min(5, 1 + round(abs(QUALITY[a] - QUALITY[b])))
    winner = "A0493" if QUALITY[a] >= QUALITY[b] else "A0488"
    return verdicts(dict.fromkeys(elo.PAIRWISE_CRITERIA, winner + plus))


def test_an_item_judges_both_orders_of_each_match_with_the_harness_decoding():
    llm = FakeLLM(judge_by_quality)
    score = run(SUITE.score(item(), "<think>plan</think>  cand piece  ", llm, JUDGE))
    # the candidate against 2 opponents, and the 2 opponents once: 3 matches x 2 orders
    assert score.llm_calls == 6 and len(llm.calls) == 6
    assert all((c.params.temperature, c.params.max_tokens) == (0.0, 16000) for c in llm.calls)
    assert all("Write. <SEED>" in c.user and "plan" not in c.user for c in llm.calls)
    assert "[WRITER A0493]\ncand piece\n[/WRITER A0493]" in llm.calls[0].user  # stripped, candidate first
    assert "[WRITER A0488]\ncand piece\n[/WRITER A0488]" in llm.calls[1].user  # then reversed
    matches = [elo.Match.from_json(m) for m in score.details["matches"]]
    assert [(m.first, m.second) for m in matches] == [(elo.CANDIDATE, R1), (elo.CANDIDATE, TINY), (R1, TINY)]
    # the candidate (quality 1) loses to r1 (2) by 2 pluses x 9 criteria per order, with the
    # penalising keys counted twice: (9 + 3) x 2 x 2 orders = 48 -> fraction 0.5 - 48/90 -> 0 clipped
    assert matches[0].forward == (-6, 18) and matches[0].reverse == (-6, 18)
    assert matches[0].fraction < 0.5 < matches[1].fraction
    assert (matches[0].share, matches[1].share) == (0.0, 1.0)  # the fractions, clipped to [0, 1]
    assert score.score == pytest.approx(50.0)


def test_failures_are_not_matches_and_generation_failure_still_judges_the_opponents():
    replies = iter([fail("503"), None, None, None, None, None])

    def flaky(call):
        reply = next(replies)
        return reply if reply is not None else judge_by_quality(call)

    score = run(SUITE.score(item(), "cand piece", FakeLLM(flaky), JUDGE))
    assert score.score is None and score.retryable and "judgment failed" in score.error
    assert [(m["first"], m["second"]) for m in score.details["matches"]] == [
        (elo.CANDIDATE, TINY),
        (R1, TINY),
    ]
    unparsable = run(
        SUITE.score(item(), "cand piece", FakeLLM(["nope", "still no"] + [verdicts({})] * 10), JUDGE)
    )
    assert unparsable.score is None and not unparsable.retryable and "unparsable" in unparsable.error
    no_piece = run(SUITE.score(item(), None, FakeLLM(judge_by_quality), JUDGE))
    assert no_piece.score is None and no_piece.error == "generation failed" and no_piece.llm_calls == 2
    assert [(m["first"], m["second"]) for m in no_piece.details["matches"]] == [(R1, TINY)]


def test_the_aggregate_is_the_normalised_elo_with_its_interval_and_win_shares():
    items = [item(id=f"cw3-1-i{k + 1}") for k in range(3)]
    scores = [run(SUITE.score(i, "cand piece", FakeLLM(judge_by_quality), JUDGE)) for i in items]
    result = SUITE.aggregate(items, scores)
    m = result.metrics
    # between the anchors: it beats the 1B anchor and loses to R1
    assert 200 < result.score < 1500 and result.n_failed == 0
    assert m["elo/" + R1] == pytest.approx(1500) and m["elo/" + TINY] == pytest.approx(200)
    assert m["trueskill_ci/low"] < result.score < m["trueskill_ci/high"]
    assert m["matches"] == 3 * 2 + 1  # the opponents' match counts once for the prompt
    # each share is the match's fraction clipped to [0, 1]: 72 vs -24 pluses and -12 vs 36
    assert (m["win_share/" + TINY], m["win_share/" + R1], m["win_share"]) == (100.0, 0.0, 50.0)
    assert SUITE.headline(items, scores) == pytest.approx(result.score)  # what the bootstrap resamples
    interval = score_interval(SUITE, items, scores, BootstrapConfig(resamples=100))
    assert interval is not None and interval.low <= result.score <= interval.high
    # a partial result: the matches that were judged still count, the item is failed
    partial = [*scores[:2], ItemScore(None, details={"matches": []}, error="judgment failed", retryable=True)]
    assert SUITE.aggregate(items, partial).n_failed == 1


def test_a_logprob_judge_is_refused_for_the_elo(tmp_path):
    form = SUITE.judge_form(item(), "cand piece", JUDGE)
    with pytest.raises(ConfigError, match="json mode"):
        form.probes()
    assert SUITE.judge_modes == ("json",) and all(
        "logprob" in s.judge_modes for n, s in SUITES.items() if s.needs_judge and n != SUITE.name
    )


# ---------------------------------------------------------------------------------------------
# The flow: two candidates over the real OpenAI SDK, one judge, the pool's Elo in the table
# ---------------------------------------------------------------------------------------------

FLOW_QUALITY = {"strong": 3.0, "middling": 0.0, R1: 2.0, TINY: -2.0}


def served(body: dict) -> str:
    """The fault server's reply: a candidate writes a piece naming itself; the judge prefers the
    writer of higher hidden quality on every criterion."""
    user = "\n".join(str(m.get("content")) for m in body["messages"] if m.get("role") == "user")
    if body["model"] != "judge":
        return f"A piece by {body['model']}, number {hashlib.sha256(user.encode()).hexdigest()[:8]}."

    def writer(tag: str) -> str:
        text = user.split(f"[WRITER {tag}]")[1].split(f"[/WRITER {tag}]")[0]
        return next(name for name in FLOW_QUALITY if name in text)

    a, b = writer("A0493"), writer("A0488")
    plus = "+" * min(5, 1 + round(abs(FLOW_QUALITY[a] - FLOW_QUALITY[b])))
    winner = "A0493" if FLOW_QUALITY[a] >= FLOW_QUALITY[b] else "A0488"
    return verdicts(dict.fromkeys(elo.PAIRWISE_CRITERIA, winner + plus))


def elo_recipe(tmp_path: Path, server, shared_benchmarks, opponents: Path, judge_mode: str = "json") -> Path:
    path = tmp_path / "elo.yaml"
    path.write_text(f"""\
name: elo
storage: {{root: {tmp_path / "store"}, model_cache: {tmp_path / "models"}}}
backends:
  oai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', max_retries: 0, timeout_s: 10}}
  local: {{kind: transformers, device: cpu}}
generators:
  - {{name: policy, role: policy, backend: oai, model: writer}}
judge: {{backend: {"oai" if judge_mode == "json" else "local"}, model: judge, mode: {judge_mode}}}
evaluation:
  bootstrap: {{resamples: 100}}  # each draw is a TrueSkill solve: the default 1,000 cost this test ~15 s
  candidates:
    - {{name: strong, backend: oai, model: strong}}
    - {{name: middling, backend: oai, model: middling}}
  benchmarks:
    creative_writing_v3_elo: {{path: {shared_benchmarks / CW3_FILE}, limit: 2, iterations: 2, opponents: {opponents}}}
""")
    return path


def test_the_flow_rates_each_candidate_on_its_pool_and_caches_the_opponents_matches(
    prefect_harness, shared_benchmarks, tmp_path
):
    from flows.evaluate import evaluate_candidates
    from tests.support.fault_server import FaultServer

    opponents = opponents_jsonl(tmp_path / "opponents.jsonl", prompts=(1, 2))
    with FaultServer(reply_text=served) as server:
        path = elo_recipe(tmp_path, server, shared_benchmarks, opponents)
        summary = evaluate_candidates(recipe_path=str(path))
        judged = [r for r in server.requests if r.body and r.body.get("model") == "judge"]
        # 4 items x 2 opponents x 2 orders per candidate, and the opponents' own match on each of
        # the 2 prompts (2 orders) once: every other ask of it is a response-cache hit.
        assert len(judged) == 2 * 16 + 4
        table = {row["candidate"]: row for row in summary["table"]}
        strong, middling = (
            table["strong"]["Creative Writing v3 Elo"],
            table["middling"]["Creative Writing v3 Elo"],
        )
        assert strong > 1500 > middling > 200  # strong beats the R1 anchor; middling sits between
        assert "writing average" not in table["strong"]
        assert "Creative Writing v3 Elo: the leaderboard's normalised Elo" in summary["markdown"]
        assert summary["markdown"].startswith(
            "# Evaluation: candidates x benchmarks (0-100; Creative Writing v3 Elo: normalised Elo)"
        )
        low, high = table["middling"]["Creative Writing v3 Elo CI"]
        assert low <= middling <= high

        server.clear()
        again = evaluate_candidates(recipe_path=str(path))
        assert server.requests == [] and again["table"] == summary["table"]


def test_a_logprob_judge_is_refused_before_any_call(shared_benchmarks, tmp_path):
    from configs.loading import load_recipe
    from tasks.stages.evaluate import check_evaluation

    class NoServer:
        openai_base_url = "http://127.0.0.1:9/v1"

    opponents = opponents_jsonl(tmp_path / "opponents.jsonl", prompts=(1, 2))
    recipe = load_recipe(elo_recipe(tmp_path, NoServer, shared_benchmarks, opponents, judge_mode="logprob"))
    with pytest.raises(ConfigError, match="creative_writing_v3_elo judges only in json mode"):
        check_evaluation(recipe, [], ["creative_writing_v3_elo"])
