"""A corpus of malformed datasets and recipes: each fails with an error that names the file, the
row or line and the field, and nothing is written (no dataset version, no cache entry)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.loading import ConfigError, load_recipe
from storage import open_storage
from tasks.instructions.loaders import InstructionDataError
from tasks.stages import ingest
from tasks.stages.runner import run_stage
from tests.support.recipes import write_recipe

# (case, file name, content, what the error must say)
BAD_DATASETS = [
    ("bad json", "d.jsonl", b'{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": "brok\n', ["d.jsonl:2 json"]),
    ("missing prompt", "d.jsonl", b'{"id": "a", "prompt": "ok"}\n{"id": "b"}\n', ["d.jsonl:2 prompt: missing"]),
    ("duplicate id", "d.jsonl", b'{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', ["d.jsonl:2 id"]),
    ("wrong type", "d.jsonl", b'{"id": "a", "prompt": 42}\n', ["d.jsonl:1 prompt"]),
    ("invalid utf-8", "d.jsonl", b'{"id": "a", "prompt": "caf\xff"}\n', ["d.jsonl:1 utf-8"]),
    ("bad length", "d.jsonl", b'{"id": "a", "prompt": "x", "required_length": -5}\n', ["d.jsonl:1 required_length"]),
    ("criteria not a list", "d.jsonl", b'{"id": "a", "prompt": "x", "criteria": "be good"}\n', ["d.jsonl:1 criteria"]),
    ("empty file", "d.jsonl", b"", ["d.jsonl rows: no instructions (the input is empty)"]),
    ("parquet null prompt", "d.parquet", None, ["d.parquet:row 2 prompt: missing"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "name", "content", "says"), BAD_DATASETS, ids=[c[0] for c in BAD_DATASETS])
def test_a_bad_dataset_is_refused_with_its_location_and_nothing_is_written(
    tmp_path, tiny_model_dir, case, name, content, says
):
    data = tmp_path / name
    if content is None:  # parquet: a null in the prompt column
        pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["fine", None]}), data)
    else:
        data.write_bytes(content)
    recipe_path = write_recipe(tmp_path / "r.yaml", store=tmp_path / "store", model=str(tiny_model_dir))
    fmt = "parquet" if name.endswith(".parquet") else "jsonl"
    recipe = load_recipe(recipe_path, {"data.format": fmt, "data.path": str(data)})
    storage = open_storage(recipe.storage)

    with pytest.raises((InstructionDataError, ValueError)) as info:
        run_stage(ingest.SPEC, ingest.compute, recipe, storage=storage)
    message = str(info.value)
    for expected in says:
        assert expected in message, message

    assert storage.datasets.names() == []  # no Delta table, not even an empty one
    with storage.catalog.connect() as con:
        assert con.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM stage_cache").fetchone()[0] == 0
        statuses = con.execute("SELECT status FROM stage_runs").fetchall()
    assert statuses == [("failed",)]  # recorded, so `wrl runs` shows why


BAD_RECIPES = [
    ("unknown key", "judge: {backend: local, model: m, colour: red}\n", ["judge.colour", "Extra inputs"]),
    ("bad enum", "judge: {backend: local, model: m, mode: fuzzy}\n", ["judge.mode", "'json' or 'logprob'"]),
    ("unknown backend", "judge: {backend: nowhere, model: m}\n", ["judge.backend", "nowhere"]),
    ("negative limit", "selection: {strategy: margin, top_k: -3}\n", ["selection.top_k"]),
    ("bad yaml", "judge: {backend: local, model: [unclosed\n", ["r.yaml"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "extra", "says"), BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_a_bad_recipe_is_refused_with_its_location_before_anything_exists(tmp_path, case, extra, says):
    store = tmp_path / "store"
    recipe_path = write_recipe(tmp_path / "r.yaml", store=store, model="m", extra=extra)
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe_path)
    message = str(info.value)
    assert str(recipe_path) in message or "r.yaml" in message
    for expected in says:
        assert expected in message, message
    assert not store.exists() and not Path(tmp_path / "models").exists()
