"""Load a YAML recipe into a validated `Recipe`, or fail with an error a person can act on.

Errors name the file, the line, the field path (`generators[1].decoding.temperature`) and what is
allowed. Overrides (`{"judge.model": "qwen-max"}` or nested dicts) are merged before validation, so
an override is checked exactly like the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from configs.schema import Recipe


class ConfigError(ValueError):
    """A recipe that cannot be used. The message lists every problem with its location."""


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """The recipe at `path`. A recipe may start from another: `extends: <file>` (relative to the
    recipe's folder) deep-merges this recipe's keys over that file's (mappings merge, anything else
    is replaced; null resets a setting), as the paper's PPO recipes extend their GRPO ones."""
    path = Path(path)
    sources = _sources(path, ())
    raw: dict[str, Any] = {}
    for _, data, _ in reversed(sources):  # the furthest base first
        raw = _deep_merge(raw, data)
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(
                exc,
                path,
                sources[0][2],
                overridden=set(overrides or ()),
                bases=[(p, n) for p, _, n in sources[1:]],
            )
        ) from None


EXTENDS = "extends"


def _sources(path: Path, chain: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any], yaml.Node | None]]:
    """(file, its mapping without `extends`, its YAML node) for the recipe and each file it
    extends, the recipe first."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"{path}: recipe file not found{where}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
        root_node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping at the top level, got {type(raw).__name__}")
    base = raw.pop(EXTENDS, None)
    if base is None:
        return [(path, raw, root_node)]
    line = _line_of(root_node, (EXTENDS,))
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}:{line}: extends: the file this recipe starts from, a path")
    base_path = (path.parent / base).resolve()
    if base_path in (*chain, path.resolve()):
        raise ConfigError(f"{path}:{line}: extends: {base} extends this recipe again (a cycle)")
    return [(path, raw, root_node), *_sources(base_path, (*chain, path.resolve()))]


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge overrides into a raw recipe. Keys may be dotted paths, with list indices:
    `judge.model`, `generators.0.decoding.max_tokens`."""
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        target: Any = merged
        *parents, leaf = dotted.split(".")
        for depth, part in enumerate(parents):
            if isinstance(target, list):
                target = target[_list_index(target, part, ".".join(parents[: depth + 1]))]
                continue
            nxt = target.get(part)
            if not isinstance(nxt, dict | list):
                nxt = {}
                target[part] = nxt
            target = nxt
        if isinstance(target, list):
            target[_list_index(target, leaf, dotted)] = copy.deepcopy(value)
        elif isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            target[leaf] = _deep_merge(target[leaf], value)
        else:
            target[leaf] = copy.deepcopy(value)
    return merged


def _list_index(items: list[Any], part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(f"override {path!r}: '{part}' is not an index of a list with {len(items)} items")
    return int(part)


def parse_set_option(item: str) -> tuple[str, Any]:
    """`judge.model=qwen-max` -> ("judge.model", "qwen-max"); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. judge.model=qwen-max")
    key, _, value = item.partition("=")
    return key.strip(), yaml.safe_load(value)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def format_validation_error(
    exc: ValidationError,
    path: Path,
    root_node: yaml.Node | None,
    overridden: set[str] | None = None,
    bases: list[tuple[Path, yaml.Node | None]] | None = None,
) -> str:
    """Every problem with its file and line: the recipe's, else the file it extends that sets it."""
    lines = [f"Invalid recipe {path}:"]
    for err in exc.errors(include_url=False):
        for loc, message in _split_root_errors(err):
            display = _display_loc(loc)
            # The file that holds most of the path: the recipe, unless a base sets the value.
            located = [(source, *_locate(node, loc)) for source, node in [(path, root_node), *(bases or [])]]
            source, line, _ = max(located, key=lambda found: found[2])  # the first of the deepest
            where = f"{source}:{line}" if line else str(source)
            if overridden and any(display == o or display.startswith(o + ".") for o in overridden):
                where += " (from an override)"
            if err["type"] == "extra_forbidden":
                allowed = _allowed_fields(Recipe, loc[:-1])
                if allowed:
                    message += f"; allowed here: {', '.join(allowed)}"
            elif err["type"] == "missing":
                message = "required field is missing"
            got = err.get("input")
            secretish = bool(loc) and str(loc[-1]).endswith("_env")  # may hold a pasted key: never echo
            if (
                err["type"] not in ("missing", "extra_forbidden")
                and loc == tuple(err["loc"])
                and not isinstance(got, dict | list | tuple)
                and not secretish
            ):
                message += f" (got {got!r})"
            field = f" {display}:" if display else ""
            lines.append(f"  - {where}:{field} {message}")
    return "\n".join(lines)


_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*): (.*)$", re.S)


def _split_root_errors(err: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-field checks raise one ValueError at the model level, a "a.b[0].c: why" per line;
    give each problem its own location so it gets a line number too."""
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] != "value_error":
        return [(tuple(err["loc"]), message)]
    out = []
    for part in message.split("\n"):
        match = _PATH_PREFIX.match(part)
        if match:
            rel = tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", match.group(1)))
            out.append((tuple(err["loc"]) + rel, match.group(2)))
        else:
            out.append((tuple(err["loc"]), part))
    return out


def _display_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("openai-compatible", "anthropic", "transformers", "vllm"):
            continue  # the discriminated-union tag pydantic inserts; not a key in the file
        else:
            out += f".{part}" if out else str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of the deepest YAML node on the error's path (1-based)."""
    return _locate(node, loc)[0]


def _locate(node: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[int | None, int]:
    """(that line, how many parts of `loc` the file holds)."""
    best = node.start_mark.line + 1 if node is not None else None
    depth = 0
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            key = next((k for k, _ in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                continue  # union tags and missing keys: stay on the parent
            best = (key or match).start_mark.line + 1
            node = match
            depth += 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
            depth += 1
    return best, depth


def _allowed_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names at `loc` inside `model`, for "extra key" errors. Walks annotations: model
    fields, list items, dict values and discriminated-union tags."""
    annotation: Any = model
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    found = _only_model(annotation)
    return sorted(found.model_fields) if found else []


def _step(annotation: Any, part: Any) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _step(args[0], part)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field else None
    if origin in (list, tuple) and isinstance(part, int):
        return args[0]
    if origin is dict:
        return args[1]
    # A union: pydantic puts the tag of a discriminated union in the path, or we look inside
    # the one model member of `X | None`.
    members = [a for a in args if a is not type(None)]
    for member in members:
        if isinstance(member, type) and issubclass(member, BaseModel):
            kind = member.model_fields.get("kind")
            if kind is not None and part in typing.get_args(kind.annotation):
                return member
    single = _only_model(annotation)
    return _step(single, part) if single else None


def _only_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _only_model(args[0])
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def stable_hash(value: Any) -> str:
    """sha256 of a canonical JSON form; models are dumped in JSON mode first."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
