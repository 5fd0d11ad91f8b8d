"""The training part of the end-of-run report: per-step curves and the rung distribution.

`training_report` reads the stage's `train_metrics` (long format: step, source, name, value) and
`curriculum_history` (with when each instruction first beat its top rung, `reached_top`);
`plot_training_report` draws reward (with the periodic validation's, when
the run validated), win rate and the mean rung over all instructions per step, and how many
instructions sit on each rung as the steps go, to a PNG.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.plotting import drawn_before, png_figure

TOPPED_METRIC = "curriculum/topped"  # instructions whose rollouts have beaten their top rung so far
STEP_COLUMNS = {  # report column -> (source, metric name)
    "reward": ("reward", "reward/mean"),
    "win_rate": ("reward", "judge/win_rate"),
    "tie_rate": ("reward", "judge/tie_rate"),
    "loss_rate": ("reward", "judge/loss_rate"),
    "judge_failures": ("reward", "judge/failures"),
    "mean_rung": ("reward", "curriculum/mean_rung"),  # over ALL instructions, after the step
    "promotions": ("reward", "curriculum/promotions"),
    "topped": ("reward", TOPPED_METRIC),
    "completion_length": ("trainer", "completions/mean_length"),
    "kl": ("trainer", "kl"),
    "loss": ("trainer", "loss"),
    "step_s": ("reward", "time/step_s"),
    # Periodic validation on the held-out ladders (training.eval_steps): TRL logs it as eval_*.
    "val_reward": ("trainer", "eval_validation/reward"),
    "val_vs_initial": ("trainer", "eval_validation/reward_vs_initial"),
    "val_vs_top": ("trainer", "eval_validation/reward_vs_top"),
}
RUNG_COUNT_PREFIX = "curriculum/instructions_at_rung/"  # + rung: instructions on it after the step


def _rung_counts(values: Mapping[tuple[str, str], float]) -> dict[int, int]:
    return dict(
        sorted(
            (int(name.removeprefix(RUNG_COUNT_PREFIX)), int(value))
            for (source, name), value in values.items()
            if source == "reward" and name.startswith(RUNG_COUNT_PREFIX)
        )
    )


def training_report(metrics: pa.Table, history: pa.Table) -> dict[str, Any]:
    values: dict[int, dict[tuple[str, str], float]] = defaultdict(dict)
    for row in metrics.select(["step", "source", "name", "value"]).to_pylist():
        values[row["step"]][(row["source"], row["name"])] = row["value"]
    steps = []
    for step in sorted(values):
        counts = _rung_counts(values[step])
        steps.append(
            {"step": step, **{col: values[step].get(key) for col, key in STEP_COLUMNS.items()},
             "rungs": " ".join(f"{rung}:{n}" for rung, n in counts.items()) or None,
             "rung_counts": counts}
        )  # fmt: skip
    # Every instruction's rung at the end (the last step's counts); a run recorded before these
    # counts existed falls back to the instructions its history names.
    final = steps[-1]["rung_counts"] if steps and steps[-1]["rung_counts"] else None
    if final is None:
        last: dict[str, int] = {}
        for row in sorted(
            history.select(["step", "instruction_id", "rung_after"]).to_pylist(), key=lambda r: r["step"]
        ):
            last[row["instruction_id"]] = row["rung_after"]
        final = dict(sorted(Counter(last.values()).items()))
    # When each instruction first beat its top rung (curriculum.top; a history recorded before the
    # column existed has none to tell).
    reached = (
        sorted((r["step"], r["instruction_id"]) for r in history.select(["step", "instruction_id", "reached_top"])
               .to_pylist() if r["reached_top"])
        if "reached_top" in history.column_names else []
    )  # fmt: skip
    return {
        "steps": steps,
        "final_rungs": final,
        "promotions": sum(1 for p in history.column("promoted").to_pylist() if p) if history.num_rows else 0,
        "reached_top": [{"step": step, "instruction_id": iid} for step, iid in reached],
    }


def reached_top_text(report: Mapping[str, Any]) -> str:
    """'2 instructions beat their top rung (steps 3, 5)', for the terminal and the summary."""
    reached = report.get("reached_top") or []
    if not reached:
        return "no instruction beat its top rung"
    steps = ", ".join(str(r["step"]) for r in reached)
    return f"{len(reached)} instruction{'s' if len(reached) != 1 else ''} beat their top rung (steps {steps})"


def plot_training_report(report: Mapping[str, Any], path: Path, figures: Path | None = None) -> Path | None:
    steps = report.get("steps") or []
    if not steps:
        return None
    before = drawn_before(figures, plot_training_report, steps, report.get("final_rungs"))
    if before is not None and before.copy_to(path):
        return path
    with png_figure(path, 4, (16, 3.8), before) as axes:
        xs = [s["step"] for s in steps]
        for ax, (column, title) in zip(
            axes[:3],
            (
                ("reward", "reward (mean)"),
                ("win_rate", "win rate"),
                ("mean_rung", "mean rung, all instructions"),
            ),
            strict=True,
        ):
            ys = [s[column] if s[column] is not None else float("nan") for s in steps]
            ax.plot(xs, ys, marker="o", markersize=3, label="training")
            ax.set_title(title)
        validated = [s for s in steps if s.get("val_reward") is not None]
        if validated:  # held-out ladders, every rung (tasks/training/reward.py: validate)
            for column, label in (("val_reward", "validation, all rungs"), ("val_vs_initial",
                                  "validation vs its initial response"), ("val_vs_top", "validation vs top rung")):  # fmt: skip
                points = [(s["step"], s[column]) for s in validated if s.get(column) is not None]
                axes[0].plot(
                    *zip(*points, strict=True), marker="s", markersize=4, linestyle="--", label=label
                )
            axes[0].legend(loc="best", fontsize="small")
            ax.set_xlabel("step")
        top = max((max(s["rung_counts"], default=0) for s in steps), default=0)
        if any(s["rung_counts"] for s in steps):
            layers = [[s["rung_counts"].get(rung, 0) for s in steps] for rung in range(top + 1)]
            axes[3].stackplot(xs, layers, labels=[f"rung {rung}" for rung in range(top + 1)])
            axes[3].legend(loc="upper left", fontsize="small")
            axes[3].set_title("instructions per rung")
            axes[3].set_xlabel("step (rung 0 = the lowest response of each ladder)")
        else:
            rungs = report.get("final_rungs") or {}
            axes[3].bar([str(k) for k in rungs], list(rungs.values()), color="tab:green")
            axes[3].set_title("instructions per rung (end)")
            axes[3].set_xlabel("rung (0 = the lowest response of each ladder)")
    return path
