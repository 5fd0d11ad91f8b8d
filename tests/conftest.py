"""Shared fixtures. Every test runs with its own state folders: nothing touches the user's .wrl/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.paths import SHARED_BENCHMARKS


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Relative storage paths in recipes resolve against the cwd: give each test its own."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def shared_benchmarks() -> Path:
    if not SHARED_BENCHMARKS.is_dir():
        pytest.skip(f"benchmark files not found at {SHARED_BENCHMARKS}")
    return SHARED_BENCHMARKS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer and chat template (~3M parameters)."""
    from tests.support.tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def pytest_configure(config):
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One ephemeral Prefect API for the session (~20 s to start); heartbeats off for speed."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture(scope="session")
def embedded_model_cache(tmp_path_factory) -> Path:
    """The real embedded model, provisioned once per session (~20 s) for the slow tests."""
    from tasks.llm.embedded import ensure_embedded_model

    cache = tmp_path_factory.mktemp("models")
    ensure_embedded_model("smollm2-135m-instruct", cache)
    return cache
