"""The body of `wrl serve`: one `transformers serve` (tasks/llm/serving.py) in the foreground until
SIGTERM or Ctrl-C. flows/cli.py parses the options and prints; this module resolves what to serve,
builds the server, runs it and stops it in order.

What to serve is a local model folder, `embedded:<name>` (resolved, converted on first use, into the
recipe's model cache, or the default cache without a recipe file) or `model:<id>` (a trained policy
registered in the recipe's storage).
"""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import Callable
from pathlib import Path

from configs.loading import load_recipe
from configs.schema import EMBEDDED_MODEL_PREFIX, StorageConfig
from storage import open_storage
from tasks.llm.embedded import resolve_model_path
from tasks.llm.serving import Device, LocalModelServer, continuous_batching_args

TRAINED_MODEL_PREFIX = "model:"
LOG_DIR = Path(".wrl/logs")


class UnknownTrainedModelError(LookupError):
    """`model:<id>` names no model registered in the recipe's storage."""


class ServerExitedError(RuntimeError):
    """The server exited on its own while serving; the message ends with the tail of its log."""


def resolve_model_folder(model: str, recipe_path: Path) -> str:
    """The folder to serve for `model`: `model:<id>` looked up in the storage of the recipe at
    `recipe_path` (UnknownTrainedModelError if not registered), `embedded:<name>` resolved into its
    model cache (EmbeddedModelError), anything else as given. The recipe is read only for these two
    (ConfigError if it cannot be); `embedded:` without a recipe file uses the default cache."""
    if model.startswith(TRAINED_MODEL_PREFIX):
        model_id = model.removeprefix(TRAINED_MODEL_PREFIX)
        storage_config = load_recipe(recipe_path, {}).storage
        found = open_storage(storage_config).training.model(model_id)
        if found is None:
            raise UnknownTrainedModelError(
                f"no trained model '{model_id}' in {storage_config.root} (see `wrl models`)"
            )
        return found["path"]
    if model.startswith(EMBEDDED_MODEL_PREFIX):
        cache = (
            load_recipe(recipe_path, {}).storage.model_cache
            if recipe_path.is_file()
            else StorageConfig().model_cache
        )
        return resolve_model_path(model, Path(cache))
    return model


def foreground_server(
    folder: str,
    *,
    host: str,
    port: int,
    device: Device | str,
    startup_timeout_s: float,
    continuous_batching: bool,
    cache_tokens: int,
) -> LocalModelServer:
    """The server `wrl serve` runs for `folder` (not started): its log in `.wrl/logs/serve-<port>.log`,
    continuous batching with a KV cache of `cache_tokens` tokens, or one request at a time.
    ValueError when `folder` cannot be served."""
    return LocalModelServer(
        folder,
        host=host,
        port=port,
        device=device,
        log_path=LOG_DIR / f"serve-{port}.log",
        startup_timeout_s=startup_timeout_s,
        extra_args=continuous_batching_args(cache_tokens) if continuous_batching else (),
    )


def client_examples(server: LocalModelServer) -> dict[str, str]:
    """Ways to call a started `server`, each ready to copy: a curl command, the openai SDK, and the
    recipe backend that points at it."""
    body = {
        "model": server.model_name,
        "messages": [{"role": "user", "content": "Write a haiku about the sea."}],
        "max_tokens": 64,
    }
    url = f"{server.base_url}/chat/completions"
    sdk = (
        f"from openai import OpenAI; client = OpenAI(base_url={server.base_url!r}, api_key='unused')\n"
        f"  client.chat.completions.create(model={server.model_name!r}, "
        "messages=[{'role': 'user', 'content': 'Hello'}], max_tokens=64)"
    )
    return {
        "curl": f"curl {url} -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}",
        "openai SDK": sdk,
        "recipe backend": f"backends: {{local-server: {{kind: openai-compatible, base_url: {server.base_url}}}}}",
    }


def serve_until_stopped(
    server: LocalModelServer, *, on_ready: Callable[[], None], on_stopping: Callable[[], None]
) -> int | None:
    """Start `server` (blocking until it answers; ServerStartError if it never does), call `on_ready`,
    and serve until SIGTERM or Ctrl-C: then call `on_stopping`, stop the server in order and return
    its exit code. ServerExitedError if it exits on its own meanwhile. On every way out the server is
    stopped and the previous SIGTERM handler restored."""

    def _on_sigterm(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one orderly shutdown; stop() bounds its time
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server.start()
        on_ready()
        code = server.wait()
        raise ServerExitedError(
            f"the server exited on its own (code {code}). Last lines of its log:\n{server.log_tail()}"
        )
    except KeyboardInterrupt:
        on_stopping()
    finally:
        code = server.stop()
        signal.signal(signal.SIGTERM, previous)
    return code
