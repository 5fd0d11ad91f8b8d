"""The sft stages on the tiny model: (prompt, response) pairs load with located errors, TRL's
SFTTrainer really trains and leaves a loadable plain model folder (and resumes a killed run), the
writer stage caches, registers its model and becomes the policy generate writes with (generate's
and train's keys change with it; a recipe without `sft:` keeps its keys), and the Reference-SFT
stage trains on the top rungs of training ladders only and is offered as an evaluation candidate.
A slow test runs both modes with SmolLM2.

Each SFT run is an `accelerate launch` process tree (seconds of start-up on its own), so the tests
share runs: one writer stage run (`writer_run`, one rank) answers every test that only reads its
result (the model, its rows and registration, lineage, keys) and is the cache hit the flow tests
start from; the runs of their own are the ones a shared run cannot be: two ranks, a failing rank, a
length limit that fails, a killed LoRA run and its resume, and the Reference-SFT stage."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.loading import ConfigError, load_recipe
from configs.schema import Recipe, SFTConfig, SFTDataConfig
from storage import DatasetRef, open_storage
from tasks.instructions import InstructionDataError
from tasks.instructions.sft_pairs import load_sft_pairs
from tasks.stages import generate, sft, train
from tasks.stages.runner import StageResult, run_stage, stage_keys
from tasks.training.sft import SFTExample, run_sft
from tests.support.accelerate_files import assert_accelerate_reads
from tests.support.paths import PROJECT_ROOT
from tests.support.recipes import write_recipe

PAIRS = [
    {"prompt": f"Write one line about {topic}.", "response": f"{topic.capitalize()} is quiet and kind. " * 2}
    for topic in ("cats", "rain", "tea", "maps")
]
TRAINER = "learning_rate: 3.0e-3, max_steps: 3, batch_size: 2, max_seq_tokens: 96, device: cpu, save_steps: 2"


def _pairs_file(path: Path, rows=PAIRS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_recipe(
    tmp_path: Path, model: Path, sft_block: str, *, judge: bool = False, rival: bool = False, extra: str = "",
    store: Path | None = None,
) -> Path:  # fmt: skip
    """tmp_path/r.yaml: the policy on `model`; with `rival`, a competitor on `model` too (the SFT
    policy's is its own). The store is tmp_path/store unless `store` names another (a shared one)."""
    judge_line = f"judge: {{backend: local, model: {model}, mode: logprob}}\n" if judge else ""
    rival_line = f"  - {{name: rival, backend: local, model: {model}, decoding: {{max_tokens: 12}}}}\n"
    return write_recipe(
        tmp_path / "r.yaml", store=store or tmp_path / "store", model=str(model), limit=2,
        extra=f"{rival_line if rival else ''}{judge_line}sft:\n{sft_block}{extra}",
    )  # fmt: skip


def _writer_block(data: Path) -> str:
    return f"  writer: {{data: {{format: jsonl, path: {data}}}}}\n  {TRAINER.replace(', ', chr(10) + '  ')}\n"


def _weights_changed(a: Path, b: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    one = dict(AutoModelForCausalLM.from_pretrained(str(a)).named_parameters())
    two = dict(AutoModelForCausalLM.from_pretrained(str(b)).named_parameters())
    return [name for name, p in one.items() if not torch.equal(p, two[name])]


# -- the data -------------------------------------------------------------------------------------


def test_pairs_load_from_jsonl_parquet_and_hf_with_their_field_names(tmp_path):
    import datasets

    rows = [{"q": r["prompt"], "a": r["response"], "extra": 1} for r in PAIRS]
    _pairs_file(tmp_path / "p.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "hf"))
    for fmt, path in (("jsonl", "p.jsonl"), ("parquet", "p.parquet"), ("hf", "hf")):
        cfg = SFTDataConfig(format=fmt, path=tmp_path / path, prompt_field="q", response_field="a", limit=3)
        pairs = load_sft_pairs(cfg)
        assert [(p.prompt, p.response) for p in pairs] == [(r["q"], r["a"]) for r in rows[:3]], fmt
    assert load_sft_pairs(SFTDataConfig(path=_pairs_file(tmp_path / "plain.jsonl")))[1].location.endswith(
        "plain.jsonl:2"
    )


BAD_PAIRS = [
    ("bad json", b'{"prompt": "a", "response": "b"}\n{"prompt": "brok\n', ["d.jsonl:2 json"]),
    ("missing response", b'{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', ["d.jsonl:2 response: missing"]),
    ("wrong type", b'{"prompt": 42, "response": "b"}\n', ["d.jsonl:1 prompt: must be a string"]),
    ("empty response", b'{"prompt": "a", "response": "  "}\n', ["d.jsonl:1 response: is empty"]),
    ("every bad row at once", b'{"prompt": "a"}\n{"response": "b"}\n', ["d.jsonl:1 response", "d.jsonl:2 prompt"]),
    ("empty file", b"", ["rows: no pairs (the input is empty)"]),
    ("parquet null response", None, ["d.parquet:row 2 response: missing"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "content", "says"), BAD_PAIRS, ids=[c[0] for c in BAD_PAIRS])
def test_bad_pairs_are_refused_with_their_file_row_and_field(tmp_path, case, content, says):
    if content is None:
        data = tmp_path / "d.parquet"
        pq.write_table(pa.table({"prompt": ["a", "b"], "response": ["fine", None]}), data)
    else:
        data = tmp_path / "d.jsonl"
        data.write_bytes(content)
    with pytest.raises(InstructionDataError) as info:
        load_sft_pairs(SFTDataConfig(format="parquet" if content is None else "jsonl", path=data))
    for expected in says:
        assert expected in str(info.value), str(info.value)


def test_a_bad_pairs_file_fails_the_writer_stage_before_anything_is_written(tmp_path, tiny_model_dir):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    recipe = load_recipe(_sft_recipe(tmp_path, tiny_model_dir, _writer_block(data)))
    storage = open_storage(recipe.storage)
    with pytest.raises(InstructionDataError, match=r"d\.jsonl:2 response: missing"):
        run_stage(sft.WRITER_SPEC, sft.compute_writer, recipe, storage=storage)
    assert storage.datasets.names() == [] and storage.training.models() == []
    assert not (storage.root / "models").exists()
    with storage.catalog.connect() as con:
        assert con.execute("SELECT status FROM stage_runs").fetchall() == [("failed",)]


def test_a_missing_file_and_an_empty_sft_block_are_refused_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sft\.writer\.data\.path: .*nowhere\.jsonl does not exist"):
        load_sft_pairs(SFTDataConfig(path=tmp_path / "nowhere.jsonl"))
    recipe = _sft_recipe(tmp_path, Path("m"), "  learning_rate: 1.0e-5\n")
    with pytest.raises(ConfigError, match="sft: set `writer`"):
        load_recipe(recipe)


def test_the_writer_needs_a_policy_backend_that_loads_a_folder(tmp_path):
    path = tmp_path / "api.yaml"
    path.write_text(f"""\
name: api
backends: {{api: {{kind: anthropic}}}}
generators: [{{name: policy, role: policy, backend: api, model: claude}}]
sft: {{writer: {{data: {{path: {tmp_path / "p.jsonl"}}}}}}}
""")
    with pytest.raises(
        ConfigError, match=r"sft\.writer: the policy 'policy' runs on backend 'api' \(anthropic\)"
    ):
        load_recipe(path)


# -- the trainer ----------------------------------------------------------------------------------


def _examples(rows=PAIRS) -> list[SFTExample]:
    return [SFTExample([{"role": "user", "content": r["prompt"]}], r["response"]) for r in rows]


def test_a_killed_lora_run_resumes_from_its_checkpoint_merges_and_is_then_reused(tmp_path, tiny_model_dir):
    """`run_sft` itself, on one rank: killed at step 3 (after checkpoint-2) it resumes from checkpoint-2,
    reports every logged step to `on_log`, learns, and writes a plain model folder (its LoRA merged)
    with its record and lineage; the work folder goes. The same call again is the finished model.
    (A full fine-tune's folder: the writer stage's, `writer_run`.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = SFTConfig(reference={"enabled": True}, learning_rate=1e-2, max_steps=4, batch_size=2,
                       max_seq_tokens=96, device="cpu", save_steps=2, lora={"r": 4, "alpha": 8})  # fmt: skip
    work, model_dir = tmp_path / "work", tmp_path / "models" / "m"
    killed_logs, logged = [], []

    def killed_at_3(step, total, logs):
        killed_logs.append((step, total, logs))
        if step == 3:
            raise KeyboardInterrupt  # as a kill would, after checkpoint-2 was written

    with pytest.raises(KeyboardInterrupt):
        run_sft(base_model=str(tiny_model_dir), examples=_examples(), sft=config, work_dir=work,
                model_dir=model_dir, lineage={"data": "test"}, on_log=killed_at_3)  # fmt: skip
    assert (work / "checkpoint-2" / "trainer_state.json").is_file() and not model_dir.exists()
    assert [(s, t) for s, t, logs in killed_logs if "loss" in logs] == [(1, 4), (2, 4), (3, 4)]
    outcome = run_sft(
        base_model=str(tiny_model_dir), examples=_examples(), sft=config, work_dir=work, model_dir=model_dir,
        lineage={"data": "test"}, on_log=lambda step, total, logs: logged.append((step, total, logs)),
    )  # fmt: skip
    assert outcome.resumed_from == 2 and outcome.steps == 4 and outcome.examples == 4 and not outcome.reused
    assert [s for s, _ in outcome.losses] == [1, 2, 3, 4]  # the killed run's first steps kept
    # The resumed run reports the steps after checkpoint-2.
    assert [(s, t) for s, t, logs in logged if "loss" in logs] == [(3, 4), (4, 4)]
    assert outcome.final_loss < outcome.losses[0][1]  # it learns the responses
    # A plain folder (loads without peft: the adapter merged), its record and lineage; no checkpoints.
    AutoModelForCausalLM.from_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(model_dir))
    assert not (model_dir / "adapter_config.json").exists()
    record = json.loads((model_dir / "wrl_sft.json").read_text())
    assert record["steps"] == 4 and record["final_loss"] == outcome.final_loss and record["resumed_from"] == 2
    assert json.loads((model_dir / "wrl_lineage.json").read_text()) == {"data": "test", "step": 4}
    assert not work.exists() and not list(model_dir.parent.glob(".*partial*"))
    changed = _weights_changed(tiny_model_dir, model_dir)
    assert changed and all("q_proj" in n or "k_proj" in n or "v_proj" in n or "o_proj" in n for n in changed)
    # The same run again (same key, same folder) is the finished model, not a retraining.
    again = run_sft(base_model=str(tiny_model_dir), examples=_examples(), sft=config, work_dir=work,
                    model_dir=model_dir)  # fmt: skip
    assert again.reused and again.steps == 4 and again.losses == outcome.losses


def test_a_length_limit_that_leaves_no_response_is_refused(tmp_path, tiny_model_dir):
    config = SFTConfig(reference={"enabled": True}, max_steps=1, max_seq_tokens=16, device="cpu")
    with pytest.raises(ValueError, match=r"sft\.max_seq_tokens=16 leaves no response token"):
        run_sft(base_model=str(tiny_model_dir), examples=_examples(), sft=config, work_dir=tmp_path / "w",
                model_dir=tmp_path / "m")  # fmt: skip
    assert not (tmp_path / "m").exists()


# -- the stages -----------------------------------------------------------------------------------


def _run(storage, recipe, name="test"):
    return storage.catalog.start_run(flow="build-dataset", recipe=name, recipe_path="r.yaml", config_hash="c",
                                     code_version="x", prefect_flow_run_id=None)  # fmt: skip


@dataclass(frozen=True)
class WriterRun:
    folder: Path
    data: Path  # the pairs file (the same path keeps the same key)
    recipe_path: Path
    recipe: Recipe
    store: Path
    run_id: str
    first: StageResult  # the one training run


@pytest.fixture(scope="module")
def writer_run(tiny_model_dir, tmp_path_factory) -> WriterRun:
    """The one SFT writer stage run the tests below share: the tiny model fully fine-tuned on PAIRS on
    one rank (TRAINER: 3 steps), with `from_sft: writer` and `from_training: base` candidates. The
    tests only read it, or run flows on its store where it is a cache hit (same data, same key)."""
    folder = tmp_path_factory.mktemp("sft-writer")
    data = _pairs_file(folder / "pairs.jsonl")
    evaluation = (
        "evaluation:\n  candidates:\n    - {name: base, from_training: base}\n    - {name: sft, from_sft: writer}\n"
        f"  benchmarks: {{writingbench: {{path: {folder / 'wb.jsonl'}}}}}\n"
    )
    path = _sft_recipe(folder, tiny_model_dir, _writer_block(data), extra=evaluation)
    recipe = load_recipe(path)
    storage = open_storage(recipe.storage)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # as every test runs (tests/conftest.py: _isolated_cwd)
        run_id = _run(storage, recipe)
        first = run_stage(sft.WRITER_SPEC, sft.compute_writer, recipe, run_id=run_id, storage=storage)
    return WriterRun(folder, data, path, recipe, folder / "store", run_id, first)


def _writer_row(run: WriterRun) -> dict:
    (row,) = open_storage(run.recipe.storage).datasets.read(run.first.outputs["sft_models"]).to_pylist()
    return row


def test_the_writer_stage_trains_registers_its_model_and_caches(writer_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first, recipe, data = writer_run.first, writer_run.recipe, writer_run.data
    storage = open_storage(recipe.storage)
    assert not first.cached and first.summary["steps"] == 3 and first.summary["examples"] == 4
    assert first.summary["ranks"] == 1 and not first.summary["reused"]
    row = _writer_row(writer_run)
    assert row["mode"] == "writer" and row["base_model"] == str(tiny_model_dir) and row["steps"] == 3
    assert row["data"] == f"jsonl:{data}" and len(row["data_fingerprint"]) == 64
    assert row["final_loss"] < row["first_loss"]  # it learns the responses
    registered = storage.training.model(row["model_id"])  # what `wrl models` lists
    assert registered["path"] == row["path"] and registered["stage_run_id"] == first.stage_run_id
    # A plain folder (a full fine-tune), its record and lineage; the work folder (checkpoints, spec,
    # log) and the partial folder are gone.
    model_dir = Path(row["path"])
    assert (model_dir / "config.json").is_file()
    AutoModelForCausalLM.from_pretrained(str(model_dir))
    AutoTokenizer.from_pretrained(str(model_dir))
    record = json.loads((model_dir / "wrl_sft.json").read_text())
    assert record["steps"] == 3 and record["ranks"] == 1 and [s for s, _ in record["losses"]] == [1, 2, 3]
    assert record["final_loss"] == row["final_loss"] and record["losses"][0][1] == row["first_loss"]
    lineage = json.loads((model_dir / "wrl_lineage.json").read_text())
    assert lineage["stage"] == "sft_writer" and lineage["step"] == 3
    assert lineage["cache_key"] == first.cache_key and lineage["data_fingerprint"] == row["data_fingerprint"]
    assert not list((storage.root / "sft").glob("*")) and not list(model_dir.parent.glob(".*partial*"))
    assert _weights_changed(tiny_model_dir, model_dir)

    second = run_stage(sft.WRITER_SPEC, sft.compute_writer, recipe, run_id=writer_run.run_id, storage=storage)
    assert second.cached and second.outputs == first.outputs and second.cache_key == first.cache_key


def test_the_writer_model_is_an_evaluation_candidate_and_leads_back_to_its_data(writer_run):
    from flows.lineage import resolve_target
    from tasks.evaluation.candidates import resolve_candidates

    row, storage = _writer_row(writer_run), open_storage(writer_run.recipe.storage)
    # Evaluation: `from_sft: writer` is it, and so is RL's step 0 (`from_training: base`).
    candidates = {c.name: c for c in resolve_candidates(writer_run.recipe, storage)}
    assert candidates["sft"].model == candidates["base"].model == row["path"]
    assert (candidates["sft"].source, candidates["base"].source) == ("sft:writer", "training:base")

    lineage = resolve_target(storage, f"model:{row['model_id']}")
    assert lineage["chain"][0]["stage"] == "sft_writer"
    assert lineage["chain"][0]["config"]["source"] == row["data_fingerprint"]


def test_the_writer_key_holds_the_data_bytes_and_the_settings(writer_run, tmp_path, tiny_model_dir):
    recipe, key = writer_run.recipe, writer_run.first.cache_key
    assert stage_keys(sft.WRITER_SPEC, recipe, {})[1] == key  # the key the run was cached under
    # The trainer's settings are in it.
    tweaked = load_recipe(writer_run.recipe_path, {"sft.seed": 1})
    assert stage_keys(sft.WRITER_SPEC, tweaked, {})[1] != key
    # New data is a new key (the source's bytes are in it, not only its path): a copy of the shared
    # recipe on its own file, whose bytes change under the same path.
    data = _pairs_file(tmp_path / "pairs.jsonl")
    copy = load_recipe(_sft_recipe(tmp_path, tiny_model_dir, _writer_block(data)))
    same = stage_keys(sft.WRITER_SPEC, copy, {})[1]
    _pairs_file(data, PAIRS[:3])
    assert stage_keys(sft.WRITER_SPEC, copy, {})[1] != same
    _pairs_file(data)
    assert stage_keys(sft.WRITER_SPEC, copy, {})[1] == same


def test_the_writer_stage_trains_on_two_cpu_ranks_as_on_one(writer_run, tmp_path, tiny_model_dir):
    """`sft.processes: 2`: the stage launches two gloo ranks (DDP), each taking one pair of every
    two-pair batch. Rank 0's losses come back, the model is loadable and registered, and it learned
    what one rank learns (same pairs per update, same losses as `writer_run`'s one rank); so the
    layout is not in the key."""
    from transformers import AutoModelForCausalLM

    # The shared run's data file, in a store of its own: the same key, trained again on two ranks.
    path = _sft_recipe(tmp_path, tiny_model_dir, _writer_block(writer_run.data) + "  processes: 2\n")
    recipe = load_recipe(path)
    storage = open_storage(recipe.storage)
    result = run_stage(
        sft.WRITER_SPEC, sft.compute_writer, recipe, run_id=_run(storage, recipe), storage=storage
    )
    assert result.summary["steps"] == 3 and result.summary["ranks"] == 2 and not result.summary["reused"]
    assert not result.cached and result.cache_key == writer_run.first.cache_key
    (row,) = storage.datasets.read(result.outputs["sft_models"]).to_pylist()
    assert row["final_loss"] < row["first_loss"]
    assert storage.training.model(row["model_id"])["path"] == row["path"]
    AutoModelForCausalLM.from_pretrained(row["path"])
    record = json.loads((Path(row["path"]) / "wrl_sft.json").read_text())
    assert record["ranks"] == 2 and [s for s, _ in record["losses"]] == [1, 2, 3]
    assert not list((storage.root / "sft").glob("*"))  # the work folder (checkpoints, spec, log) is gone

    one_rank = json.loads((Path(_writer_row(writer_run)["path"]) / "wrl_sft.json").read_text())
    assert one_rank["ranks"] == 1
    assert [s for s, _ in one_rank["losses"]] == [1, 2, 3]
    assert [loss for _, loss in one_rank["losses"]] == pytest.approx(
        [loss for _, loss in record["losses"]], rel=1e-4
    )
    # Where it runs is not in the key; the engine is (its checkpoints are not each other's).
    key = stage_keys(sft.WRITER_SPEC, recipe, {})[1]
    layouts = ({"sft.processes": 1}, {"sft.gpus": 2})
    for override in layouts:
        assert stage_keys(sft.WRITER_SPEC, load_recipe(path, override), {})[1] == key, override
    assert stage_keys(sft.WRITER_SPEC, load_recipe(path, {"sft.distributed": "zero3"}), {})[1] != key


def test_a_failed_sft_rank_fails_the_stage_with_its_error(tmp_path, tiny_model_dir, monkeypatch):
    from tasks.training.launch import TrainerFailedError

    monkeypatch.setenv("WRL_TRAINER_PLUGINS", "tests.support.sft_plugin")
    monkeypatch.setenv("WRL_TEST_SFT_FAIL_RANK", "1")
    data = _pairs_file(tmp_path / "pairs.jsonl")
    recipe = load_recipe(_sft_recipe(tmp_path, tiny_model_dir, _writer_block(data) + "  processes: 2\n"))
    storage = open_storage(recipe.storage)
    with pytest.raises(TrainerFailedError, match="sft: rank 1: RuntimeError: rank 1 broke on purpose"):
        run_stage(sft.WRITER_SPEC, sft.compute_writer, recipe, run_id=_run(storage, recipe), storage=storage)
    assert storage.training.models() == [] and not (storage.root / "models").exists()
    with storage.catalog.connect() as con:
        assert con.execute("SELECT status FROM stage_runs").fetchall() == [("failed",)]


@pytest.mark.parametrize(
    "override,expected",
    [
        ({"distributed": "zero3"},
         {"distributed_type": "DEEPSPEED", "num_processes": 8, "mixed_precision": "bf16",
          "deepspeed_config.zero_stage": 3, "deepspeed_config.offload_optimizer_device": "none",
          "deepspeed_config.zero3_save_16bit_model": True}),
        ({"distributed": "zero3", "cpu_offload": True}, {"deepspeed_config.offload_optimizer_device": "cpu"}),
        ({"distributed": "fsdp2"},
         {"distributed_type": "FSDP", "num_processes": 8, "fsdp_config.fsdp_version": 2,
          "fsdp_config.fsdp_offload_params": False, "fsdp_config.fsdp_state_dict_type": "FULL_STATE_DICT"}),
        ({"distributed": "ddp", "gpus": 4}, {"distributed_type": "MULTI_GPU", "num_processes": 4}),
        ({"gpus": 1}, {"distributed_type": "NO", "num_processes": 1, "use_cpu": False}),
        ({"device": "cpu", "processes": 2}, {"distributed_type": "MULTI_GPU", "num_processes": 2,
                                             "mixed_precision": "no", "use_cpu": False}),
    ],
)  # fmt: skip
def test_the_sft_accelerate_configuration_follows_the_sft_block_and_accelerate_reads_it(
    override, expected, tmp_path
):
    """The paper-size SFT layout (a full 7B fine-tune on 8 GPUs, sharded) as accelerate reads it."""

    from tasks.training.launch import accelerate_config
    from tasks.training.sft import SFTLaunchSpec, sft_layout

    block = {"reference": {"enabled": True}, "device": "cuda", "bf16": True, "gradient_checkpointing": True,
             "gpus": 8, "batch_size": 8, **override}  # fmt: skip
    layout = sft_layout(SFTConfig(**block))
    config = accelerate_config(layout, port=29512, section="sft")
    assert_accelerate_reads(config, expected, tmp_path, port=29512)
    assert SFTLaunchSpec.worker == "tasks.training.sft_worker"


def test_sft_layouts_that_cannot_run_are_refused():
    from tasks.training.launch import accelerate_config
    from tasks.training.sft import sft_args

    with pytest.raises(ValueError, match=r"sft\.distributed: zero3 needs GPUs"):
        accelerate_config(SFTConfig(reference={"enabled": True}, device="cpu", processes=2, distributed="zero3"),
                          port=0, section="sft")  # fmt: skip
    with pytest.raises(ValueError, match=r"sft\.batch_size \(4\) must divide evenly over 8 rank\(s\)"):
        SFTConfig(reference={"enabled": True}, device="cuda", gpus=8, batch_size=4)
    # The pairs of one forward pass over all ranks: each of 8 takes one.
    args = sft_args(SFTConfig(reference={"enabled": True}, batch_size=8, gpus=8), Path("unused"), cpu=True,
                    world_size=8)  # fmt: skip
    assert args.per_device_train_batch_size == 1


def test_generate_writes_with_the_sft_model_through_the_flow(
    prefect_harness, writer_run, tmp_path, tiny_model_dir
):
    from flows.build_dataset import build_dataset

    # A competitor on the base model loads next to the SFT policy, on another thread: the two loads
    # once raced (transformers' from_pretrained is not thread-safe) and both generators failed.
    recipe_path = _sft_recipe(
        tmp_path, tiny_model_dir, _writer_block(writer_run.data), rival=True, store=writer_run.store
    )
    summary = build_dataset(recipe_path=str(recipe_path), until="generate")
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["ingest", "sft_writer", "generate"]
    # The flow's sft_writer is the shared run's model (same data, same settings: a cache hit).
    assert stages["sft_writer"]["cached"]
    assert stages["sft_writer"]["outputs"]["sft_models"] == str(writer_run.first.outputs["sft_models"])
    assert stages["generate"]["summary"]["failures"] == 0
    storage = open_storage(load_recipe(recipe_path).storage)
    (sft_row,) = storage.datasets.read(
        DatasetRef.parse(stages["sft_writer"]["outputs"]["sft_models"])
    ).to_pylist()
    generations = storage.datasets.read(DatasetRef.parse(stages["generate"]["outputs"]["generations"]))
    models = {(r["generator"], r["model"]) for r in generations.to_pylist()}
    assert models == {
        ("policy", sft_row["path"]),
        ("rival", str(tiny_model_dir)),
    }  # the policy: its SFT model
    # Lineage: generate read the SFT writer's version, so the ladders lead back to the SFT model.
    generations_ref = DatasetRef.parse(stages["generate"]["outputs"]["generations"])
    chain = storage.catalog.upstream(generations_ref)
    assert [hop["stage"] for hop in chain][:1] == ["generate"] and "sft_writer" in [
        hop["stage"] for hop in chain
    ]

    # The same recipe again: every stage a cache hit.
    again = build_dataset(recipe_path=str(recipe_path), until="generate")
    assert all(s["cached"] for s in again["stages"])
    # Without `sft:`, the flow has no sft stage, and generate has its own key, not the SFT one.
    plain = write_recipe(tmp_path / "plain.yaml", store=writer_run.store, model=str(tiny_model_dir), limit=2)
    plain_summary = build_dataset(recipe_path=str(plain), until="generate")
    plain_stages = {s["stage"]: s for s in plain_summary["stages"]}
    assert list(plain_stages) == ["ingest", "generate"]
    assert plain_stages["ingest"]["cached"]  # same data: ingest is shared
    assert not plain_stages["generate"]["cached"]  # the base model's generations are another key


def test_rl_training_starts_from_the_sft_model(prefect_harness, writer_run, tmp_path, tiny_model_dir):
    """The train flow with `sft.writer`: train reads `sft_models`, RL starts from the SFT model (its
    LoRA merged into it, not into the policy generator's model), and the policy is registered with it
    as its base. On the shared store: the SFT model (and the generations) are cache hits."""
    from flows.train import train_policy

    training = (
        "training: {learning_rate: 1.0e-3, batch_size: 2, num_generations: 2, max_response_tokens: 6, "
        "max_steps: 1, save_steps: 1, device: cpu, lora: {r: 4, alpha: 8}}\n"
        "reward: {kind: pairwise, logprob_reward: expected}\n"
    )
    path = _sft_recipe(tmp_path, tiny_model_dir, _writer_block(writer_run.data), judge=True, rival=True,
                       extra=training, store=writer_run.store)  # fmt: skip
    summary = train_policy(recipe_path=str(path))
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["ingest", "sft_writer", "generate", "score", "select", "order", "train"]
    assert stages["sft_writer"]["cached"]
    storage = open_storage(load_recipe(path).storage)
    (sft_row,) = storage.datasets.read(
        DatasetRef.parse(stages["sft_writer"]["outputs"]["sft_models"])
    ).to_pylist()
    policy = storage.training.model(stages["train"]["summary"]["model_id"])
    assert policy["base_model"] == f"model:{sft_row['model_id']}"
    with storage.catalog.connect() as con:
        inputs = con.execute(
            "SELECT dataset, version FROM stage_run_datasets WHERE stage_run_id = ? AND direction = 'input'",
            [policy["stage_run_id"]],
        ).fetchall()
    assert (
        sft.WRITER_DATASET,
        DatasetRef.parse(stages["sft_writer"]["outputs"]["sft_models"]).version,
    ) in inputs
    # LoRA merged into the SFT model: only the adapted projections differ from it.
    changed = _weights_changed(Path(sft_row["path"]), Path(policy["path"]))
    assert changed and all(n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for n in changed)


def _fixed_inputs(spec, recipe):
    refs = {"instructions": "instructions@0", "ladders": "ladders@3", "sft_models": "sft_models@1"}
    return {role: DatasetRef.parse(refs[role]) for role in spec.inputs_for(recipe)}


def _with_sft(recipe: Recipe, sft_block: dict | None) -> Recipe:
    return Recipe.model_validate({**recipe.model_dump(mode="json"), "sft": sft_block})


@pytest.mark.parametrize("config", ["demo.yaml", "paper-qwen2.5-7b.yaml", "paper-llama3.1-8b.yaml"])
def test_recipes_without_sft_keep_their_generate_and_train_cache_keys(config, tmp_path):
    # The shipped recipes without their `sft` block (the paper recipes have one since issue 17).
    recipe = _with_sft(load_recipe(PROJECT_ROOT / "configs" / config), None)
    for spec in (generate.SPEC, train.SPEC):
        # The inputs the pipeline wires are the ones it wired before `sft` existed, so the key is too.
        assert spec.inputs_for(recipe) == spec.inputs
        before = stage_keys(replace(spec, extra_inputs=lambda r: ()), recipe, _fixed_inputs(spec, recipe))
        assert stage_keys(spec, recipe, _fixed_inputs(spec, recipe)) == before
        # The Reference-SFT baseline alone does not touch them either ...
        baseline = _with_sft(recipe, {"reference": {"enabled": True}})
        assert stage_keys(spec, baseline, _fixed_inputs(spec, baseline)) == before
        # ... the SFT writer does: its model is an input (its version changes the key).
        writer = _with_sft(recipe, {"writer": {"data": {"path": str(tmp_path / "p.jsonl")}}})
        assert "sft_models" in spec.inputs_for(writer)
        assert stage_keys(spec, writer, _fixed_inputs(spec, writer))[1] != before[1]
        other = {**_fixed_inputs(spec, writer), "sft_models": DatasetRef.parse("sft_models@2")}
        assert stage_keys(spec, writer, other)[1] != stage_keys(spec, writer, _fixed_inputs(spec, writer))[1]


LADDER_ROWS = [
    # (instruction, rung generators bottom -> top, policy_rung, split)
    ("a", ["policy", "rival"], 0, "train"),  # the rival's reference on top: trained on
    ("b", ["rival", "policy"], 1, "train"),  # the policy's own response on top: left out
    ("c", ["policy", "rival"], 0, "validation"),  # held out: left out
    ("d", ["rival", "policy", "rival2"], 1, "train"),  # trained on rival2's
]


def _ladders() -> pa.Table:
    from tasks.curation.ordering import LADDERS_SCHEMA

    rows = []
    for iid, gens, policy_rung, split in LADDER_ROWS:
        rungs = [
            {"rung": i, "generator": g, "score": float(i), "text": f"{iid} by {g}"}
            for i, g in enumerate(gens)
        ]
        rows.append({"instruction_id": iid, "prompt": f"Write about {iid}.", "criteria_json": "[]", "rungs": rungs,
                     "n_rungs": len(rungs), "policy_rung": policy_rung, "split": split,
                     "score_gaps": [1.0] * (len(rungs) - 1)})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=LADDERS_SCHEMA)


def test_reference_sft_takes_the_top_rung_of_training_ladders_only(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", store=tmp_path / "s", model="m",
                                      extra="    system_prompt: Be brief.\n"))  # fmt: skip
    examples, skipped = sft.reference_examples(_ladders(), recipe.policy)
    assert [(e.source, e.response) for e in examples] == [("a", "a by rival"), ("d", "d by rival2")]
    assert examples[0].messages == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Write about a."}]  # fmt: skip
    assert skipped == {"validation": 1, "policy_on_top": 1, "empty": 0}
    # Ladders written before `split` and `policy_rung` existed: all training, the policy on rung 0.
    old = _ladders().drop_columns(["split", "policy_rung"])
    assert [e.source for e in sft.reference_examples(old, recipe.policy)[0]] == ["a", "b", "c", "d"]


def test_reference_sft_trains_registers_and_is_an_evaluation_candidate(tmp_path, tiny_model_dir):
    from tasks.evaluation.candidates import resolve_candidates

    evaluation = (
        "evaluation:\n  candidates:\n    - {name: base, model: " + str(tiny_model_dir) + "}\n"
        "    - {name: reference-sft, from_sft: reference}\n"
        f"  benchmarks: {{writingbench: {{path: {tmp_path / 'wb.jsonl'}}}}}\n"
    )
    block = f"  reference: {{enabled: true}}\n  {TRAINER.replace(', ', chr(10) + '  ')}\n"
    recipe = load_recipe(_sft_recipe(tmp_path, tiny_model_dir, block, judge=True, extra=evaluation))
    storage = open_storage(recipe.storage)
    with pytest.raises(ConfigError, match="from_sft 'reference' needs a run of stage sft_reference"):
        resolve_candidates(recipe, storage)
    ladders = storage.datasets.write("ladders", _ladders(), lineage={"stage": "test"})
    run_id = _run(storage, recipe)
    result = run_stage(sft.REFERENCE_SPEC, sft.compute_reference, recipe, {"ladders": ladders},
                       run_id=run_id, storage=storage)  # fmt: skip
    assert result.summary["examples"] == 2 and result.summary["left_out"]["policy_on_top"] == 1
    (row,) = storage.datasets.read(result.outputs["sft_reference_models"]).to_pylist()
    assert (
        row["mode"] == "reference"
        and row["data"] == str(ladders)
        and row["base_model"] == str(tiny_model_dir)
    )
    assert storage.training.model(row["model_id"])["ladders_ref"] == str(ladders)
    candidates = {c.name: c for c in resolve_candidates(recipe, storage)}
    assert candidates["reference-sft"].model == row["path"]
    assert candidates["reference-sft"].source == "sft:reference" and candidates["reference-sft"].step is None
    assert run_stage(sft.REFERENCE_SPEC, sft.compute_reference, recipe, {"ladders": ladders},
                     run_id=run_id, storage=storage).cached  # fmt: skip


def test_the_sft_stages_are_deployed_and_run_only_when_configured(tmp_path, tiny_model_dir):
    from flows.deployments import deployment_specs
    from flows.pipeline import check_stage_names, run_pipeline

    data = _pairs_file(tmp_path / "pairs.jsonl")
    with_sft = _sft_recipe(tmp_path, tiny_model_dir, _writer_block(data) + "  reference: {enabled: true}\n",
                           judge=True)  # fmt: skip
    names = {s["name"] for s in deployment_specs(str(with_sft), load_recipe(with_sft))}
    assert {"test-sft_writer", "test-sft_reference"} <= names
    plain = write_recipe(tmp_path / "plain.yaml", store=tmp_path / "store", model="m")
    assert not any("sft" in s["name"] for s in deployment_specs(str(plain), load_recipe(plain)))
    assert check_stage_names(["sft_writer", "sft_reference"], "refresh") == {"sft_writer", "sft_reference"}
    with pytest.raises(ConfigError, match="stage 'sft_writer' is not configured"):
        run_pipeline("build-dataset", str(plain), None, None, "sft_writer", default_last="order")


# -- SmolLM2, both modes ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_smollm2_sft_writer_then_reference_sft(prefect_harness, tmp_path, embedded_model_cache):
    """SmolLM2-135M on the CPU: the writer fine-tuned for 3 steps writes the policy's responses, the
    ladders are judged, and the Reference-SFT baseline starts from the writer (LoRA, 3 steps each)."""
    from flows.build_dataset import build_dataset
    from tasks.evaluation.candidates import resolve_candidates

    model = "embedded:smollm2-135m-instruct"
    data = _pairs_file(tmp_path / "pairs.jsonl")
    recipe_path = tmp_path / "smol.yaml"
    recipe_path.write_text(f"""\
name: smol
storage: {{root: {tmp_path / "store"}, model_cache: {embedded_model_cache}}}
data: {{format: builtin, limit: 2}}
backends:
  local: {{kind: transformers, device: cpu, dtype: float32, max_batch_size: 4}}
generators:
  - {{name: policy, role: policy, backend: local, model: {model}, decoding: {{temperature: 0.0, max_tokens: 16}}}}
  - {{name: rival, backend: local, model: {model}, decoding: {{temperature: 0.9, max_tokens: 16, seed: 1}}}}
judge: {{backend: local, model: {model}, mode: logprob}}
ordering: {{min_rungs: 2, policy_rung: first}}  # a reference on top of every ladder
sft:
  writer: {{data: {{format: jsonl, path: {data}}}}}
  reference: {{enabled: true}}
  learning_rate: 1.0e-4
  max_steps: 3
  batch_size: 2
  max_seq_tokens: 256
  device: cpu
  lora: {{r: 4, alpha: 8}}
evaluation:
  candidates:
    - {{name: base, model: {model}}}
    - {{name: sft, from_sft: writer}}
    - {{name: reference-sft, from_sft: reference}}
  benchmarks: {{writingbench: {{path: {tmp_path / "wb.jsonl"}}}}}
""")
    summary = build_dataset(recipe_path=str(recipe_path), until="sft_reference")
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["ingest", "sft_writer", "generate", "score", "select", "order", "sft_reference"]
    recipe = load_recipe(recipe_path)
    storage = open_storage(recipe.storage)
    read = lambda stage, name: storage.datasets.read(DatasetRef.parse(stages[stage]["outputs"][name]))  # noqa: E731
    (writer,) = read("sft_writer", "sft_models").to_pylist()
    (reference,) = read("sft_reference", "sft_reference_models").to_pylist()
    assert writer["steps"] == 3 and reference["steps"] == 3
    assert reference["examples"] == read("order", "ladders").num_rows > 0  # every ladder's top rung
    policy_rows = [r for r in read("generate", "generations").to_pylist() if r["generator"] == "policy"]
    assert {r["model"] for r in policy_rows} == {writer["path"]}
    assert reference["base_model"] == f"model:{writer['model_id']}"  # the baseline starts from the writer
    assert _weights_changed(Path(writer["path"]), Path(reference["path"]))
    candidates = {c.name: c.model for c in resolve_candidates(recipe, storage)}
    assert candidates["sft"] == writer["path"] and candidates["reference-sft"] == reference["path"]
