"""A budget stops each kind of stage cleanly (tasks/llm/budget.py), with the fault server counting
every request: generate, score and evaluate end `stopped_at_budget` (resumable, not cached), having
sent nothing past the budget beyond the calls in flight when it was reached; run again under the
same budget they stop at once; with a raised budget they continue and pay for nothing twice.
Training's drill (a checkpoint of the last finished step, then resume) is in the slow suite below."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from configs.loading import load_recipe
from storage import open_storage
from tasks.llm.budget import BudgetExhaustedError
from tests.support.fault_server import FaultServer
from tests.support.recipes import BENCH_FILES, train_recipe

CONCURRENCY = 2  # the API backend's max_concurrency
CRITERIA = 5  # the most criteria a built-in instruction or WritingBench item is judged on


def reply_text(body: dict[str, Any]) -> str:
    """judge-test answers a score JSON (pointwise, WritingBench); other models write."""
    last = str(body["messages"][-1]["content"])
    digest = int(hashlib.sha256(last.encode()).hexdigest(), 16)
    if body.get("model") == "judge-test":
        return f'{{"score": {digest % 10 + 1}, "reason": "ok"}}'
    return "Draft: " + " ".join(["word"] * 20)


def write(tmp_path: Path, name: str, server: FaultServer, model: Path, benchmarks: Path, budget: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
name: budget-test
storage: {{root: {tmp_path / name}, model_cache: {tmp_path / "models"}}}
data: {{format: builtin, limit: 6}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_batch_size: 8}}
  oai: {{kind: openai-compatible, base_url: '{server.openai_base_url}', max_concurrency: {CONCURRENCY}, timeout_s: 10}}
generators:
  - {{name: policy, role: policy, backend: local, model: {model}, decoding: {{temperature: 0.0, max_tokens: 8}}}}
  - {{name: gpt, backend: oai, model: gpt-test, decoding: {{temperature: 0.0, max_tokens: 16}}}}
judge: {{backend: oai, model: judge-test, mode: json, decoding: {{temperature: 0.0, max_tokens: 32}}}}
selection: {{strategy: full}}
prices:
  gpt-test: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
  judge-test: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
evaluation:
  candidates:
    - {{name: gpt, backend: oai, model: gpt-test}}
  benchmarks:
    writingbench: {{path: {benchmarks / BENCH_FILES["writingbench"]}, limit: 4, max_tokens: 16}}
budget: {budget}
""")
    return path


def chat_requests(server: FaultServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith("/chat/completions"))


def stage_rows(storage, stage: str) -> list[dict[str, Any]]:
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT stage_run_id, status, error, summary_json FROM stage_runs WHERE stage = ? ORDER BY started_at",
            [stage],
        ).fetchall()
    return [{"id": i, "status": s, "error": e, "summary": json.loads(j or "{}")} for i, s, e, j in rows]


def paid(storage, stage_run_id: str) -> tuple[int, int]:
    """(requests, input + output tokens) the stage run paid for on the API, as llm_usage recorded
    them (the local policy's calls are free: no budget counts them)."""
    with storage.catalog.connect() as con:
        return con.execute(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(input_tokens + output_tokens), 0) FROM llm_usage"
            " WHERE stage_run_id = ? AND backend IN ('oai', 'api')",
            [stage_run_id],
        ).fetchone()


def run(flow: str, path: Path) -> Any:
    if flow == "evaluate":
        from flows.evaluate import evaluate_candidates

        return evaluate_candidates(recipe_path=str(path))
    from flows.build_dataset import build_dataset

    return build_dataset(recipe_path=str(path), until=flow)


@pytest.mark.parametrize("stage", ["generate", "score", "evaluate"])
def test_a_stage_stops_at_its_budget_sends_nothing_past_it_and_resumes_when_it_is_raised(
    stage, prefect_harness, tiny_model_dir, shared_benchmarks, tmp_path
):
    with FaultServer(reply_text=reply_text, latency_s=0.05) as server:
        # What the stage costs in full, on a store of its own.
        full = write(tmp_path, "full", server, tiny_model_dir, shared_benchmarks, "null")
        upstream = {"generate": None, "score": "generate", "evaluate": None}[stage]
        if upstream:  # the stages before, run first, so that what is counted below is the stage's alone
            run(upstream, full)
        run(stage, full)
        whole = stage_rows(open_storage(load_recipe(full).storage), stage)[-1]
        calls, tokens = paid(open_storage(load_recipe(full).storage), whole["id"])
        assert calls >= 4

        limit = tokens // 2
        path = write(tmp_path, "budgeted", server, tiny_model_dir, shared_benchmarks,
                     f"{{stages: {{{stage}: {{tokens: {limit}}}}}}}")  # fmt: skip
        storage = open_storage(load_recipe(path).storage)
        if upstream:
            run(upstream, path)
        before = chat_requests(server)
        with pytest.raises(
            BudgetExhaustedError, match=rf"budget\.stages\.{stage}\.tokens \({limit:,}\) reached"
        ):
            run(stage, path)
        sent = chat_requests(server) - before
        stopped = stage_rows(storage, stage)[-1]
        assert stopped["status"] == "stopped_at_budget" and "Raise the budget" in stopped["error"]
        budget = stopped["summary"]["budget"]
        # Admitted and not yet back when the budget was reached (each within its reservation): at
        # most the stage's concurrency in calls (generate), or in responses (score) and items
        # (evaluate), whose up to 5 criteria are judged together.
        in_flight_bound = CONCURRENCY * (1 if stage == "generate" else CRITERIA)
        assert budget["refused_calls"] >= 1 and budget["in_flight_at_exhaustion"] <= in_flight_bound
        # Everything sent was paid for and recorded; nothing went past the budget.
        assert paid(storage, stopped["id"]) == (sent, budget["spent_tokens"])
        assert 0 < sent < calls and budget["spent_tokens"] <= limit
        with storage.catalog.connect() as con:
            cached = {s for (s,) in con.execute("SELECT stage FROM stage_cache").fetchall()}
        assert stage not in cached  # stopped: resumable, not cached

        # The same budget again: each run counts what the earlier ones spent, so together they stay
        # within it (a run may still send a call the first one's in-flight reservations held back),
        # and soon a run sends nothing.
        for _ in range(4):
            before = chat_requests(server)
            with pytest.raises(BudgetExhaustedError):
                run(stage, path)
            if chat_requests(server) == before:
                break
        else:
            pytest.fail("every rerun under the same budget still sent calls")
        attempts = [r for r in stage_rows(storage, stage) if r["status"] == "stopped_at_budget"]
        sent = sum(paid(storage, r["id"])[0] for r in attempts)
        assert sum(paid(storage, r["id"])[1] for r in attempts) <= limit

        # A raised budget: continues; every call paid before is a cache hit.
        path.write_text(path.read_text().replace(f"tokens: {limit}}}", f"tokens: {tokens * 2}}}"))
        before = chat_requests(server)
        run(stage, path)
        assert chat_requests(server) - before == calls - sent
        done = stage_rows(storage, stage)[-1]
        assert done["status"] == "completed" and paid(storage, done["id"])[0] == calls - sent


def test_a_run_budget_counts_every_stage_of_the_run(
    prefect_harness, tiny_model_dir, shared_benchmarks, tmp_path
):
    """budget.run: generate spends part of it, score stops at what is left; a rerun counts the
    cached generate's spending again, so it stops at once too."""
    with FaultServer(reply_text=reply_text) as server:
        full = write(tmp_path, "full", server, tiny_model_dir, shared_benchmarks, "null")
        run("score", full)
        storage_full = open_storage(load_recipe(full).storage)
        generate_tokens = paid(storage_full, stage_rows(storage_full, "generate")[-1]["id"])[1]
        score_tokens = paid(storage_full, stage_rows(storage_full, "score")[-1]["id"])[1]

        limit = generate_tokens + score_tokens // 2
        path = write(
            tmp_path, "budgeted", server, tiny_model_dir, shared_benchmarks, f"{{run: {{tokens: {limit}}}}}"
        )
        storage = open_storage(load_recipe(path).storage)
        with pytest.raises(BudgetExhaustedError, match=r"budget\.run\.tokens"):
            run("score", path)
        assert [r["status"] for r in stage_rows(storage, "generate")] == ["completed"]
        stopped = stage_rows(storage, "score")[-1]
        spent = paid(storage, stage_rows(storage, "generate")[-1]["id"])[1] + paid(storage, stopped["id"])[1]
        assert stopped["status"] == "stopped_at_budget" and spent <= limit
        with storage.catalog.connect() as con:
            (status,) = con.execute("SELECT status FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
        assert status == "stopped_at_budget"

        # Reruns count the cached generate's spending and every earlier score attempt's: together
        # they stay within the run budget, and soon one sends nothing.
        for _ in range(4):
            before = chat_requests(server)
            with pytest.raises(BudgetExhaustedError, match=r"budget\.run\.tokens"):
                run("score", path)
            if chat_requests(server) == before:
                break
        else:
            pytest.fail("every rerun under the same run budget still sent calls")
        runs = stage_rows(storage, "generate")[:1] + stage_rows(storage, "score")
        assert sum(paid(storage, r["id"])[1] for r in runs) <= limit


def test_a_cost_budget_refuses_a_paid_model_without_a_price(tmp_path):
    from configs.loading import ConfigError

    path = tmp_path / "r.yaml"
    path.write_text("""\
name: t
backends: {api: {kind: anthropic}}
generators: [{name: policy, role: policy, backend: api, model: claude-x}]
budget: {stages: {generate: {cost_usd: 5}}}
""")
    with pytest.raises(ConfigError, match=r"generators\.policy calls 'claude-x'.*no entry in `prices`"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="budgets apply to generate, score, train, evaluate"):
        path.write_text(path.read_text().replace("generate: {cost_usd: 5}", "select: {tokens: 5}"))
        load_recipe(path)


def _verdict(body: dict) -> str:
    from benchmarks.judge_fault_drill import pairwise_reply

    return pairwise_reply(body)


@pytest.mark.slow
def test_training_stops_at_its_budget_with_a_checkpoint_and_resumes_when_it_is_raised(
    prefect_harness, tiny_model_dir, tmp_path
):
    """The judge's cost budget runs out in a step: no update for that step, a checkpoint of the
    last finished one with its curriculum snapshot, the stage `stopped_at_budget`; raised, the
    training resumes from that checkpoint, and every judge call paid before is a cache hit."""
    from flows.train import train_policy

    def recipe(folder: Path, server: FaultServer, budget: str) -> str:
        folder.mkdir(exist_ok=True)
        return train_recipe(
            folder, tiny_model_dir, max_steps=4, batch_size=1, num_generations=2,
            backends_extra=f"  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}', "
                           f"max_concurrency: {CONCURRENCY}}}\n",
            reward="{kind: pairwise, position: position-disadvantage, judge: {backend: api, model: judge, mode: json,"
                   " decoding: {temperature: 0.0, max_tokens: 64}}}",
            training_extra=f"prices: {{judge: {{input_per_mtok: 1000.0, output_per_mtok: 1000.0}}}}\nbudget: {budget}\n",
        )  # fmt: skip

    with FaultServer(reply_text=_verdict) as server:
        full = recipe(tmp_path / "full", server, "null")
        summary = train_policy(full)
        storage_full = open_storage(load_recipe(full).storage)
        (train_run,) = [r for r in stage_rows(storage_full, "train")]
        calls, _ = paid(storage_full, train_run["id"])
        with storage_full.catalog.connect() as con:
            cost = con.execute(
                "SELECT sum(cost_usd) FROM llm_usage WHERE stage_run_id = ?", [train_run["id"]]
            ).fetchone()[0]
        assert {s["stage"]: s for s in summary["stages"]}["train"]["summary"]["steps"] == 4 and calls == 8

        limit = round(cost * 0.6, 6)  # past step 2, before step 4
        path = recipe(tmp_path / "budgeted", server, f"{{stages: {{train: {{cost_usd: {limit}}}}}}}")
        storage = open_storage(load_recipe(path).storage)
        before = chat_requests(server)
        with pytest.raises(
            BudgetExhaustedError, match=r"train stopped at its budget before step (\d)"
        ) as stop:
            train_policy(path)
        sent = chat_requests(server) - before
        step = int(stop.value.args[0].split("before step ")[1].split(":")[0])
        stopped = stage_rows(storage, "train")[-1]
        assert stopped["status"] == "stopped_at_budget"
        assert paid(storage, stopped["id"])[0] == sent < calls
        checkpoints = sorted(p.name for p in (storage.root / "training").glob("*/checkpoint-*"))
        assert checkpoints and checkpoints[-1] == f"checkpoint-{step - 1}"
        with storage.catalog.connect() as con:
            snapshots = {
                s for (s,) in con.execute("SELECT DISTINCT step FROM curriculum_snapshots").fetchall()
            }
            recorded = {s for (s,) in con.execute("SELECT DISTINCT step FROM train_judgments").fetchall()}
        assert step - 1 in snapshots and recorded == set(range(1, step))  # the stopped step left nothing

        path_text = Path(path).read_text().replace(f"cost_usd: {limit}", f"cost_usd: {cost * 3:.6f}")
        Path(path).write_text(path_text)
        before = chat_requests(server)
        resumed = train_policy(path)
        train = {s["stage"]: s for s in resumed["stages"]}["train"]["summary"]
        assert train["resumed_from"] == step - 1 and train["steps"] == 4
        assert chat_requests(server) - before == calls - sent  # nothing judged twice
