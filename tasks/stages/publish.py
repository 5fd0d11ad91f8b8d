"""What a stage run shows in the Prefect UI: a markdown artifact on its task run, and asset events.

The OSS UI has no asset graph, so the artifact carries the lineage: the input and output dataset
versions, each linked to the task run of the stage run that wrote it (click back hop by hop, from a
training run to its ladders, scores, generations and judge), the config hash, the judge, counts and
failures. The `prefect.asset.*` events are what Prefect Cloud draws its asset graph from; the OSS
server keeps them in its event feed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from configs.schema import judge_label
from storage import DatasetRef, Storage

if TYPE_CHECKING:
    from tasks.stages.runner import StageResult

MATERIALIZED_BY = "writing-rl"


def publish_stage_run(
    result: StageResult,
    inputs: Mapping[str, DatasetRef],
    config: Any,
    storage: Storage,
    producers: Mapping[DatasetRef, dict[str, Any]] | None = None,
) -> None:
    """Nothing outside a Prefect run (the CLI's single stage, unit tests). `producers`: the
    catalog's `producers` of the inputs (and of a cache hit's outputs), if the caller has them."""
    from prefect.context import get_run_context

    try:
        get_run_context()
    except Exception:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=stage_markdown(result, inputs, config, storage, producers),
        key=f"stage-{result.stage.replace('_', '-')}",  # keys take lowercase letters, digits and dashes
        description=f"{result.stage}: inputs, outputs and lineage",
    )
    if not result.cached:  # a cache hit materialised nothing (Prefect's own rule for cached tasks)
        emit_asset_events(result, inputs, config, storage)


def stage_markdown(
    result: StageResult,
    inputs: Mapping[str, DatasetRef],
    config: Any,
    storage: Storage,
    producers: Mapping[DatasetRef, dict[str, Any]] | None = None,
) -> str:
    how = "cache hit" if result.cached else f"computed in {result.elapsed_s:.1f} s"
    lines = [
        f"### {result.stage} ({how})",
        "",
        f"stage run `{result.stage_run_id}` · config hash `{result.config_hash[:16]}`"
        f" · cache key `{result.cache_key[:16]}`",
    ]
    judge = describe_judge(config)
    if judge:
        lines += ["", f"judge: `{judge}`"]
    refs = [*inputs.values(), *(result.outputs.values() if result.cached else ())]
    links = producer_links(storage, refs, producers)
    lines += ["", "| | dataset | written by |", "|---|---|---|"]
    for role, ref in inputs.items():
        lines.append(f"| input ({_cell(role)}) | `{ref}` | {links[ref]} |")
    for role, ref in result.outputs.items():
        written_by = links[ref] if result.cached else "this run"
        lines.append(f"| output ({_cell(role)}) | `{ref}` | {written_by} |")
    if result.summary:
        lines += ["", "| count | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(_compact(v))} |" for k, v in result.summary.items()]
    return "\n".join(lines) + "\n"


def emit_asset_events(
    result: StageResult, inputs: Mapping[str, DatasetRef], config: Any, storage: Storage
) -> None:
    """One `prefect.asset.materialization.succeeded` per output, its inputs as related assets, in
    the shapes Prefect's own `@materialize` emits. The key names the Delta table; the version is
    in the payload (asset keys are not versioned)."""
    from prefect.events import emit_event

    related = [{"prefect.resource.id": asset_key(storage, ref), "prefect.resource.role": "asset"}
               for ref in inputs.values()]  # fmt: skip
    for ref in inputs.values():
        emit_event(event="prefect.asset.referenced", resource=_asset_resource(storage, ref), related=[])
    materialized_by = {
        "prefect.resource.id": MATERIALIZED_BY,
        "prefect.resource.role": "asset-materialized-by",
    }
    for ref in result.outputs.values():
        emit_event(
            event="prefect.asset.materialization.succeeded",
            resource=_asset_resource(storage, ref),
            related=[*related, materialized_by],
            payload={
                "version": ref.version,
                "dataset_version": str(ref),
                "stage": result.stage,
                "stage_run_id": result.stage_run_id,
                "config_hash": result.config_hash,
                "judge": describe_judge(config),
            },
        )


def asset_key(storage: Storage, ref: DatasetRef) -> str:
    return "delta://" + quote(str(storage.datasets.path_of(ref.name).resolve()).lstrip("/"), safe="/")


def _asset_resource(storage: Storage, ref: DatasetRef) -> dict[str, str]:
    return {"prefect.resource.id": asset_key(storage, ref), "prefect.resource.name": ref.name}


def producer_links(
    storage: Storage,
    refs: Iterable[DatasetRef],
    producers: Mapping[DatasetRef, dict[str, Any]] | None = None,
) -> dict[DatasetRef, str]:
    """Markdown per ref: the stage run that wrote it, linked to its Prefect task run (or flow run).
    One catalog query for all of them, unless `producers` has them already."""
    refs = list(refs)
    ui = _ui_base()
    if producers is None:
        producers = storage.catalog.producers(refs)
    links = {}
    for ref in refs:
        producer = producers.get(ref)
        if producer is None:
            links[ref] = "-"
            continue
        label = f"{producer['stage']} · stage run {producer['stage_run_id'][:8]}"
        if producer["prefect_task_run_id"]:
            links[ref] = f"[{label}]({ui}/runs/task-run/{producer['prefect_task_run_id']})"
        elif producer["prefect_flow_run_id"]:
            links[ref] = f"[{label}]({ui}/runs/flow-run/{producer['prefect_flow_run_id']})"
        else:  # written outside Prefect (`wrl stage` with no run context)
            links[ref] = label
    return links


def artifact_link(key: str) -> str:
    """Markdown: the UI page of a keyed artifact (its latest version and its history)."""
    return f"[{key}]({_ui_base()}/artifacts/key/{key})"


def _ui_base() -> str:
    """Relative links on a self-hosted server: the UI resolves them against its own origin, so
    they work through an SSH tunnel or a proxy too. Cloud pages live under the workspace's path."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url and settings.api.url.startswith(settings.cloud.api_url):
        return (settings.ui_url or "").rstrip("/")
    return ""


def describe_judge(config: Any) -> str | None:
    """The judge's label (`configs.schema.judge_label`) from a stage's stored config slice, where
    the backend is its identity; None if the stage has no judge."""
    judge = config.get("judge") if isinstance(config, dict) else None
    if not isinstance(judge, dict):
        return None
    backend = judge.get("backend") or {}
    return judge_label(backend.get("name", "?"), str(judge.get("model")), str(judge.get("mode")),
                       str(judge.get("prompt_version")))  # fmt: skip


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
