"""The stage runner's cache: keyed on stage version, config slice and input versions; verified
against the dataset store; never entered for partly failed stages."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest

from configs.schema import Recipe
from storage import DatasetRef, open_storage
from tasks.stages.runner import StageOutput, StageSpec, run_stage
from tests.support.recipes import policy_recipe


def _recipe(tmp_path, **decoding) -> Recipe:
    return policy_recipe(
        {"local": {"kind": "transformers"}},
        decoding={"max_tokens": 8, **decoding},
        storage={"root": str(tmp_path / "store")},
    )


class Counting:
    def __init__(self, failures: int = 0, raises: bool = False):
        self.calls = 0
        self.failures = failures
        self.raises = raises

    def __call__(self, ctx) -> StageOutput:
        self.calls += 1
        if self.raises:
            raise RuntimeError("boom")
        upstream = ctx.read("source").num_rows if "source" in ctx.inputs else 0
        return StageOutput(
            {"out": pa.table({"n": [upstream, self.calls]})}, {"rows": 2}, failures=self.failures
        )


SPEC = StageSpec(
    "toy",
    1,
    inputs=("source",),
    outputs=("out",),
    description="toy",
    config_slice=lambda r: r.policy.decoding.model_dump(mode="json"),
)


@pytest.fixture
def source(tmp_path):
    storage = open_storage(_recipe(tmp_path).storage)
    return storage, storage.datasets.write("source", pa.table({"x": [1, 2, 3]}), lineage={})


def test_second_run_is_a_cache_hit_with_the_same_outputs(tmp_path, source):
    storage, src = source
    compute = Counting()
    first = run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    second = run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    assert compute.calls == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.outputs == first.outputs
    with storage.catalog.connect() as con:
        rows = con.execute("SELECT status, cached_from FROM stage_runs ORDER BY started_at").fetchall()
        lineage = con.execute(
            "SELECT direction, dataset, version FROM stage_run_datasets WHERE stage_run_id = ?"
            " ORDER BY direction",
            [first.stage_run_id],
        ).fetchall()
    assert rows == [("completed", None), ("cached", first.stage_run_id)]
    assert lineage == [("input", "source", 0), ("output", "out", 0)]
    assert storage.datasets.lineage(first.outputs["out"])["inputs"] == ["source@0"]


def test_a_cache_hit_takes_one_catalog_connection(tmp_path, source, monkeypatch):
    """Lookup, record and lineage of a hit share one connection (each costs ~20 ms; a warm demo
    serves 14 stages from the cache)."""
    from storage import catalog as catalog_module

    _, src = source
    run_stage(SPEC, Counting(), _recipe(tmp_path), {"source": src})
    opened, real = [], catalog_module.duckdb.connect
    monkeypatch.setattr(catalog_module.duckdb, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    assert run_stage(SPEC, Counting(), _recipe(tmp_path), {"source": src}).cached
    assert len(opened) == 1


def test_config_slice_stage_version_and_input_version_each_invalidate(tmp_path, source):
    storage, src = source
    compute = Counting()
    run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    run_stage(SPEC, compute, _recipe(tmp_path, temperature=0.1), {"source": src})
    assert compute.calls == 2
    bumped = StageSpec(**{**SPEC.__dict__, "version": 2})
    run_stage(bumped, compute, _recipe(tmp_path, temperature=0.1), {"source": src})
    assert compute.calls == 3
    newer = storage.datasets.write("source", pa.table({"x": [1]}), lineage={})
    run_stage(bumped, compute, _recipe(tmp_path, temperature=0.1), {"source": newer})
    assert compute.calls == 4


def test_config_outside_the_slice_does_not_invalidate(tmp_path, source):
    _, src = source
    compute = Counting()
    run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    other = _recipe(tmp_path).model_copy(update={"description": "edited"})
    assert run_stage(SPEC, compute, other, {"source": src}).cached
    assert compute.calls == 1


def test_refresh_forces_and_missing_outputs_recompute(tmp_path, source):
    storage, src = source
    compute = Counting()
    run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    forced = run_stage(SPEC, compute, _recipe(tmp_path), {"source": src}, refresh=True)
    assert (compute.calls, forced.cached, forced.outputs["out"]) == (2, False, DatasetRef("out", 1))
    shutil.rmtree(storage.root / "datasets" / "out")  # the cached version is gone
    again = run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    assert (compute.calls, again.cached) == (3, False)
    assert storage.datasets.read(again.outputs["out"]).num_rows == 2


def test_partly_failed_stage_is_recorded_but_not_cached(tmp_path, source):
    storage, src = source
    compute = Counting(failures=2)
    first = run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    run_stage(SPEC, compute, _recipe(tmp_path), {"source": src})
    assert compute.calls == 2
    with storage.catalog.connect() as con:
        status = con.execute(
            "SELECT status FROM stage_runs WHERE stage_run_id = ?", [first.stage_run_id]
        ).fetchone()
    assert status == ("completed_with_failures",)


def test_a_failing_stage_is_recorded_and_writes_nothing(tmp_path, source):
    storage, src = source
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(SPEC, Counting(raises=True), _recipe(tmp_path), {"source": src})
    with storage.catalog.connect() as con:
        assert con.execute("SELECT status, error FROM stage_runs").fetchall() == [
            ("failed", "RuntimeError: boom")
        ]
        assert con.execute("SELECT count(*) FROM stage_cache").fetchone() == (0,)
    assert "out" not in storage.datasets.names()
