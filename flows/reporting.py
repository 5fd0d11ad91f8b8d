"""The end-of-flow report of build-dataset: Prefect artifacts for the UI, rich tables for the terminal.

The numbers come from tasks.curation.report (pure, tested on its own); this module only reads the
stage outputs back from storage, writes the PNG next to the run's exports and publishes:

- table artifacts `<recipe>-curation-stages`, `-generators`, `-margins`, `-failures` (keyed, so the
  Artifacts page shows their history across runs);
- an image artifact `<recipe>-curation-plot`;
- after training: a table `<recipe>-training-steps` (per-step metrics) and an image
  `<recipe>-training-plot` (reward, win rate, mean rung over steps; the final rung distribution). The image is embedded as a data: URL (a local PNG
  has no URL a browser could fetch); the file itself is under `<storage root>/reports/<run id>/`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from rich.console import Console
from rich.table import Table

from storage import DatasetRef, Storage
from tasks.curation.report import curation_report, plot_curation_report
from tasks.stages.publish import artifact_link, producer_links
from tasks.training.report import plot_training_report, reached_top_text, training_report

REPORTED_DATASETS = (
    "generations",
    "judgments",
    "selections",
    "ladders",
    "train_metrics",
    "curriculum_history",
)


def figures_drawn_before(storage: Storage) -> Path:
    """Where report figures are kept by what they show, so a warm run copies instead of drawing."""
    return storage.root / "reports" / ".figures"


def build_report(storage: Storage, run_id: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Read the run's outputs back, compute the report and draw its plot (path in `plot`)."""
    tables = {}
    for stage in stages:
        for name, ref in stage["outputs"].items():
            if name in REPORTED_DATASETS:
                tables[name] = storage.datasets.read(DatasetRef.parse(ref))
    report = curation_report(stages, tables)
    folder, figures = storage.root / "reports" / run_id, figures_drawn_before(storage)
    plot = plot_curation_report(report, folder / "curation.png", figures)
    report["plot"] = str(plot) if plot is not None else None
    if "train_metrics" in tables:
        report["training"] = training_report(tables["train_metrics"], tables["curriculum_history"])
        plot = plot_training_report(report["training"], folder / "training.png", figures)
        report["training"]["plot"] = str(plot) if plot is not None else None
    return report


def artifact_key(recipe: str, what: str, section: str = "curation") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", recipe.lower()).strip("-") or "recipe"
    return f"{slug}-{section}-{what}"


def _margin_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    margins = report["margins"]
    return [{"instructions": group, **margins[group]} for group in ("all", "selected")]


def publish_artifacts(
    report: Mapping[str, Any], recipe: str, storage: Storage, stages: list[dict[str, Any]]
) -> list[str]:
    """Create the report's artifacts in the current flow run; returns their keys (none outside a run).
    The summary, published last, links to the others and to the task run behind each dataset."""
    if FlowRunContext.get() is None:
        return []
    published = []

    def table(what: str, rows: list[dict[str, Any]], description: str) -> None:
        key = artifact_key(recipe, what)
        create_table_artifact(table=rows, key=key, description=description)
        published.append(key)

    table(
        "stages", [_flat_stage(s) for s in report["stages"]], "Per stage: cached or computed, rows, failures."
    )
    table("generators", report["generators"], "Per generator: responses, failures, judge score s_j.")
    if "margins" in report:
        selection = report["selection"]
        table(
            "margins",
            _margin_rows(report),
            f"Learning potential p ({selection['strategy']}): {selection['selected']} selected, "
            f"{selection['dropped']} dropped {selection['drop_reasons']}.",
        )
    failures = report["failures"]
    table(
        "failures",
        failures["listed"] or [{"stage": "-", "instruction_id": "-", "generator": "-", "error": "none"}],
        f"{failures['total']} failures {failures['by_stage']} (first {len(failures['listed'])} listed).",
    )
    if report.get("plot"):
        published.append(
            image_artifact(
                report["plot"], artifact_key(recipe, "plot"), "p per instruction and ladder score gaps"
            )
        )
    training = report.get("training")
    if training:
        key = artifact_key(recipe, "steps", section="training")
        rows = [{k: v for k, v in step.items() if k != "rung_counts"} for step in training["steps"]]
        create_table_artifact(table=rows, key=key, description=(
            f"Per step: reward, win/tie/loss rates, judge failures, the mean rung over all instructions and "
            f"how many sit on each rung, promotions, length, KL, seconds. "
            f"Final rungs {training['final_rungs']}, {training['promotions']} promotions; "
            f"{reached_top_text(training)}."))  # fmt: skip
        published.append(key)
        if training.get("plot"):
            published.append(
                image_artifact(
                    training["plot"],
                    artifact_key(recipe, "plot", section="training"),
                    "reward, win rate and mean rung (all instructions) over steps; instructions per rung",
                )
            )
    create_markdown_artifact(
        markdown=_markdown_summary(report, storage, stages, published),
        key=artifact_key(recipe, "summary"),
        description="Run summary, linked to the report artifacts and the stage runs",
    )
    published.append(artifact_key(recipe, "summary"))
    return published


def image_artifact(png_path: str, key: str, description: str) -> str:
    """An image artifact carrying the PNG as a data: URL (a local file has no URL a browser could
    fetch); the description names the file. Returns the key."""
    data = base64.b64encode(Path(png_path).read_bytes()).decode("ascii")
    create_image_artifact(
        image_url=f"data:image/png;base64,{data}", key=key, description=f"{description}; file: {png_path}"
    )
    return key


def _flat_stage(stage: Mapping[str, Any]) -> dict[str, Any]:
    rows = ", ".join(f"{k}={v}" for k, v in stage["rows"].items())
    return {**{k: v for k, v in stage.items() if k != "rows"}, "rows": rows}


def _markdown_summary(
    report: Mapping[str, Any], storage: Storage, stages: list[dict[str, Any]], artifact_keys: list[str]
) -> str:
    lines = ["# Run summary", ""]
    if "selection" in report:
        s = report["selection"]
        lines.append(
            f"**Selection** ({s['strategy']}): {s['selected']} of {s['instructions']} kept; dropped: "
            f"{s['drop_reasons'] or 'none'}."
        )
    if "ladders" in report:
        lines.append(f"**Ladders**: {report['ladders']['ladders']}, rungs {report['ladders']['rungs']}.")
    training = report.get("training")
    if training:
        lines.append(f"**Training**: {len(training['steps'])} steps, {training['promotions']} promotions, "
                     f"final rungs {training['final_rungs']}; {reached_top_text(training)}.")  # fmt: skip
    lines.append(f"**Failures**: {report['failures']['total']} {report['failures']['by_stage']}.")
    lines.append("**Report artifacts**: " + ", ".join(artifact_link(k) for k in artifact_keys))
    links = producer_links(storage, [DatasetRef.parse(ref) for s in stages for ref in s["outputs"].values()])
    rows = ["| stage | run | output | written by |", "|---|---|---|---|"]
    for stage in stages:
        how = "cache hit" if stage["cached"] else f"computed, {stage['elapsed_s']} s"
        for ref in stage["outputs"].values():
            rows.append(f"| {stage['stage']} | {how} | `{ref}` | {links[DatasetRef.parse(ref)]} |")
    lines.append("**Stages** (each output linked to the task run that wrote it; its `stage-<name>` "
                 "artifact lists its inputs, config hash and judge):\n\n" + "\n".join(rows))  # fmt: skip
    files = [report.get("plot"), (training or {}).get("plot")]
    lines.append("**Plot files**: " + ", ".join(f"`{f}`" for f in files if f))
    return "\n\n".join(lines)


def print_report(report: Mapping[str, Any], console: Console) -> None:
    """The report as terminal tables (the same numbers as the artifacts)."""

    def show(title: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column, overflow="fold", max_width=70)
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        console.print(table)

    show("Score per generator (judge s_j)", report["generators"])
    if "margins" in report:
        s = report["selection"]
        show(
            f"Learning potential p: {s['selected']} selected, {s['dropped']} dropped "
            f"{s['drop_reasons'] or ''}",
            _margin_rows(report),
        )
    if "ladders" in report:
        levels = [
            {"gap": f"rung {k}->{int(k) + 1}", **v} for k, v in report["ladders"]["gaps_by_level"].items()
        ]
        show(f"Ladder score gaps ({report['ladders']['ladders']} ladders)", levels)
    failures = report["failures"]
    if failures["total"]:
        show(f"Failures: {failures['total']} {failures['by_stage']}", failures["listed"][:10])
    else:
        console.print("Failures: none")
    if report.get("plot"):
        console.print(f"Plot: {report['plot']}")
    training = report.get("training")
    if training:
        columns = (
            "step",
            "reward",
            "win_rate",
            "judge_failures",
            "mean_rung",
            "rungs",
            "promotions",
            "topped",
            "kl",
        )
        if any(s.get("val_reward") is not None for s in training["steps"]):
            columns += ("val_reward", "val_vs_initial", "val_vs_top")
        show(
            f"Training: {training['promotions']} promotions, final rungs {training['final_rungs']}; "
            f"{reached_top_text(training)}",
            [{c: s[c] for c in columns} for s in training["steps"]],
        )
        if training.get("plot"):
            console.print(f"Training plot: {training['plot']}")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 1e-3 else f"{value:.3f}"  # KL is ~1e-4
    return "-" if value is None else str(value)
