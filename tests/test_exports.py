"""Trainer exports: the TRL dataset round trip and the official Writing-RL verl parquet files
(train.parquet and test.parquet, loaded as the official code loads them)."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pyarrow as pa
import pytest

from tasks.curation import (
    LADDERS_SCHEMA,
    VERL_SYSTEM_MESSAGE,
    to_hf_dataset,
    to_verl_rows,
    write_verl_parquet,
    write_verl_splits,
)

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
            "rungs": rungs("wb-1", [("c2", 6.0), ("policy", 8.0), ("c1", 9.0)]),
            "n_rungs": 3,
            "policy_rung": 1,
            "split": "train",
            "score_gaps": [2.0, 1.0],
        },
        {
            "instruction_id": "wb-2",
            "prompt": "Write a story.",
            "criteria_json": "[]",
            "rungs": rungs("wb-2", [("policy", None), ("c1", 7.0)]),
            "n_rungs": 2,
            "policy_rung": 0,
            "split": "train",
            "score_gaps": [None],
        },
        {
            "instruction_id": "wb-3",
            "prompt": "Write a letter.",
            "criteria_json": "[]",
            "rungs": rungs("wb-3", [("policy", 5.0), ("c1", 7.0), ("c2", 8.0)]),
            "n_rungs": 3,
            "policy_rung": 0,
            "split": "validation",
            "score_gaps": [2.0, 1.0],
        },
    ]
    return pa.Table.from_pylist(rows, schema=LADDERS_SCHEMA)


def test_hf_dataset_round_trip(tmp_path):
    ds = to_hf_dataset(_ladders())
    ds.save_to_disk(str(tmp_path / "ds"))
    back = datasets.load_from_disk(str(tmp_path / "ds"))
    assert back.features == ds.features and len(back) == 3
    row = back[0]
    assert row["prompt"] == [{"role": "user", "content": "Write an essay."}]
    assert row["instruction_id"] == "wb-1"
    assert row["references"] == ["c2 on wb-1", "policy on wb-1", "c1 on wb-1"]
    assert row["reference_scores"] == [6.0, 8.0, 9.0] and row["reference_generators"][1] == "policy"
    assert row["policy_rung"] == 1 and [r["split"] for r in back] == ["train", "train", "validation"]
    assert row["criteria"] == "1. Depth: Goes deep" and back[1]["criteria"] is None
    assert back[1]["reference_scores"] == [None, 7.0]


def test_verl_parquet_matches_the_official_format(tmp_path):
    path = write_verl_parquet(_ladders(), tmp_path / "data" / "train.parquet", split="train")
    df = pd.read_parquet(path)
    assert list(df.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    first = df.iloc[0]
    assert first["data_source"] == "writing" and first["ability"] == "write"
    assert [dict(m) for m in first["prompt"]] == [
        {"role": "system", "content": "You are a helpful assistant."},  # the official example's
        {"role": "user", "content": "Write an essay."},
    ]
    rm = first["reward_model"]
    assert rm["style"] == "rule"
    gt = rm["ground_truth"]
    assert list(gt["target"]) == ["c2 on wb-1", "policy on wb-1", "c1 on wb-1"]  # ascending
    assert gt["prompt"] == "Write an essay." and gt["criteria"] == "1. Depth: Goes deep"
    # `id` keys the official JSON index file, whose keys are strings of the row index.
    assert [r["ground_truth"]["id"] for r in df["reward_model"]] == ["0", "1", "2"]
    assert [e["index"] for e in df["extra_info"]] == [0, 1, 2]
    assert [e["instruction_id"] for e in df["extra_info"]] == ["wb-1", "wb-2", "wb-3"]
    assert df.iloc[1]["reward_model"]["ground_truth"]["criteria"] is None


def _official_reference(ground_truth: dict, index_file: dict) -> tuple[str, bool]:
    """What writing_rl.compute_score compares with, and whether it reads the index file: the
    official branch on `target`'s type, line for line."""
    reference = ground_truth["target"]
    if isinstance(reference, list):
        chosen_index = min(index_file[ground_truth["id"]], len(reference) - 1)  # KeyError if absent
        return reference[chosen_index], True
    return reference, False


def test_verl_splits_load_with_datasets_into_the_types_the_official_reward_branches_on(tmp_path):
    written = write_verl_splits(_ladders(), tmp_path / "data")
    assert sorted(written) == ["test", "train"]
    # verl's RLHFDataset (verl/utils/dataset/rl_dataset.py) loads each file on its own, like this.
    train, test = (
        datasets.load_dataset("parquet", data_files=str(written[s]))["train"] for s in ("train", "test")
    )
    assert [r["extra_info"]["instruction_id"] for r in train] == ["wb-1", "wb-2"]
    assert [r["extra_info"]["instruction_id"] for r in test] == ["wb-3"]
    # The official index file: json.dump of {0..data_num: 0}, read back with string keys.
    index_file = json.loads(json.dumps({i: 0 for i in range(len(train) + 1)}))
    for row in train:
        gt = row["reward_model"]["ground_truth"]
        assert isinstance(gt["target"], list) and isinstance(gt["id"], str)
        assert _official_reference(gt, index_file) == (gt["target"][0], True)  # the lowest rung
    for row in test:
        gt = row["reward_model"]["ground_truth"]
        assert isinstance(gt["target"], str) and isinstance(gt["id"], str)
        # A fixed reference, the ladder's top: validation never reads or moves an index.
        assert _official_reference(gt, index_file) == ("c2 on wb-3", False)
        assert gt["id"] not in index_file and gt["id"] == "test-0"
        assert row["prompt"][0] == {"role": "system", "content": VERL_SYSTEM_MESSAGE}


def test_verl_splits_without_a_validation_split_write_train_only(tmp_path):
    table = [r for r in _ladders().to_pylist() if r["split"] == "train"]
    assert sorted(write_verl_splits(table, tmp_path)) == ["train"]
    assert not (tmp_path / "test.parquet").exists()


def test_verl_rows_options():
    rows = to_verl_rows(_ladders(), split="train", start_index=100, system_prompt=None)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Write an essay."}]
    assert rows[1]["reward_model"]["ground_truth"]["id"] == "101"
    assert rows[1]["extra_info"] == {"index": 101, "split": "train", "instruction_id": "wb-2"}
    test = to_verl_rows(_ladders(), split="test", system_prompt="Be brief.")
    assert test[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert test[0]["reward_model"]["ground_truth"]["target"] == "c1 on wb-1"


def test_missing_prompt_refused():
    table = _ladders().to_pylist()
    table[0]["prompt"] = None
    with pytest.raises(ValueError, match="has no prompt"):
        to_verl_rows(table)
