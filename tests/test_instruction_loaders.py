"""Instruction loaders: real benchmark files load with stable ids; bad input fails once, listing every row."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.schema import DATA_FORMATS, DataConfig
from tasks.instructions import (
    LOADERS,
    InstructionDataError,
    RowProblem,
    instructions_from_arrow,
    instructions_to_arrow,
    load_instructions,
    source_fingerprint,
)
from tasks.instructions.loaders import RUBRIC_BANDS, register_loader
from tasks.text import detect_language


def _cfg(fmt: str, path, **kw) -> DataConfig:
    return DataConfig(format=fmt, path=Path(path), **kw)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _hash_id(prefix: str, prompt: str) -> str:
    return f"{prefix}-{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_matches_data_formats():
    assert set(LOADERS) == set(DATA_FORMATS)


def test_registering_twice_or_an_unknown_name_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_loader("jsonl")(lambda cfg: [])
    with pytest.raises(ValueError, match="not allowed by the config schema"):
        register_loader("csv")(lambda cfg: [])
    assert set(LOADERS) == set(DATA_FORMATS)


# ---------------------------------------------------------------------------------------------
# Real benchmark files
# ---------------------------------------------------------------------------------------------


def test_writingbench_length_subset(shared_benchmarks):
    rows = load_instructions(_cfg("writingbench", shared_benchmarks / "writingbench/length_subset.jsonl"))
    assert len(rows) == 222
    assert all(len(r.criteria) == 5 for r in rows)
    assert all(
        set(c.rubric) == set(RUBRIC_BANDS) and c.name and c.description for r in rows for c in r.criteria
    )
    assert len({r.id for r in rows}) == 222
    first = rows[0]
    assert first.id == "wb-16" and first.metadata["index"] == 16
    assert (first.genre, first.subgenre) == ("Academic & Engineering", "Introduction")
    assert first.source == "writingbench:length_subset.jsonl"
    assert all(r.required_length is None for r in rows)
    assert {r.language for r in rows} == {"en", "zh"}


def test_writingbench_requirement_only_subset_has_one_or_two_criteria(shared_benchmarks):
    rows = load_instructions(_cfg("writingbench", shared_benchmarks / "writingbench/length_subset_C.jsonl"))
    assert len(rows) == 222
    assert Counter(len(r.criteria) for r in rows) == {1: 218, 2: 4}
    full = load_instructions(_cfg("writingbench", shared_benchmarks / "writingbench/length_subset.jsonl"))
    assert [r.id for r in rows] == [r.id for r in full]  # same queries, same ids


def test_writingbench_v1_criteria_field(shared_benchmarks):
    path = shared_benchmarks / "writingbench/format_subset_v1.jsonl"
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    rows = load_instructions(_cfg("writingbench", path))
    assert len(rows) == n_lines == 342
    assert all(len(r.criteria) == 5 for r in rows)
    assert rows[0].id == "wb-1" and rows[0].criteria[0].rubric["9-10"]


def test_longbench_write(shared_benchmarks):
    cfg = _cfg("longbench_write", shared_benchmarks / "longbench_write/longbench_write.jsonl")
    rows = load_instructions(cfg)
    assert len(rows) == 120
    assert Counter(r.language for r in rows) == {"en": 60, "zh": 60}
    assert all(r.required_length and r.required_length > 0 for r in rows)
    assert all(r.id == _hash_id("lbw", r.prompt) for r in rows)
    assert len({r.id for r in rows}) == 120
    assert rows[0].subgenre == "Community Forum" and rows[0].required_length == 100
    assert [r.id for r in load_instructions(cfg)] == [r.id for r in rows]


def test_creative_writing_v3(shared_benchmarks):
    path = shared_benchmarks / "creative_writing_v3/creative_writing_prompts_v3.json"
    source = json.loads(path.read_text(encoding="utf-8"))
    rows = load_instructions(_cfg("creative_writing_v3", path))
    assert len(source) == 32
    assert len(rows) == sum(len(p["seed_modifiers"]) for p in source.values())
    assert not any("<SEED>" in r.prompt for r in rows)
    assert len({r.id for r in rows}) == len(rows)
    assert [r.id for r in load_instructions(_cfg("creative_writing_v3", path))] == [r.id for r in rows]
    first = rows[0]
    assert first.id == "cw3-1-s1" and first.genre == source["1"]["category"]
    assert first.metadata == {
        "title": source["1"]["title"],
        "prompt_id": "1",
        "seed_index": 1,
        "seed_modifier": source["1"]["seed_modifiers"][0],
    }
    assert source["1"]["seed_modifiers"][0] in first.prompt
    # The benchmark folder works too: the prompts file is found inside it.
    assert len(load_instructions(_cfg("creative_writing_v3", path.parent))) == len(rows)


def test_real_file_fingerprint_is_stable(shared_benchmarks):
    cfg = _cfg("longbench_write", shared_benchmarks / "longbench_write/longbench_write.jsonl")
    expected = hashlib.sha256(cfg.path.read_bytes()).hexdigest()
    assert source_fingerprint(cfg) == source_fingerprint(cfg) == expected


# ---------------------------------------------------------------------------------------------
# Generic formats
# ---------------------------------------------------------------------------------------------

CRITERION = {
    "name": "Clarity",
    "criteria_description": "Is it clear?",
    **{band: f"band {band}" for band in RUBRIC_BANDS},
}
GENERIC_ROWS = [
    {
        "id": "r1",
        "prompt": "Write a haiku about rain.",
        "genre": "poem",
        "subgenre": "haiku",
        "required_length": 17,
        "criteria": [CRITERION],
        "audience": "children",
    },
    {"id": "r2", "prompt": "写一篇关于春天的短文。", "required_length": 300},
    {"id": 3, "prompt": "Explain TCP to a child.", "language": "en-GB"},
]


def _check_generic(rows, source: str) -> None:
    assert [r.id for r in rows] == ["r1", "r2", "3"]
    r1, r2, r3 = rows
    assert r1.source == source
    assert (r1.genre, r1.subgenre, r1.required_length, r1.language) == ("poem", "haiku", 17, "en")
    assert r1.criteria[0].name == "Clarity" and r1.criteria[0].rubric["7-8"] == "band 7-8"
    assert r1.metadata == {"audience": "children"}
    assert r2.language == "zh" and r2.criteria == ()
    assert r3.language == "en-GB"  # from the row, not detected


def test_jsonl_round_trip():
    _write_jsonl(Path("data.jsonl"), GENERIC_ROWS)
    rows = load_instructions(_cfg("jsonl", "data.jsonl"))  # relative: resolves against the cwd
    _check_generic(rows, "jsonl:data.jsonl")
    assert instructions_from_arrow(instructions_to_arrow(rows)) == rows


def test_jsonl_custom_fields_content_hash_ids_and_limit():
    prompts = [f"Write story number {i}." for i in range(5)]
    _write_jsonl(Path("q.jsonl"), [{"question": p, "id": "ignored"} for p in prompts])
    cfg = _cfg("jsonl", "q.jsonl", prompt_field="question", id_field=None)
    rows = load_instructions(cfg)
    assert [r.id for r in rows] == [_hash_id("jsonl", p) for p in prompts]
    assert [r.id for r in load_instructions(cfg)] == [r.id for r in rows]
    assert rows[0].metadata == {"id": "ignored"}
    limited = load_instructions(_cfg("jsonl", "q.jsonl", prompt_field="question", id_field=None, limit=2))
    assert [r.prompt for r in limited] == prompts[:2]


def test_jsonl_folder_reads_every_file_in_order(tmp_path):
    Path("d/sub").mkdir(parents=True)
    _write_jsonl(Path("d/b.jsonl"), [{"id": "b", "prompt": "B"}])
    _write_jsonl(Path("d/a.jsonl"), [{"id": "a", "prompt": "A"}])
    _write_jsonl(Path("d/sub/c.jsonl"), [{"id": "c", "prompt": "C"}])
    rows = load_instructions(_cfg("jsonl", tmp_path / "d"))
    assert [(r.id, r.source) for r in rows] == [
        ("a", "jsonl:a.jsonl"),
        ("b", "jsonl:b.jsonl"),
        ("c", "jsonl:sub/c.jsonl"),
    ]


def _columnar(rows: list[dict]) -> list[dict]:
    """Every row with every column (from_pylist/from_list take the columns from the first row)."""
    columns = dict.fromkeys(k for r in rows for k in r)
    return [{k: (str(r[k]) if k == "id" else r.get(k)) for k in columns} for r in rows]


def test_parquet_round_trip():
    pq.write_table(pa.Table.from_pylist(_columnar(GENERIC_ROWS)), "data.parquet")
    _check_generic(load_instructions(_cfg("parquet", "data.parquet")), "parquet:data.parquet")


def test_parquet_bad_row_names_the_row():
    table = pa.Table.from_pylist(
        [
            {"id": "a", "prompt": "fine", "required_length": 100},
            {"id": "b", "prompt": "fine too", "required_length": 100},
            {"id": "c", "prompt": None, "required_length": -1},
        ]
    )
    pq.write_table(table, "bad.parquet")
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("parquet", "bad.parquet"))
    assert info.value.problems == [
        RowProblem("bad.parquet:row 3", "prompt", "missing"),
        RowProblem("bad.parquet:row 3", "required_length", "must be positive, got -1"),
    ]
    assert "bad.parquet:row 3 prompt: missing" in str(info.value)


def test_hf_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _columnar(GENERIC_ROWS)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "plain"))
    _check_generic(load_instructions(_cfg("hf", "plain")), "hf:plain")

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    )
    dd.save_to_disk(str(tmp_path / "dict"))
    assert [r.id for r in load_instructions(_cfg("hf", "dict", split="test"))] == ["r1"]
    assert load_instructions(_cfg("hf", "dict"))[0].source == "hf:dict[train]"
    with pytest.raises(InstructionDataError, match=r"no split 'validation'; available: test, train"):
        load_instructions(_cfg("hf", "dict", split="validation"))


def test_hf_bad_row_location(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"id": "a", "prompt": "ok"}, {"id": "b", "prompt": " "}])
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hfbad"))
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("hf", "hfbad"))
    assert [(p.location, p.field) for p in info.value.problems] == [("hfbad[train]:row 2", "prompt")]


# ---------------------------------------------------------------------------------------------
# Bad input: one error listing every problem
# ---------------------------------------------------------------------------------------------


def test_bad_jsonl_reports_every_problem_by_line():
    lines = [
        b'{"id": "a", "prompt": "A good prompt."}',  # 1
        b'{"id": "b"}',  # 2 missing prompt
        b'{"id": "c", "prompt": "   "}',  # 3 empty prompt
        b'{"id": "a", "prompt": "Another prompt."}',  # 4 duplicate of line 1
        b"   ",  # 5 blank: skipped
        b'{"id": "d", "prompt": 42}',  # 6 wrong type
        b'{"id": "e", "prompt": "caf\xff"}',  # 7 invalid UTF-8
        b'{"id": "f", "prompt": "p6", "required_length": 0}',  # 8
        b'{"id": "g", "prompt": "p7", "required_length": -5}',  # 9
        b'{"id": "h", "prompt": "p8", "required_length": "abc"}',  # 10
        b'{"id": "i", "prompt": "p9", "required_length": true}',  # 11
        b'{"id": "j", "prompt": "broken',  # 12 bad JSON
        b'{"id": "k", "prompt": "p11", "criteria": "be good"}',  # 13 criteria not a list
        b'{"id": "l", "prompt": ["a", "list"]}',  # 14 wrong type
        b'{"id": "m", "prompt": "Fine again."}',  # 15
    ]
    Path("bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("jsonl", "bad.jsonl"))
    err = info.value
    assert [(p.location, p.field) for p in err.problems] == [
        ("bad.jsonl:2", "prompt"),
        ("bad.jsonl:3", "prompt"),
        ("bad.jsonl:4", "id"),
        ("bad.jsonl:6", "prompt"),
        ("bad.jsonl:7", "utf-8"),
        ("bad.jsonl:8", "required_length"),
        ("bad.jsonl:9", "required_length"),
        ("bad.jsonl:10", "required_length"),
        ("bad.jsonl:11", "required_length"),
        ("bad.jsonl:12", "json"),
        ("bad.jsonl:13", "criteria"),
        ("bad.jsonl:14", "prompt"),
    ]
    message = str(err)
    assert message.splitlines()[0] == "12 problems in bad.jsonl:"
    for expected in [
        "bad.jsonl:2 prompt: missing",
        "bad.jsonl:3 prompt: is empty (whitespace only)",
        "bad.jsonl:4 id: duplicate id 'a', first at bad.jsonl:1",
        "bad.jsonl:6 prompt: must be a string, got int 42",
        "bad.jsonl:7 utf-8: invalid UTF-8",
        "bad.jsonl:8 required_length: must be positive, got 0",
        "bad.jsonl:9 required_length: must be positive, got -5",
        "bad.jsonl:10 required_length: must be a positive whole number of words, got str 'abc'",
        "bad.jsonl:11 required_length: must be a positive whole number of words, got bool True",
        "bad.jsonl:12 json: not valid JSON",
        "bad.jsonl:13 criteria: must be a list of criteria, got str 'be good'",
        "bad.jsonl:14 prompt: must be a string, got list",
    ]:
        assert expected in message
    assert isinstance(err, ValueError)


def test_duplicate_prompts_without_ids_are_reported():
    _write_jsonl(Path("dup.jsonl"), [{"prompt": "Same."}, {"prompt": "Other."}, {"prompt": "Same."}])
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("jsonl", "dup.jsonl"))
    (problem,) = info.value.problems
    assert problem.location == "dup.jsonl:3" and "first at dup.jsonl:1" in problem.message


def test_bad_criteria_entries():
    _write_jsonl(
        Path("c.jsonl"), [{"id": "x", "prompt": "p", "criteria": [{"criteria_description": "d"}, 5]}]
    )
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("jsonl", "c.jsonl"))
    assert [(p.location, p.field) for p in info.value.problems] == [
        ("c.jsonl:1", "criteria[0].name"),
        ("c.jsonl:1", "criteria[1]"),
    ]


def test_bad_benchmark_rows():
    _write_jsonl(
        Path("wb.jsonl"),
        [
            {"index": 1, "domain1": "A", "domain2": "B", "query": "q", "checklist": [CRITERION]},
            {"index": 2, "domain1": "A", "domain2": "B", "query": "", "checklist": "x"},
            {"domain1": "A", "query": "q3", "criteria": [CRITERION]},
            {"index": 1, "query": "q4", "checklist": []},
        ],
    )
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("writingbench", "wb.jsonl"))
    assert [(p.location, p.field) for p in info.value.problems] == [
        ("wb.jsonl:2", "query"),
        ("wb.jsonl:2", "checklist"),
        ("wb.jsonl:3", "index"),
        ("wb.jsonl:4", "checklist"),
        ("wb.jsonl:4", "id"),
    ]
    _write_jsonl(Path("lbw.jsonl"), [{"prompt": "p", "type": "t", "length": 0}, {"prompt": "q", "type": "t"}])
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("longbench_write", "lbw.jsonl"))
    assert [(p.location, p.field, p.message) for p in info.value.problems] == [
        ("lbw.jsonl:1", "length", "must be positive, got 0"),
        ("lbw.jsonl:2", "length", "missing"),
    ]


def test_bad_creative_writing_prompts_name_the_prompt():
    doc = {
        "1": {"category": "c", "title": "t", "writing_prompt": "Write. <SEED>", "seed_modifiers": ["a", "b"]},
        "2": {"category": "c", "title": "t", "writing_prompt": "No slot here.", "seed_modifiers": ["a"]},
        "3": {"category": "c", "title": "t", "writing_prompt": "Write. <SEED>", "seed_modifiers": []},
    }
    Path("cw.json").write_text(json.dumps(doc))
    with pytest.raises(InstructionDataError) as info:
        load_instructions(_cfg("creative_writing_v3", "cw.json"))
    assert [str(p) for p in info.value.problems] == [
        "cw.json:prompt 2 writing_prompt: prompt '2' has no <SEED> slot",
        "cw.json:prompt 3 seed_modifiers: prompt '3' has an empty seed list",
    ]
    Path("cw.json").write_text('{"1": {"writing_prompt": "<SEED>", "seed_modifiers": ["a"]},\n "1": {}}')
    with pytest.raises(InstructionDataError, match="key '1' appears more than once"):
        load_instructions(_cfg("creative_writing_v3", "cw.json"))


def test_missing_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match=r"nowhere\.jsonl does not exist"):
        load_instructions(_cfg("jsonl", "nowhere.jsonl"))


# ---------------------------------------------------------------------------------------------
# Fingerprints and language
# ---------------------------------------------------------------------------------------------


def test_fingerprint_changes_with_the_data(tmp_path):
    path = _write_jsonl(Path("f.jsonl"), [{"id": "a", "prompt": "A"}])
    cfg = _cfg("jsonl", "f.jsonl")
    before = source_fingerprint(cfg)
    assert before == hashlib.sha256(path.read_bytes()).hexdigest()
    _write_jsonl(path, [{"id": "a", "prompt": "A!"}])
    assert source_fingerprint(cfg) != before

    Path("d").mkdir()
    _write_jsonl(Path("d/x.jsonl"), [{"id": "a", "prompt": "A"}])
    folder = _cfg("jsonl", tmp_path / "d")
    seen = {source_fingerprint(folder)}
    Path("d/x.jsonl").rename("d/y.jsonl")
    seen.add(source_fingerprint(folder))
    _write_jsonl(Path("d/z.jsonl"), [])
    seen.add(source_fingerprint(folder))
    assert len(seen) == 3


def test_builtin_fingerprint_hashes_the_packaged_sample():
    from importlib.resources import files

    data = files("tasks.instructions").joinpath("builtin_sample.jsonl").read_bytes()
    assert source_fingerprint(DataConfig()) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Write a story.", "en"),
        ("写一篇故事。", "zh"),
        # A Chinese request for an English essay, and an English request quoting a Chinese name.
        (
            "请以“fall in love with tea culture”为题 写一篇英语作文 The story has to convey a sense of culture",
            "en",
        ),
        ("An essay about 北京 and its alleyways, 1200 words.", "en"),
    ],
)
def test_detect_language(text, language):
    assert detect_language(text) == language
