"""A planted API key, a whole flow run (successes and failures), then a search of every byte the
system wrote: the DuckDB catalog, the Delta tables, Prefect's database and results, logs, stdout."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from flows.build_dataset import build_dataset
from tests.support.fault_server import Fault, FaultServer
from tests.support.recipes import write_recipe

ENV = "WRL_PLANTED_TEST_KEY"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle in path.read_bytes():
                    hits.append(path)
            except OSError:
                pass
    return hits


def test_a_planted_key_appears_in_nothing_the_system_writes(
    prefect_harness, tmp_path, monkeypatch, caplog, capsys
):
    key = f"sk-PLANTED-{uuid.uuid4().hex}"
    monkeypatch.setenv(ENV, key)
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "store"
    # The second instruction always fails with a 401 whose body echoes the key, as a careless
    # proxy might; the rest succeed (one after a 500).
    with FaultServer(
        [Fault("500")],
        triggers={"college application": Fault("401", message=f"Incorrect API key provided: {key}")},
    ) as server:
        recipe = write_recipe(tmp_path / "r.yaml", store=store, model="judge-model", limit=6)
        text = recipe.read_text().replace(
            "    kind: transformers\n    device: cpu\n    dtype: float32\n    max_batch_size: 4",
            f"    kind: openai-compatible\n    base_url: {server.openai_base_url}\n    api_key_env: {ENV}\n"
            "    max_retries: 1",
        )
        recipe.write_text(text)
        summary = build_dataset(recipe_path=str(recipe))
        auth_headers = {r.headers.get("authorization") for r in server.requests}

    assert auth_headers == {f"Bearer {key}"}  # the key did travel: the search below can fail
    stage = {s["stage"]: s for s in summary["stages"]}["generate"]
    assert stage["summary"]["llm"]["requests"] == 6

    needle = key.encode()
    assert _files_containing(tmp_path, needle) == []  # catalog.duckdb, Delta tables, recipe
    assert _files_containing(Path(os.environ["PREFECT_HOME"]), needle) == []  # Prefect DB, results
    assert key not in caplog.text
    captured = capsys.readouterr()
    assert key not in captured.out and key not in captured.err
    assert key not in str(summary)
