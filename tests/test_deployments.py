"""Deployments against a real local Prefect server: `wrl up` starts `prefect server start` and the
serve process, the `prefect deployment run` CLI runs a deployment, a judge change re-run recomputes
only what depends on the judge, a cron schedule creates scheduled runs, and `wrl down` stops it all.

Slow (~1.5 minutes: a server start, two flow runs on the tiny model): run by `make test`, so by CI.
"""

from __future__ import annotations

import re
import sys

import pytest

from configs.loading import load_recipe
from storage import open_storage
from tests.support.recipes import write_recipe
from tests.support.services import local_prefect, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model_dir, shared_benchmarks):
    """`wrl up` on a tiny recipe with a nightly evaluation; `wrl down` afterwards."""
    root = tmp_path_factory.mktemp("deployments")
    judge = f"judge: {{backend: local, model: {tiny_model_dir}, mode: logprob}}\n"
    evaluation = (
        "evaluation:\n  nightly: {cron: '*/10 * * * *', timezone: UTC}\n"
        f"  candidates:\n    - {{name: base, model: {tiny_model_dir}}}\n"
        f"  benchmarks:\n    longbench_v2: {{path: {shared_benchmarks / 'longbench_v2' / 'sample.json'}, limit: 1}}\n"
    )
    recipe = write_recipe(
        root / "test.yaml", store=root / "store", model=str(tiny_model_dir), extra=judge + evaluation
    )
    with local_prefect(root, recipe) as services:
        yield {"root": root, "recipe": recipe, **services}


def _stage_statuses(storage, prefect_flow_run_id: str) -> dict[str, str]:
    with storage.catalog.connect() as con:
        rows = con.execute(
            "SELECT s.stage, s.status FROM stage_runs s JOIN runs r USING (run_id) WHERE r.prefect_flow_run_id = ?",
            [prefect_flow_run_id],
        ).fetchall()
    return dict(rows)


def _flow_run_id(output: str) -> str:
    # `prefect deployment run` prints "└── UUID: <id>" for the run it created.
    return re.search(r"UUID: ([0-9a-f-]{36})", output).group(1)


def test_deployment_run_through_the_prefect_cli_then_a_judge_change_reruns_only_the_judge_stages(served):
    env, root = served["env"], served["root"]
    prefect = [sys.executable, "-m", "prefect"]
    first = run([*prefect, "deployment", "run", "build-dataset/test", "--watch"], root, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Completed" in first.stdout
    storage = open_storage(load_recipe(served["recipe"]).storage)
    statuses = _stage_statuses(storage, _flow_run_id(first.stdout))
    assert statuses == {s: "completed" for s in ("ingest", "generate", "score", "select", "order")}
    assert storage.datasets.latest("ladders").version == 0

    # The judge changed (here its seed, part of its identity): re-run scoring through its stage
    # deployment. Generation is a cache hit; score and what reads its output are recomputed.
    second = run([*prefect, "deployment", "run", "stage/test-score", "--param",
                   'overrides={"judge.decoding.seed": 7}', "--watch"], root, env)  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    statuses = _stage_statuses(storage, _flow_run_id(second.stdout))
    assert statuses == {"ingest": "cached", "generate": "cached", "score": "completed"}


def test_a_cron_schedule_creates_scheduled_runs(served):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def scheduled():
        async with get_client() as client:
            (deployment,) = await client.read_deployments(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["test-nightly"]))
            )
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id={"any_": [deployment.id]},
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                )
            )
            return deployment, runs

    with temporary_settings({PREFECT_API_URL: served["env"]["PREFECT_API_URL"]}):  # the real server
        deployment, runs = asyncio.run(scheduled())
    assert "nightly" in deployment.tags and "recipe:test" in deployment.tags
    assert deployment.schedules and deployment.schedules[0].schedule.cron == "*/10 * * * *"
    assert len(runs) >= 2  # the scheduler fills the next runs ahead of time
    times = sorted(r.expected_start_time for r in runs)
    assert all(t.minute % 10 == 0 and t.second == 0 for t in times)
    assert all(r.parameters["recipe_path"] == str(served["recipe"]) for r in runs)
