"""Backend registry: recipe `backends.<name>.kind` -> the factory that builds its LLMClient.

Kinds are the ones `configs.schema` allows; a kind the schema allows but this build does not
implement yet fails with `BackendUnavailableError` naming the backend and kind, when a client is
created (not when the recipe loads, so a recipe can be validated anywhere).

Factories import their backend lazily: importing this module stays cheap (no torch).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from configs.schema import Backend, Recipe
from tasks.llm.base import BackendUnavailableError, LLMClient
from tasks.registry import Registry

# (recipe, backend name, that backend's config, model) -> client
BackendFactory = Callable[[Recipe, str, Any, str], LLMClient]


def _schema_kinds() -> tuple[str, ...]:
    union = typing.get_args(Backend)[0]  # Annotated[A | B | ..., Field(discriminator="kind")]
    kinds: list[str] = []
    for model in typing.get_args(union):
        kinds.extend(typing.get_args(model.model_fields["kind"].annotation))
    return tuple(kinds)


SCHEMA_BACKEND_KINDS: tuple[str, ...] = _schema_kinds()
BACKENDS: Registry[BackendFactory] = Registry("backend kind", allowed=SCHEMA_BACKEND_KINDS)


def register_backend(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    """Decorator registering the factory for `kind`; a kind registers once, and must be in the schema."""
    return BACKENDS.register(kind)


def registered_kinds() -> frozenset[str]:
    return frozenset(BACKENDS)


def create_client(recipe: Recipe, backend_name: str, model: str) -> LLMClient:
    """Build the client for `model` on the recipe's backend `backend_name`."""
    try:
        config = recipe.backends[backend_name]
    except KeyError:
        defined = ", ".join(sorted(recipe.backends)) or "none"
        raise ValueError(
            f"backend '{backend_name}' is not defined in recipe '{recipe.name}'; defined: {defined}"
        ) from None
    factory = BACKENDS.get(config.kind)
    if factory is None:
        available = ", ".join(sorted(BACKENDS)) or "none"
        raise BackendUnavailableError(
            f"backend '{backend_name}' has kind '{config.kind}', which is not available in this build "
            f"(available kinds: {available})"
        )
    return factory(recipe, backend_name, config, model)


@register_backend("transformers")
def _transformers(recipe: Recipe, backend_name: str, config: Any, model: str) -> LLMClient:
    from tasks.llm.transformers_backend import TransformersClient

    return TransformersClient(backend_name, config, model, Path(recipe.storage.model_cache))


@register_backend("openai-compatible")
def _openai(recipe: Recipe, backend_name: str, config: Any, model: str) -> LLMClient:
    from tasks.llm.openai_backend import LocallyServedClient, OpenAICompatibleClient

    if config.serve_locally is None:
        return OpenAICompatibleClient(backend_name, config, model)
    from tasks.llm.embedded import resolve_model_path_once
    from tasks.llm.serving import shared_server

    folder = resolve_model_path_once(model, Path(recipe.storage.model_cache))
    server = shared_server(folder, config.serve_locally, log_dir=Path(recipe.storage.root) / "logs")
    return LocallyServedClient(backend_name, config, model, server)


@register_backend("anthropic")
def _anthropic(recipe: Recipe, backend_name: str, config: Any, model: str) -> LLMClient:
    from tasks.llm.anthropic_backend import AnthropicClient

    return AnthropicClient(backend_name, config, model)


@register_backend("vllm")
def _vllm(recipe: Recipe, backend_name: str, config: Any, model: str) -> LLMClient:
    from tasks.llm.vllm_backend import VLLMClient

    return VLLMClient(backend_name, config, model, Path(recipe.storage.model_cache))


def release_local_engines() -> int:
    """Drop this process's in-process models (transformers) and engines (vLLM), so that a process
    started next (the trainer) gets the memory they held. Backends not imported are not touched.
    Returns how many were released; a later client loads its model again."""
    import sys

    released = 0
    if "tasks.llm.transformers_backend" in sys.modules:
        released += sys.modules["tasks.llm.transformers_backend"].release_models()
    if "tasks.llm.vllm_backend" in sys.modules:
        released += sys.modules["tasks.llm.vllm_backend"].release_engines()
    return released
