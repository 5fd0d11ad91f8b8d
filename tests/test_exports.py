"""Trainer exports: the TRL dataset round trip and the official Writing-RL verl parquet."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pyarrow as pa
import pytest

from tasks.curation import LADDERS_SCHEMA, to_hf_dataset, to_verl_rows, write_verl_parquet

CRITERIA = json.dumps([{"name": "Depth", "description": "Goes deep", "rubric": {}}])


def _ladders() -> pa.Table:
    def rungs(iid, scores):
        return [
            {"rung": i, "generator": g, "score": s, "text": f"{g} on {iid}"}
            for i, (g, s) in enumerate(scores)
        ]

    rows = [
        {
            "instruction_id": "wb-1",
            "prompt": "Write an essay.",
            "criteria_json": CRITERIA,
            "rungs": rungs("wb-1", [("policy", 8.0), ("c2", 6.0), ("c1", 9.0)]),
            "n_rungs": 3,
            "score_gaps": [-2.0, 3.0],
        },
        {
            "instruction_id": "wb-2",
            "prompt": "Write a story.",
            "criteria_json": "[]",
            "rungs": rungs("wb-2", [("policy", None), ("c1", 7.0)]),
            "n_rungs": 2,
            "score_gaps": [None],
        },
    ]
    return pa.Table.from_pylist(rows, schema=LADDERS_SCHEMA)


def test_hf_dataset_round_trip(tmp_path):
    ds = to_hf_dataset(_ladders())
    ds.save_to_disk(str(tmp_path / "ds"))
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert back.features == ds.features and len(back) == 2
    row = back[0]
    assert row["prompt"] == [{"role": "user", "content": "Write an essay."}]
    assert row["instruction_id"] == "wb-1"
    assert row["references"] == ["policy on wb-1", "c2 on wb-1", "c1 on wb-1"]
    assert row["reference_scores"] == [8.0, 6.0, 9.0] and row["reference_generators"][0] == "policy"
    assert row["criteria"] == "1. Depth: Goes deep" and back[1]["criteria"] is None
    assert back[1]["reference_scores"] == [None, 7.0]


def test_verl_parquet_matches_the_official_format(tmp_path):
    path = write_verl_parquet(_ladders(), tmp_path / "data" / "train.parquet", split="train")
    df = pd.read_parquet(path)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    first = df.iloc[0]
    assert first["data_source"] == "writing" and first["ability"] == "write"
    assert [dict(m) for m in first["prompt"]] == [{"role": "user", "content": "Write an essay."}]
    rm = first["reward_model"]
    assert rm["style"] == "rule"
    gt = rm["ground_truth"]
    assert list(gt["target"]) == ["policy on wb-1", "c2 on wb-1", "c1 on wb-1"]  # rung 0 first
    assert gt["prompt"] == "Write an essay." and gt["criteria"] == "1. Depth: Goes deep"
    # `id` keys the official JSON index file, whose keys are strings of the row index.
    assert [r["ground_truth"]["id"] for r in df["reward_model"]] == ["0", "1"]
    assert [e["index"] for e in df["extra_info"]] == [0, 1]
    assert [e["instruction_id"] for e in df["extra_info"]] == ["wb-1", "wb-2"]
    assert df.iloc[1]["reward_model"]["ground_truth"]["criteria"] is None
    index_file = json.loads(json.dumps({i: 0 for i in range(len(df) + 1)}))  # as create_index_file.py
    assert all(r["ground_truth"]["id"] in index_file for r in df["reward_model"])


def test_verl_rows_options():
    rows = to_verl_rows(
        _ladders(), split="test", start_index=100, system_prompt="You are a helpful assistant."
    )
    assert rows[0]["prompt"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert rows[1]["reward_model"]["ground_truth"]["id"] == "101"
    assert rows[1]["extra_info"] == {"index": 101, "split": "test", "instruction_id": "wb-2"}


def test_missing_prompt_refused():
    table = _ladders().to_pylist()
    table[0]["prompt"] = None
    with pytest.raises(ValueError, match="has no prompt"):
        to_verl_rows(table)
