"""SIGKILL in the middle of stage 1 (generate) or stage 2 (score), then run again: no lost rows, no
completed call repeated."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import write_recipe

# A drill with real processes (tens of seconds): run by `make test` after the fast suite.
pytestmark = pytest.mark.slow


def _start(recipe, calls, until="generate", probe_delay_s=0.0):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.curation_worker", str(recipe), str(calls), until,
         str(probe_delay_s)],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_generation_killed_mid_batch_resumes_without_repeating_calls(tiny_model_dir, tmp_path):
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), limit=12, max_tokens=48
    )
    recipe_path.write_text(recipe_path.read_text().replace("max_batch_size: 4", "max_batch_size: 1"))
    storage = open_storage(load_recipe(recipe_path).storage)
    calls = tmp_path / "calls.txt"

    first = _start(recipe_path, calls)
    deadline = time.monotonic() + 120
    while storage.responses.count() < 3:  # some calls completed and persisted, most not yet
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "generation never started"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    persisted = storage.responses.count()
    made_before_kill = len(calls.read_text().splitlines())
    assert 3 <= persisted < 12 and made_before_kill >= persisted

    second = _start(recipe_path, calls)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    made_after = len(calls.read_text().splitlines()) - made_before_kill
    assert made_after == 12 - persisted  # every completed call was reused, none repeated

    ref = DatasetRef.parse(out.strip().splitlines()[-1])
    rows = storage.datasets.read(ref).to_pylist()
    assert len(rows) == 12 and len({r["instruction_id"] for r in rows}) == 12
    assert all(r["error"] is None and r["text"] for r in rows)
    with storage.catalog.connect() as con:
        statuses = con.execute("SELECT stage, status FROM stage_runs ORDER BY started_at").fetchall()
        hits = con.execute(
            "SELECT sum(cache_hits), sum(requests) FROM llm_usage u JOIN stage_runs s USING (stage_run_id)"
            " WHERE s.status = 'completed' AND s.stage = 'generate'"
        ).fetchone()
    assert statuses[-1] == ("generate", "completed")
    assert ("generate", "running") in statuses  # the killed stage run; the next flow marks it abandoned
    assert hits == (persisted, 12 - persisted)


def _probes_stored(storage) -> int:
    with storage.catalog.connect() as con:
        return con.execute(
            "SELECT count(*) FROM llm_responses WHERE finish_reason = 'next_token_logprobs'"
        ).fetchone()[0]


def _calls(path, kind):
    return [line for line in path.read_text().splitlines() if line.startswith(kind + " ")]


def test_scoring_killed_mid_stage_resumes_without_repeating_judge_calls(tiny_model_dir, tmp_path):
    judge = f"judge: {{backend: local, model: {tiny_model_dir}, mode: logprob}}\n"
    recipe_path = write_recipe(
        tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir), limit=12, extra=judge
    )
    recipe_path.write_text(recipe_path.read_text().replace("max_batch_size: 4", "max_batch_size: 1"))
    storage = open_storage(load_recipe(recipe_path).storage)
    calls = tmp_path / "calls.txt"

    first = _start(recipe_path, calls, until="score", probe_delay_s=0.1)  # ~3 s of scoring
    deadline = time.monotonic() + 180
    while _probes_stored(storage) < 3:  # generation done, some judge calls persisted
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "scoring never started"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    persisted = _probes_stored(storage)
    probes_before_kill = len(_calls(calls, "probe"))
    chats_before_kill = len(_calls(calls, "chat"))
    assert chats_before_kill == 12 and probes_before_kill >= persisted >= 3

    second = _start(recipe_path, calls, until="score")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert len(_calls(calls, "chat")) == chats_before_kill  # generation came from the stage cache
    probes_after = len(_calls(calls, "probe")) - probes_before_kill
    total = _probes_stored(storage)
    assert persisted < total, "the first run finished scoring before the kill"
    assert probes_after == total - persisted  # every stored judgment call reused, none repeated

    rows = storage.datasets.read(DatasetRef.parse(out.strip().splitlines()[-1])).to_pylist()
    assert len(rows) == 12 and len({r["instruction_id"] for r in rows}) == 12
    assert all(r["error"] is None and r["score"] is not None for r in rows)
    with storage.catalog.connect() as con:
        usage = con.execute(
            "SELECT sum(cache_hits), sum(requests) FROM llm_usage u JOIN stage_runs s USING (stage_run_id)"
            " WHERE s.status = 'completed' AND s.stage = 'score'"
        ).fetchone()
    assert usage == (persisted, total - persisted)


def test_generation_killed_while_its_batch_is_in_flight_waits_for_that_batch_on_the_rerun(
    tiny_model_dir, tmp_path
):
    """A competitor in batch mode (tasks/llm/batch.py): SIGKILL once its batch is recorded and in
    flight; the rerun finds the batch in the catalog and waits for it. One batch is ever created,
    no call goes live, and every item's answer is in the generations."""
    from tests.support.fault_server import FaultServer

    with FaultServer(batch_latency_s=6.0) as server:
        api = "  - {name: api, backend: api, model: gpt-test, decoding: {temperature: 0.0, max_tokens: 32}}\n"
        recipe_path = write_recipe(tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir),
                                   limit=6, extra=api)  # fmt: skip
        text = recipe_path.read_text().replace(
            "backends:\n",
            f"backends:\n  api: {{kind: openai-compatible, base_url: '{server.openai_base_url}', batch: true,"
            " batch_poll_interval_s: 0.1, batch_collect_s: 0.2}\n",
        )
        recipe_path.write_text(text)
        storage = open_storage(load_recipe(recipe_path).storage)
        calls = tmp_path / "calls.txt"

        first = _start(recipe_path, calls)
        deadline = time.monotonic() + 120
        while not storage.batches.batches():  # submitted and recorded: the batch is in flight
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "no batch was recorded"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        (batch,) = server.batches.values()
        assert not batch.ended  # killed while it was in flight

        second = _start(recipe_path, calls)
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-3000:]
        creations = [r for r in server.requests if r.path.endswith("/v1/batches")]
        live = [r for r in server.requests if r.path.endswith("/chat/completions")]
        assert len(creations) == 1 and live == []

    rows = storage.datasets.read(DatasetRef.parse(out.strip().splitlines()[-1])).to_pylist()
    api_rows = [r for r in rows if r["generator"] == "api"]
    assert len(api_rows) == 6 and all(
        r["error"] is None and r["text"].startswith("You wrote") for r in api_rows
    )
    (recorded,) = storage.batches.batches()
    assert recorded["batch_id"] == batch.id and recorded["succeeded"] == 6
