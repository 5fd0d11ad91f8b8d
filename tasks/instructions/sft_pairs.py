"""(prompt, response) pairs for supervised fine-tuning (`sft.writer.data`), from the generic table
formats the instruction loaders read: JSON lines, Parquet, a `datasets` folder.

Like the instruction loaders, the whole input is checked and every bad row is reported at once,
with its file, line or row, and field (`InstructionDataError`). The fingerprint (the source's bytes)
goes into the sft stage's cache key, so editing the file retrains.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.schema import DataConfig, SFTDataConfig
from tasks.instructions.loaders import (
    InstructionDataError,
    RowProblem,
    _Collector,
    _data_files,
    _jsonl_rows,
    _parquet_rows,
    _required_text,
    source_fingerprint,
)

WHERE = "sft.writer.data"


@dataclass(frozen=True)
class SFTPair:
    prompt: str
    response: str
    location: str  # "pairs.jsonl:17", "pairs.parquet:row 3"


def _as_data_config(cfg: SFTDataConfig) -> DataConfig:
    """The instruction loaders' view of the same source (they share the file walking and hashing)."""
    path = cfg.path.expanduser()
    resolved = path if path.is_absolute() else Path.cwd() / path
    if not resolved.exists():
        raise FileNotFoundError(f"{WHERE}.path: {cfg.path} does not exist (resolved to {resolved})")
    return DataConfig(format=cfg.format, path=cfg.path, split=cfg.split)


def sft_data_fingerprint(cfg: SFTDataConfig) -> str:
    """sha256 hex of the source's bytes (a folder: every file with its name)."""
    return source_fingerprint(_as_data_config(cfg))


def load_sft_pairs(cfg: SFTDataConfig) -> list[SFTPair]:
    """Every pair of the source (then the first `limit`); `InstructionDataError` listing every bad row."""
    data = _as_data_config(cfg)
    c = _Collector(str(cfg.path))
    pairs: list[SFTPair] = []

    def add(loc: str, row: dict[str, Any]) -> None:
        prompt = _required_text(c, loc, row, cfg.prompt_field)
        response = _required_text(c, loc, row, cfg.response_field)
        if isinstance(prompt, str) and isinstance(response, str):
            pairs.append(SFTPair(prompt, response, loc))

    if cfg.format == "jsonl":
        for path, display, _ in _data_files(data, ".jsonl"):
            for loc, row in _jsonl_rows(c, path.read_bytes(), display):
                add(loc, row)
    elif cfg.format == "parquet":
        for loc, row, _ in _parquet_rows(c, data):
            add(loc, row)
    else:  # hf
        for loc, row in _hf_rows(cfg):
            add(loc, row)
    if c.problems:
        raise InstructionDataError(str(cfg.path), c.problems)
    if not pairs:
        where = str(cfg.path)
        raise InstructionDataError(where, [RowProblem(where, "rows", "no pairs (the input is empty)")])
    return pairs[: cfg.limit] if cfg.limit is not None else pairs


def _hf_rows(cfg: SFTDataConfig):
    import datasets

    display = str(cfg.path)
    path = cfg.path.expanduser()
    try:
        ds = datasets.load_from_disk(str(path if path.is_absolute() else Path.cwd() / path))
    except (FileNotFoundError, ValueError) as exc:
        problem = RowProblem(display, "path", f"not a dataset saved with save_to_disk: {exc}")
        raise InstructionDataError(display, [problem]) from exc
    where = display
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            available = ", ".join(sorted(ds)) or "(none)"
            problem = RowProblem(display, "split", f"no split '{cfg.split}'; available: {available}")
            raise InstructionDataError(display, [problem])
        ds, where = ds[cfg.split], f"{display}[{cfg.split}]"
    for i, row in enumerate(ds.to_list(), start=1):
        yield f"{where}:row {i}", row
