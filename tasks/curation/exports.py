"""Exports of the ladders table for the two trainers: TRL (a `datasets.Dataset`) and the official
Writing-RL verl code (a parquet file of verl RL rows).

verl row, as read by Tongyi-Zhiwen/Writing-RL (README.md "Data Preparation";
verl/utils/reward_score/__init__.py; verl/utils/reward_score/writing_rl.py::compute_score;
verl/workers/reward_manager/parallel.py; scripts/create_index_file.py):

    data_source   "writing": `_default_compute_score` routes any data_source containing "writing"
                  to writing_rl.compute_score.
    prompt        chat messages [{"role": "user", "content": instruction}] (a system message first
                  when `system_prompt` is given, as in the README example); verl's RLHFDataset
                  applies the chat template to it (data.prompt_key=prompt).
    ability       "write" (informational).
    reward_model  {"style": "rule", "ground_truth": {...}}; ParallelRewardManager passes
                  ground_truth to compute_score, which reads:
        prompt    the instruction text, put into the judge template as the question;
        target    references ascending (rung 0, the policy's own response, first). A list turns on
                  dynamic reference scheduling: reference = target[min(index_dict[id], len-1)];
        criteria  plain-text criteria for JUDGE_TEMPLATE_CRITERIA, or null for the default
                  template (see ordering.criteria_text);
        id        the row's key in running_file/index_{EXPERIMENT_NAME}.json.
    extra_info    {"index": int, "split": str, "instruction_id": str}; passed to compute_score
                  but unused there; instruction_id is ours, for joining results back.

Departure: the README documents `id` as an int, but compute_score looks it up in a dict read back
with json.loads, whose keys are strings ("0".."data_num" from create_index_file.py), so an int id
raises KeyError. We write the decimal string str(index) instead. `index` runs from `start_index`;
run create_index_file.py with --data_num >= the largest index, and give a test split a disjoint
`start_index` (both splits share one index file). The README shows style "rule"; we follow it.
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

HF_FEATURES = datasets.Features(
    {
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "instruction_id": datasets.Value("string"),
        "references": datasets.List(datasets.Value("string")),  # rung 0 (policy) first, ascending
        "reference_scores": datasets.List(datasets.Value("float64")),
        "reference_generators": datasets.List(datasets.Value("string")),
        "criteria": datasets.Value("string"),  # plain text for a judge prompt; null when none
        "criteria_json": datasets.Value("string"),  # the structured criteria, as in `instructions`
    }
)

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(_MESSAGE)),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    ("style", pa.string()),
                    (
                        "ground_truth",
                        pa.struct(
                            [
                                ("prompt", pa.string()),
                                ("target", pa.list_(pa.string())),
                                ("criteria", pa.string()),
                                ("id", pa.string()),
                            ]
                        ),
                    ),
                ]
            ),
        ),
        (
            "extra_info",
            pa.struct([("index", pa.int64()), ("split", pa.string()), ("instruction_id", pa.string())]),
        ),
    ]
)


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
    # Re-sort defensively: a hand-edited table must still export rung 0 first.
    return sorted(record["rungs"], key=lambda x: x["rung"])


def to_hf_dataset(ladders: pa.Table | pd.DataFrame | list[dict]) -> datasets.Dataset:
    """A TRL-ready dataset: conversational `prompt` plus the ladder (`HF_FEATURES`)."""
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
            }
        )
    return datasets.Dataset.from_list(rows, features=HF_FEATURES)


def to_verl_rows(
    ladders: pa.Table | pd.DataFrame | list[dict],
    split: str = "train",
    *,
    start_index: int = 0,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Rows in the official Writing-RL verl format (module docstring), in ladder order."""
    rows = []
    for i, r in enumerate(_ladder_records(ladders), start=start_index):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": r["prompt"]})
        rows.append(
            {
                "data_source": VERL_DATA_SOURCE,
                "prompt": messages,
                "ability": "write",
                "reward_model": {
                    "style": "rule",
                    "ground_truth": {
                        "prompt": r["prompt"],
                        "target": [x["text"] for x in _rungs(r)],
                        "criteria": criteria_text(r.get("criteria_json")),
                        "id": str(i),
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
    system_prompt: str | None = None,
) -> Path:
    """Writes `to_verl_rows` to `path` (e.g. data/train.parquet, as scripts/train_writing_rl.sh
    expects) with pyarrow and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = to_verl_rows(ladders, split, start_index=start_index, system_prompt=system_prompt)
    pq.write_table(pa.Table.from_pylist(rows, schema=VERL_SCHEMA), path)
    return path
