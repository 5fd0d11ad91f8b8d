"""Read writing instructions from any supported source into canonical `Instruction` rows.

One loader per `configs.schema.DATA_FORMATS` name, kept in `LOADERS`. Every loader checks the
whole input and raises a single `InstructionDataError` that lists every bad row with its location,
so a user fixes a file in one pass instead of one error at a time. Ids are stable across loads
(the source's own id, else a content hash) because every later stage caches on them.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from configs.schema import DATA_FORMATS, DataConfig
from tasks.instructions.schema import Criterion, Instruction
from tasks.registry import Registry
from tasks.text import detect_language

__all__ = [
    "LOADERS",
    "InstructionDataError",
    "RowProblem",
    "load_instructions",
    "register_loader",
    "source_fingerprint",
]

Loader = Callable[[DataConfig], list[Instruction]]
LOADERS: Registry[Loader] = Registry("instruction loader", allowed=DATA_FORMATS)

BUILTIN_SAMPLE = "builtin_sample.jsonl"
RUBRIC_BANDS = ("1-2", "3-4", "5-6", "7-8", "9-10")
SEED_SLOT = "<SEED>"
_BAD = object()  # a field that failed validation (its problem is already recorded)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowProblem:
    location: str  # "path/to/file.jsonl:17", "file.parquet:row 3", "prompts.json:prompt 7"
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.location} {self.field}: {self.message}"


class InstructionDataError(ValueError):
    """Every problem found in one input, reported together."""

    def __init__(self, where: str, problems: Iterable[RowProblem]):
        self.where = where
        self.problems: list[RowProblem] = list(problems)
        n = len(self.problems)
        lines = [f"{n} problem{'s' if n != 1 else ''} in {where}:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Registry and entry points
# ---------------------------------------------------------------------------------------------


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator adding a loader under a `DATA_FORMATS` name; a name registers once."""
    return LOADERS.register(name)


def load_instructions(cfg: DataConfig) -> list[Instruction]:
    """Load, validate (raising `InstructionDataError` listing every bad row), then keep the first `limit`."""
    rows = LOADERS[cfg.format](cfg)
    if not rows:  # an empty file or folder would otherwise run every stage on nothing
        where = str(cfg.path) if cfg.path is not None else cfg.format
        raise InstructionDataError(where, [RowProblem(where, "rows", "no instructions (the input is empty)")])
    return rows[: cfg.limit] if cfg.limit is not None else rows


def source_fingerprint(cfg: DataConfig) -> str:
    """sha256 hex of the source bytes, for cache keys: changes whenever the data changes.

    A file hashes its bytes; a folder hashes every file (sorted by relative path) with its name, so
    renames, additions and deletions count; `builtin` hashes the packaged sample.
    """
    if cfg.format == "builtin":
        return hashlib.sha256(_builtin_bytes()).hexdigest()
    path, _ = _resolve(cfg)
    if path.is_file():
        return _file_sha256(path).hex()
    h = hashlib.sha256()
    for f in sorted(
        (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()
    ):
        rel = f.relative_to(path).as_posix().encode()
        # Length-prefix the name so (name, content) pairs cannot run into one another.
        h.update(len(rel).to_bytes(8, "big") + rel + _file_sha256(f))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Shared machinery: one collector per input, field checks that record problems and go on
# ---------------------------------------------------------------------------------------------


class _Collector:
    """Instructions and problems of one input; `finish` raises once with everything found."""

    def __init__(self, where: str):
        self.where = where
        self.problems: list[RowProblem] = []
        self.items: list[Instruction] = []
        self._first_seen: dict[str, str] = {}

    def problem(self, location: str, field: str, message: str) -> object:
        self.problems.append(RowProblem(location, field, message))
        return _BAD

    def add(self, location: str, *, id: str | None, id_prefix: str, fields: dict[str, Any]) -> None:
        """Build one instruction unless a field was bad; a missing id becomes a content hash."""
        if _BAD in (id, *fields.values()):
            if isinstance(id, str):
                self._claim(location, id, "id")  # still catch duplicates among bad rows
            return
        id_field = "id"
        if id is None:
            id, id_field = f"{id_prefix}-{_content_hash(fields['prompt'])}", "prompt"
        if not self._claim(location, id, id_field):
            return
        try:
            self.items.append(Instruction(id=id, **fields))
        except ValidationError as exc:  # a guard: the checks above should already catch these
            for err in exc.errors():
                self.problem(location, ".".join(map(str, err["loc"])) or "row", err["msg"])

    def _claim(self, location: str, id: str, field: str) -> bool:
        first = self._first_seen.setdefault(id, location)
        if first == location:
            return True
        what = "same prompt, so the same content-hash id" if field == "prompt" else "ids must be unique"
        self.problem(location, field, f"duplicate id '{id}', first at {first} ({what})")
        return False

    def finish(self) -> list[Instruction]:
        if self.problems:
            raise InstructionDataError(self.where, self.problems)
        return self.items


def _content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _text(c: _Collector, loc: str, field: str, value: Any, *, required: bool = False) -> Any:
    """A string field; `required` ones must be present and not whitespace-only."""
    if value is None:
        return c.problem(loc, field, "missing") if required else None
    if not isinstance(value, str):
        return c.problem(loc, field, f"must be a string, got {_show(value)}")
    if required and not value.strip():
        return c.problem(loc, field, "is empty (whitespace only)" if value else "is empty")
    return value


def _required_text(c: _Collector, loc: str, row: dict[str, Any], field: str) -> Any:
    if field not in row:
        return c.problem(loc, field, "missing")
    return _text(c, loc, field, row[field], required=True)


def _identifier(c: _Collector, loc: str, field: str, value: Any) -> Any:
    # Integers are accepted (WritingBench `index`, numeric id columns) and kept as their decimal text.
    if isinstance(value, bool) or not isinstance(value, str | int):
        return c.problem(loc, field, f"must be a string or an integer, got {_show(value)}")
    text = str(value)
    return text if text.strip() else c.problem(loc, field, "is empty")


def _length(c: _Collector, loc: str, field: str, value: Any, *, required: bool = False) -> Any:
    if value is None:
        return c.problem(loc, field, "missing") if required else None
    # bool is an int subclass: `true` would otherwise pass as a length of 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return c.problem(loc, field, f"must be a positive whole number of words, got {_show(value)}")
    if isinstance(value, float) and not value.is_integer():
        return c.problem(loc, field, f"must be a whole number of words, got {value!r}")
    if value <= 0:
        return c.problem(loc, field, f"must be positive, got {value!r}")
    return int(value)


def _language(c: _Collector, loc: str, value: Any, prompt: Any) -> Any:
    """The row's own language when given, else detected from the prompt (`tasks.text.detect_language`)."""
    value = _text(c, loc, "language", value)
    if value is _BAD:
        return _BAD
    if value and value.strip():
        return value.strip()
    return detect_language(prompt) if isinstance(prompt, str) else None


def _criteria(c: _Collector, loc: str, field: str, value: Any, *, required: bool = False) -> Any:
    """WritingBench-style criteria: name, criteria_description and one key per rubric band.

    Also takes this project's own shape (description, rubric) so exported rows load back.
    Null band values are skipped: Parquet and HF unify struct fields across rows.
    """
    if value is None:
        return c.problem(loc, field, "missing") if required else ()
    if not isinstance(value, list | tuple):
        return c.problem(loc, field, f"must be a list of criteria, got {_show(value)}")
    if required and not value:
        return c.problem(loc, field, "is an empty list; every row needs at least one criterion")
    out: list[Criterion] = []
    n_problems = len(c.problems)
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            c.problem(loc, where, f"must be an object, got {_show(item)}")
            continue
        name = _text(c, loc, f"{where}.name", item.get("name"), required=True)
        desc_key = "criteria_description" if "criteria_description" in item else "description"
        desc = _text(c, loc, f"{where}.{desc_key}", item.get(desc_key))
        bands = {b: item.get(b) for b in RUBRIC_BANDS}
        if isinstance(item.get("rubric"), dict):
            bands |= item["rubric"]
        elif item.get("rubric") is not None:
            c.problem(loc, f"{where}.rubric", f"must be an object, got {_show(item['rubric'])}")
        rubric = {
            band: _text(c, loc, f"{where}.{band}", text) for band, text in bands.items() if text is not None
        }
        if _BAD not in (name, desc, *rubric.values()):
            out.append(Criterion(name=name, description=desc or "", rubric=rubric))
    return tuple(out) if len(c.problems) == n_problems else _BAD


def _metadata(c: _Collector, loc: str, extra: dict[str, Any]) -> Any:
    # Metadata is stored as JSON in Arrow/Delta: catch values like datetimes now, not at write time.
    try:
        json.dumps(extra, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        return c.problem(loc, "metadata", f"extra columns must be JSON-serialisable ({exc})")
    return extra


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _resolve(cfg: DataConfig) -> tuple[Path, str]:
    """(absolute path, the path as the user wrote it, for messages). Relative paths use the cwd."""
    if cfg.path is None:
        raise ValueError(f"data.path: required for format '{cfg.format}'")
    path = cfg.path.expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.exists():
        raise FileNotFoundError(f"data.path: {cfg.path} does not exist (resolved to {path})")
    return path, str(cfg.path)


def _data_files(cfg: DataConfig, suffix: str) -> Iterator[tuple[Path, str, str]]:
    """(path, display path, name for `source`) of the file, or of every `*suffix` file in a folder."""
    path, display = _resolve(cfg)
    if path.is_file():
        yield path, display, path.name
        return
    found = sorted(
        (p for p in path.rglob(f"*{suffix}") if p.is_file() and not p.name.startswith(".")),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not found:
        raise InstructionDataError(display, [RowProblem(display, "path", f"folder has no *{suffix} files")])
    for p in found:
        rel = p.relative_to(path).as_posix()
        yield p, str(Path(display) / rel), rel


def _jsonl_rows(c: _Collector, data: bytes, display: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, object) for each non-blank line; undecodable or unparsable lines become problems."""
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        loc = f"{display}:{lineno}"
        try:
            text = raw.decode("utf-8")  # strict: a mis-encoded line is reported, never replaced
        except UnicodeDecodeError as exc:
            c.problem(loc, "utf-8", f"invalid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1})")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            c.problem(loc, "json", f"not valid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            c.problem(loc, "json", f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield loc, obj


def _builtin_bytes() -> bytes:
    return files("tasks.instructions").joinpath(BUILTIN_SAMPLE).read_bytes()


# ---------------------------------------------------------------------------------------------
# Generic tables: jsonl, parquet, hf (and the built-in sample)
# ---------------------------------------------------------------------------------------------

_GENERIC_COLUMNS = ("language", "genre", "subgenre", "required_length", "criteria")


def _add_generic(
    c: _Collector, loc: str, row: dict[str, Any], cfg: DataConfig, source: str, prefix: str
) -> None:
    """One row with `cfg.prompt_field`, optional `cfg.id_field` and the optional canonical columns."""
    pf, idf = cfg.prompt_field, cfg.id_field
    prompt = _required_text(c, loc, row, pf)
    # A null id (e.g. a sparse Parquet column) falls back to the content hash like an absent one.
    ident = _identifier(c, loc, idf, row[idf]) if idf and row.get(idf) is not None else None
    known = {pf, *_GENERIC_COLUMNS} | ({idf} if idf else set())
    # Nulls are dropped: Parquet and HF fill every column of every row, so null means absent.
    extra = {k: v for k, v in row.items() if k not in known and v is not None}
    if isinstance(extra.get("metadata"), dict):  # rows exported from Instruction keep their metadata
        extra = {**extra.pop("metadata"), **extra}
    fields = {
        "prompt": prompt,
        "source": source,
        "language": _language(c, loc, row.get("language"), prompt),
        "genre": _text(c, loc, "genre", row.get("genre")),
        "subgenre": _text(c, loc, "subgenre", row.get("subgenre")),
        "required_length": _length(c, loc, "required_length", row.get("required_length")),
        "criteria": _criteria(c, loc, "criteria", row.get("criteria")),
        "metadata": _metadata(c, loc, extra),
    }
    c.add(loc, id=ident, id_prefix=prefix, fields=fields)


@register_loader("builtin")
def load_builtin(cfg: DataConfig) -> list[Instruction]:
    """The sample shipped with the package; always read with the canonical column names."""
    c = _Collector(BUILTIN_SAMPLE)
    builtin_cfg = DataConfig(format="builtin")
    for loc, row in _jsonl_rows(c, _builtin_bytes(), BUILTIN_SAMPLE):
        _add_generic(c, loc, row, builtin_cfg, "builtin", "builtin")
    return c.finish()


@register_loader("jsonl")
def load_jsonl(cfg: DataConfig) -> list[Instruction]:
    c = _Collector(str(cfg.path))
    for path, display, name in _data_files(cfg, ".jsonl"):
        for loc, row in _jsonl_rows(c, path.read_bytes(), display):
            _add_generic(c, loc, row, cfg, f"jsonl:{name}", "jsonl")
    return c.finish()


def _parquet_rows(c: _Collector, cfg: DataConfig) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(location, row, file name) for every row of the Parquet file or folder; an unreadable file
    becomes a problem."""
    import pyarrow.parquet as pq

    for path, display, name in _data_files(cfg, ".parquet"):
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # corrupt file, invalid UTF-8 in a string column, ...
            c.problem(display, "parquet", f"cannot read: {exc}")
            continue
        for i, row in enumerate(rows, start=1):
            yield f"{display}:row {i}", row, name


@register_loader("parquet")
def load_parquet(cfg: DataConfig) -> list[Instruction]:
    c = _Collector(str(cfg.path))
    for loc, row, name in _parquet_rows(c, cfg):
        _add_generic(c, loc, row, cfg, f"parquet:{name}", "parquet")
    return c.finish()


@register_loader("hf")
def load_hf(cfg: DataConfig) -> list[Instruction]:
    """A `datasets` folder written by `save_to_disk`; a DatasetDict is read at `cfg.split`."""
    import datasets

    path, display = _resolve(cfg)
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        problem = RowProblem(display, "path", f"not a dataset saved with save_to_disk: {exc}")
        raise InstructionDataError(display, [problem]) from exc
    where, source = display, f"hf:{path.name}"
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            available = ", ".join(sorted(ds)) or "(none)"
            problem = RowProblem(display, "split", f"no split '{cfg.split}'; available: {available}")
            raise InstructionDataError(display, [problem])
        ds = ds[cfg.split]
        where, source = f"{display}[{cfg.split}]", f"{source}[{cfg.split}]"
    c = _Collector(where)
    for i, row in enumerate(ds.to_list(), start=1):
        _add_generic(c, f"{where}:row {i}", row, cfg, source, "hf")
    return c.finish()


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------

_WB_COLUMNS = ("index", "domain1", "domain2", "query", "checklist", "criteria", "language")


@register_loader("writingbench")
def load_writingbench(cfg: DataConfig) -> list[Instruction]:
    """WritingBench query files: ids `wb-{index}`; criteria under `checklist` (v1 release: `criteria`)."""
    c = _Collector(str(cfg.path))
    for path, display, name in _data_files(cfg, ".jsonl"):
        for loc, row in _jsonl_rows(c, path.read_bytes(), display):
            index = (
                _identifier(c, loc, "index", row["index"])
                if "index" in row
                else c.problem(loc, "index", "missing")
            )
            prompt = _required_text(c, loc, row, "query")
            if "checklist" in row and "criteria" in row:
                criteria = c.problem(
                    loc, "checklist", "row has both 'checklist' and 'criteria'; expected one"
                )
            else:
                key = "criteria" if "criteria" in row else "checklist"
                criteria = _criteria(c, loc, key, row.get(key), required=True)
            extra = {k: v for k, v in row.items() if k not in _WB_COLUMNS}
            fields = {
                "prompt": prompt,
                "source": f"writingbench:{name}",
                "language": _language(c, loc, row.get("language"), prompt),
                "genre": _text(c, loc, "domain1", row.get("domain1")),
                "subgenre": _text(c, loc, "domain2", row.get("domain2")),
                "required_length": None,  # WritingBench states lengths only inside the query text
                "criteria": criteria,
                "metadata": _metadata(c, loc, {"index": row.get("index"), **extra}),
            }
            c.add(loc, id=index if index is _BAD else f"wb-{index}", id_prefix="wb", fields=fields)
    return c.finish()


_LBW_COLUMNS = ("prompt", "type", "length", "language")


@register_loader("longbench_write")
def load_longbench_write(cfg: DataConfig) -> list[Instruction]:
    """LongBench-Write rows {prompt, type, length}; no ids in the source, so `lbw-<content hash>`."""
    c = _Collector(str(cfg.path))
    for path, display, name in _data_files(cfg, ".jsonl"):
        for loc, row in _jsonl_rows(c, path.read_bytes(), display):
            prompt = _required_text(c, loc, row, "prompt")
            fields = {
                "prompt": prompt,
                "source": f"longbench_write:{name}",
                "language": _language(c, loc, row.get("language"), prompt),
                "subgenre": _text(c, loc, "type", row.get("type")),
                "required_length": _length(c, loc, "length", row.get("length"), required=True),
                "metadata": _metadata(c, loc, {k: v for k, v in row.items() if k not in _LBW_COLUMNS}),
            }
            c.add(loc, id=None, id_prefix="lbw", fields=fields)
    return c.finish()


def load_json_document(data: bytes, display: str, object_pairs_hook: Callable | None = None) -> Any:
    """One JSON document (a BOM allowed), or an InstructionDataError naming the file and the line of
    invalid UTF-8 or of the JSON syntax error."""
    try:
        return json.loads(data.decode("utf-8-sig"), object_pairs_hook=object_pairs_hook)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InstructionDataError(
            display, [RowProblem(f"{display}:{line}", "utf-8", "invalid UTF-8")]
        ) from exc
    except json.JSONDecodeError as exc:
        problem = RowProblem(
            f"{display}:{exc.lineno}", "json", f"not valid JSON: {exc.msg} at column {exc.colno}"
        )
        raise InstructionDataError(display, [problem]) from exc


CW3_FILE = "creative_writing_prompts_v3.json"
_CW3_KEYS = ("category", "title", "writing_prompt", "seed_modifiers", "language")


@register_loader("creative_writing_v3")
def load_creative_writing_v3(cfg: DataConfig) -> list[Instruction]:
    """EQ-Bench Creative Writing v3: one instruction per (prompt, seed modifier), ids `cw3-{id}-s{n}`.

    `path` may be the prompts file or the benchmark folder holding `creative_writing_prompts_v3.json`.
    """
    path, display = _resolve(cfg)
    if path.is_dir():
        path, display = path / CW3_FILE, str(Path(display) / CW3_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"data.path: {cfg.path} is a folder without {CW3_FILE}")
    c = _Collector(display)
    data = path.read_bytes()
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        # json keeps only the last of repeated keys; a repeated prompt id would silently vanish.
        keys = [k for k, _ in items]
        duplicates.extend(sorted({k for k in keys if keys.count(k) > 1}))
        return dict(items)

    doc = load_json_document(data, display, object_pairs_hook=pairs)
    if not isinstance(doc, dict):
        problem = RowProblem(
            display, "json", f"expected an object of prompt id -> prompt, got {type(doc).__name__}"
        )
        raise InstructionDataError(display, [problem])
    for key in duplicates:
        c.problem(display, "json", f"key '{key}' appears more than once; JSON keeps only the last")

    source = f"creative_writing_v3:{path.name}"
    for prompt_id, entry in doc.items():
        loc = f"{display}:prompt {prompt_id}"
        if not isinstance(entry, dict):
            c.problem(loc, "prompt", f"must be an object, got {_show(entry)}")
            continue
        template = _required_text(c, loc, entry, "writing_prompt")
        if isinstance(template, str) and SEED_SLOT not in template:
            template = c.problem(loc, "writing_prompt", f"prompt '{prompt_id}' has no {SEED_SLOT} slot")
        seeds = entry.get("seed_modifiers")
        if not isinstance(seeds, list):
            c.problem(loc, "seed_modifiers", f"prompt '{prompt_id}': must be a list, got {_show(seeds)}")
            continue
        if not seeds:
            c.problem(loc, "seed_modifiers", f"prompt '{prompt_id}' has an empty seed list")
            continue
        category = _text(c, loc, "category", entry.get("category"))
        title = _text(c, loc, "title", entry.get("title"))
        # Detected from the template: every expansion of a prompt shares its language.
        language = _language(c, loc, entry.get("language"), template)
        extra = {k: v for k, v in entry.items() if k not in _CW3_KEYS}
        for n, seed in enumerate(seeds, start=1):
            seed = _text(c, loc, f"seed_modifiers[{n - 1}]", seed, required=True)
            bad = _BAD in (template, seed)
            fields = {
                "prompt": _BAD if bad else template.replace(SEED_SLOT, seed),
                "source": source,
                "language": language,
                "genre": category,
                "metadata": {
                    **extra,
                    "title": title,
                    "prompt_id": prompt_id,
                    "seed_index": n,
                    "seed_modifier": seed,
                },
            }
            if title is _BAD:
                fields["metadata"] = _BAD
            c.add(f"{loc} seed {n}", id=f"cw3-{prompt_id}-s{n}", id_prefix="cw3", fields=fields)
    return c.finish()
