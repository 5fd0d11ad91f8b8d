"""Exports of the ladders table for the two trainers: TRL (a `datasets.Dataset`) and the official
Writing-RL verl code (train.parquet and test.parquet, as its scripts/train_writing_rl.sh reads them).

verl row, as read by Tongyi-Zhiwen/Writing-RL (README.md "Data Preparation";
verl/utils/reward_score/__init__.py; verl/utils/reward_score/writing_rl.py::compute_score;
verl/workers/reward_manager/parallel.py; scripts/create_index_file.py):

    data_source   "writing": `_default_compute_score` routes any data_source containing "writing"
                  to writing_rl.compute_score.
    prompt        chat messages: the system message of the README's example ("You are a helpful
                  assistant.", or the policy's own system prompt when it has one, so RL prompts
                  match those rung 0 was written with), then the instruction; verl's RLHFDataset
                  applies the chat template to it (data.prompt_key=prompt).
    ability       "write" (informational).
    reward_model  {"style": "rule", "ground_truth": {...}}; ParallelRewardManager passes
                  ground_truth to compute_score, which reads:
        prompt    the instruction text, put into the judge template as the question;
        target    train: the ladder, every response ascending (a list turns on dynamic reference
                  scheduling: reference = target[min(index_dict[id], len-1)]); test: ONE string,
                  the ladder's top rung, which compute_score uses as is, never reading or writing
                  the index file, so validation cannot move a rung;
        criteria  plain-text criteria for JUDGE_TEMPLATE_CRITERIA, or null for the default
                  template (ordering.criteria_text: the same text our `official` judge prompt sees);
        id        train: the row's key in running_file/index_{EXPERIMENT_NAME}.json, the decimal
                  string of its index; test: "test-<i>", which is no key of that file.
    extra_info    {"index": int, "split": str, "instruction_id": str}; passed to compute_score
                  but unused there; instruction_id is ours, for joining results back.

Departure: the README documents `id` as an int, but compute_score looks it up in a dict read back
with json.loads, whose keys are strings ("0".."data_num" from create_index_file.py), so an int id
raises KeyError. We write the decimal string str(index) instead; run create_index_file.py with
--data_num >= the number of training rows. The README shows style "rule"; we follow it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curation.ordering import criteria_text
from tasks.curation.selection import as_frame

VERL_DATA_SOURCE = "writing"
VERL_SYSTEM_MESSAGE = "You are a helpful assistant."  # the official README's example row
VERL_TEST_ID_PREFIX = "test-"  # never a key of the official index file ("0".."data_num")

HF_FEATURES = datasets.Features(
    {
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "instruction_id": datasets.Value("string"),
        "references": datasets.List(datasets.Value("string")),  # the ladder, ascending
        "reference_scores": datasets.List(datasets.Value("float64")),
        "reference_generators": datasets.List(datasets.Value("string")),
        "criteria": datasets.Value("string"),  # plain text for a judge prompt; null when none
        "criteria_json": datasets.Value("string"),  # the structured criteria, as in `instructions`
        "policy_rung": datasets.Value("int32"),  # which of `references` is the policy's own
        "split": datasets.Value("string"),  # "train" or "validation" (held out of training)
    }
)

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def _verl_schema(target: pa.DataType) -> pa.Schema:
    ground_truth = pa.struct(
        [("prompt", pa.string()), ("target", target), ("criteria", pa.string()), ("id", pa.string())]
    )
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(_MESSAGE)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", ground_truth)])),
            (
                "extra_info",
                pa.struct([("index", pa.int64()), ("split", pa.string()), ("instruction_id", pa.string())]),
            ),
        ]
    )


VERL_SCHEMA = _verl_schema(pa.list_(pa.string()))  # train: target is the ladder
VERL_TEST_SCHEMA = _verl_schema(pa.string())  # test: target is one fixed reference


def _ladder_records(ladders: pa.Table | pd.DataFrame | list[dict]) -> list[dict]:
    if isinstance(ladders, list):
        records = ladders
    elif isinstance(ladders, pa.Table):
        records = ladders.to_pylist()
    else:
        records = pa.Table.from_pandas(as_frame(ladders), preserve_index=False).to_pylist()
    for r in records:
        if not r.get("prompt"):
            raise ValueError(
                f"ladder '{r.get('instruction_id')}' has no prompt; pass `instructions` to build_ladders"
            )
    return records


def _rungs(record: dict) -> list[dict]:
    # Re-sort defensively: a hand-edited table must still export the ladder bottom first.
    return sorted(record["rungs"], key=lambda x: x["rung"])


def _split(record: dict) -> str:
    return record.get("split") or "train"  # ladders written before the validation split


def to_hf_dataset(ladders: pa.Table | pd.DataFrame | list[dict]) -> datasets.Dataset:
    """A TRL-ready dataset: conversational `prompt` plus the ladder (`HF_FEATURES`), every split."""
    rows = []
    for r in _ladder_records(ladders):
        rungs = _rungs(r)
        rows.append(
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "instruction_id": r["instruction_id"],
                "references": [x["text"] for x in rungs],
                "reference_scores": [x["score"] for x in rungs],
                "reference_generators": [x["generator"] for x in rungs],
                "criteria": criteria_text(r.get("criteria_json")),
                "criteria_json": r.get("criteria_json"),
                "policy_rung": r.get("policy_rung") or 0,
                "split": _split(r),
            }
        )
    return datasets.Dataset.from_list(rows, features=HF_FEATURES)


def to_verl_rows(
    ladders: pa.Table | pd.DataFrame | list[dict],
    split: str = "train",
    *,
    start_index: int = 0,
    system_prompt: str | None = VERL_SYSTEM_MESSAGE,
) -> list[dict[str, Any]]:
    """Rows in the official Writing-RL verl format (module docstring), in ladder order, for every
    ladder given. split "train": `target` is the ladder and `id` the row's index as a string;
    any other split (a test set): `target` is the top rung and `id` is "test-<index>"."""
    rows = []
    for i, r in enumerate(_ladder_records(ladders), start=start_index):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": r["prompt"]})
        texts = [x["text"] for x in _rungs(r)]
        training = split == "train"
        rows.append(
            {
                "data_source": VERL_DATA_SOURCE,
                "prompt": messages,
                "ability": "write",
                "reward_model": {
                    "style": "rule",
                    "ground_truth": {
                        "prompt": r["prompt"],
                        "target": texts if training else texts[-1],
                        "criteria": criteria_text(r.get("criteria_json")),
                        "id": str(i) if training else f"{VERL_TEST_ID_PREFIX}{i}",
                    },
                },
                "extra_info": {"index": i, "split": split, "instruction_id": r["instruction_id"]},
            }
        )
    return rows


def write_verl_parquet(
    ladders: pa.Table | pd.DataFrame | list[dict],
    path: str | Path,
    split: str = "train",
    *,
    start_index: int = 0,
    system_prompt: str | None = VERL_SYSTEM_MESSAGE,
) -> Path:
    """Writes `to_verl_rows` of every ladder given to `path` with pyarrow and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = to_verl_rows(ladders, split, start_index=start_index, system_prompt=system_prompt)
    schema = VERL_SCHEMA if split == "train" else VERL_TEST_SCHEMA
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_verl_splits(
    ladders: pa.Table | pd.DataFrame | list[dict],
    folder: str | Path,
    *,
    system_prompt: str | None = VERL_SYSTEM_MESSAGE,
) -> dict[str, Path]:
    """`folder`/train.parquet (the training ladders) and, when there is a validation split,
    `folder`/test.parquet (the held-out ladders): the files scripts/train_writing_rl.sh reads as
    data.train_files and data.val_files. Returns the paths written, by split."""
    records = _ladder_records(ladders)
    train = [r for r in records if _split(r) == "train"]
    held_out = [r for r in records if _split(r) != "train"]
    folder = Path(folder)
    written = {
        "train": write_verl_parquet(train, folder / "train.parquet", "train", system_prompt=system_prompt)
    }
    if held_out:
        written["test"] = write_verl_parquet(
            held_out, folder / "test.parquet", "test", system_prompt=system_prompt
        )
    return written
