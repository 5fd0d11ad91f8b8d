"""Kill drill: SIGKILL a generation, scoring or training process at random points, rerun, compare.

For each stage, one uninterrupted run on a fresh store gives the expected rows and the number of
LLM calls. Then, for each of POINTS random kill points (seeded), a fresh store: the worker
(tests/support/curation_worker.py, the real stages on a tiny local model, every call that reaches
the backend logged) is SIGKILLed once K calls are persisted (K uniform in 0..N, so the kill can
land before the first call, mid-stage or while the output is written), after a further random
0-300 ms. Then it runs again to completion, and the drill checks:

- the final rows equal the uninterrupted run's (same instruction ids, same texts / scores);
- no duplicates and no lost rows;
- calls made after the kill == N - calls persisted before it (no completed call repeated).

Training (`--stage train`): the worker (tests/support/train_worker.py) runs the curation and then
TRAIN_STEPS GRPO steps on the tiny model, checkpointing every 2 steps, and logs every judge call
of the train stage. The kill lands after the K-th judge call started (K uniform in 1..N) plus a
random 0-1500 ms, so anywhere in training: before the first checkpoint, between two, while one is
written, or while the final model is saved. The rerun resumes from the newest checkpoint and the
drill checks:

- the curriculum history, the per-rollout judgments (rung, verdict, reward) and the final rungs
  equal the uninterrupted run's, with every step recorded once;
- the final policy's weights are bit-identical to the uninterrupted run's;
- judge calls after the kill == N - judge calls persisted before it (the steps redone after the
  checkpoint sample the same rollouts, and their judgments come back from the response cache).

    .venv/bin/python benchmarks/kill_drill.py                       # 10 points each, ~25 minutes
    .venv/bin/python benchmarks/kill_drill.py --points 3 --stage score
    .venv/bin/python benchmarks/kill_drill.py --points 3 --stage train --ranks 2   # 2 CPU ranks (gloo)

With several ranks the trainer is its own process tree (tasks/training/launch.py): the drill kills
the stage's process and also checks that no rank outlives it (30 s grace).

The tests in tests/test_kill_resume.py (generation, scoring) and tests/test_training_resume.py
(training) are the CI sample of this drill (one point per stage).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support (not installed)

from configs.loading import load_recipe
from storage import DatasetRef, open_storage
from tests.support import train_worker
from tests.support.recipes import train_recipe, write_recipe
from tests.support.tiny_model import build_tiny_llama

PROJECT_ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = 12
TRAIN_STEPS = 6


def _recipe(root: Path, model: Path, stage: str) -> Path:
    judge = f"judge: {{backend: local, model: {model}, mode: logprob}}\n" if stage == "score" else ""
    # max_batch_size 1: one call at a time.
    return write_recipe(root / "r.yaml", store=root / "store", model=str(model), limit=INSTRUCTIONS,
                        max_tokens=48, max_batch_size=1, extra=judge)  # fmt: skip


def _start(recipe: Path, calls: Path, stage: str) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        # Judge calls on the tiny model take ~10 ms: hold each 50 ms so kills land mid-scoring.
        [sys.executable, "-m", "tests.support.curation_worker", str(recipe), str(calls), stage,
         "0.05" if stage == "score" else "0"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _persisted(storage, stage: str) -> int:
    """Completed calls of `stage` in the response cache (judge probes, or generations)."""
    probe = "= 'next_token_logprobs'" if stage == "score" else "!= 'next_token_logprobs'"
    with storage.catalog.connect() as con:
        return con.execute(f"SELECT count(*) FROM llm_responses WHERE finish_reason {probe}").fetchone()[0]


def _calls(path: Path, stage: str) -> int:
    """Calls that reached the backend (the train worker logs only the train stage's judge calls)."""
    kind = {"score": ("probe ",), "generate": ("chat ",), "train": ("probe ", "chat ")}[stage]
    return sum(1 for line in path.read_text().splitlines() if line.startswith(kind)) if path.exists() else 0


def _rows(storage, out: str, stage: str) -> dict[str, object]:
    rows = storage.datasets.read(DatasetRef.parse(out.strip().splitlines()[-1])).to_pylist()
    field = "score" if stage == "score" else "text"
    keyed = {}
    for r in rows:
        key = r["instruction_id"] if stage == "generate" else (r["instruction_id"], r["generator"])
        assert key not in keyed, f"duplicate row {key}"
        keyed[key] = r[field]
    return keyed


def _complete(recipe: Path, calls: Path, stage: str) -> str:
    done = _start(recipe, calls, stage)
    out, err = done.communicate(timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"run failed: {err[-3000:]}")
    return out


# -- training ------------------------------------------------------------------------------------


def _train_persisted(storage) -> int:
    """Completed judge calls of the train stage in the response cache."""
    try:
        with storage.catalog.connect() as con:
            return con.execute(
                "SELECT count(*) FROM llm_responses JOIN stage_runs USING (stage_run_id) WHERE stage = 'train'"
            ).fetchone()[0]
    except Exception:  # the catalog is not created yet
        return 0


def _training_result(storage, out: str) -> dict[str, object]:
    """What a finished training leaves: history, judgments, final rungs, weights digest."""
    summary = train_worker.summary_of(out)
    with storage.catalog.connect() as con:
        (curriculum_id,) = con.execute("SELECT curriculum_id FROM curricula").fetchone()
        history = con.execute(
            "SELECT step, instruction_id, rung_judged, rung_before, rung_after, wins, ties, losses, failures, "
            "mean_reward, promoted FROM curriculum_history WHERE curriculum_id = ? ORDER BY step, instruction_id",
            [curriculum_id],
        ).fetchall()
        judgments = con.execute(
            "SELECT step, sample_index, instruction_id, rung, reward, judge_reward, verdict, error, "
            "completion_chars FROM train_judgments WHERE train_run_id = ? ORDER BY step, sample_index",
            [curriculum_id],
        ).fetchall()
    keys = [(r[0], r[1]) for r in judgments]
    assert len(keys) == len(set(keys)), "duplicate judgments"
    return {"history": history, "judgments": judgments, "final_rungs": summary["final_rungs"],
            "steps": summary["steps"], "weights": train_worker.weights_digest(summary["model_path"])}  # fmt: skip


def _complete_train(recipe: Path, calls: Path) -> str:
    done = train_worker.start(recipe, calls_file=calls)
    out, err = done.communicate(timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"training run failed: {err[-3000:]}")
    return out


def _trainer_ranks(root: Path) -> list[int]:
    """PIDs of trainer ranks (or their launcher) still running for the store under `root`: their
    command lines name the job's spec or accelerate configuration, both in its work folder."""
    import psutil

    work = str(root / "store" / "training")
    return [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if work in " ".join(p.info["cmdline"] or ())
    ]


def _wait_for_no_ranks(root: Path, timeout_s: float = 30.0) -> list[int]:
    """Ranks outliving the killed stage past `timeout_s` (empty: every one died with it)."""
    deadline = time.monotonic() + timeout_s
    while (left := _trainer_ranks(root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def train_drill(points: int, rng: random.Random, model: Path, ranks: int = 1) -> int:
    """The training kill points; prints one row each and returns the number that failed."""
    extra = f"  processes: {ranks}\n"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = Path(train_recipe(root, model, max_steps=TRAIN_STEPS, training_extra=extra))
        expected = _training_result(
            open_storage(load_recipe(recipe).storage), _complete_train(recipe, root / "calls")
        )
        total = _calls(root / "calls", "train")
    failures = 0
    for point in range(1, points + 1):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            recipe = Path(train_recipe(root, model, max_steps=TRAIN_STEPS, training_extra=extra))
            storage = open_storage(load_recipe(recipe).storage)
            calls = root / "calls"
            k, extra_ms = rng.randint(1, total), rng.randint(0, 1500)
            worker = train_worker.start(recipe, calls_file=calls)
            while worker.poll() is None and _calls(calls, "train") < k:
                time.sleep(0.01)
            time.sleep(extra_ms / 1000)
            finished_first = worker.poll() is not None
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
            orphans = _wait_for_no_ranks(root)  # the ranks die with the stage that launched them
            persisted, before = _train_persisted(storage), _calls(calls, "train")
            checkpoints = sorted(
                int(p.name.split("-")[1]) for p in (root / "store" / "training").glob("*/checkpoint-*")
            )
            result = _training_result(storage, _complete_train(recipe, calls))
            after = _calls(calls, "train") - before
            same = {key: result[key] == expected[key] for key in expected}
            ok = all(same.values()) and after == total - persisted and not orphans
            failures += not ok
            verdict = (
                ("ok" if ok else "FAILED " + ", ".join(k for k, v in same.items() if not v))
                + (" (finished before the kill)" if finished_first else "")
                + (f" ({len(orphans)} trainer processes outlived the kill)" if orphans else "")
            )
            print(f"| train ({ranks} rank{'s' if ranks > 1 else ''}) | {point} | {k} | {extra_ms} | {persisted} (checkpoint {max(checkpoints, default='-')}) "
                  f"| {after} | {total - persisted} | {all(same.values())} | {verdict} |", flush=True)  # fmt: skip
    return failures


def main(
    points: Annotated[int, typer.Option(help="Kill points per stage.")] = 10,
    stage: Annotated[
        list[str] | None, typer.Option(help="generate, score or train (repeatable; default all three).")
    ] = None,
    seed: int = 0,
    ranks: Annotated[int, typer.Option(help="train: trainer ranks (CPU processes over gloo).")] = 1,
) -> None:
    stages = stage or ["generate", "score", "train"]
    rng = random.Random(seed)
    model = build_tiny_llama(Path(tempfile.mkdtemp(prefix="drill-model-")))
    print(
        "| stage | point | kill after K calls (persisted; train: started) | +ms | persisted at kill | calls after | expected | rows equal | result |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for name in stages:
        if name == "train":
            failures += train_drill(points, rng, model, ranks)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "baseline"
            root.mkdir()
            recipe = _recipe(root, model, name)
            expected_rows = _rows(
                open_storage(load_recipe(recipe).storage), _complete(recipe, root / "calls", name), name
            )
            total = _calls(root / "calls", name)
        for point in range(1, points + 1):
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                recipe = _recipe(root, model, name)
                storage = open_storage(load_recipe(recipe).storage)
                calls = root / "calls"
                k, extra_ms = rng.randint(0, total), rng.randint(0, 300)
                worker = _start(recipe, calls, name)
                while worker.poll() is None and _persisted(storage, name) < k:
                    time.sleep(0.01)
                time.sleep(extra_ms / 1000)
                finished_first = worker.poll() is not None
                worker.send_signal(signal.SIGKILL)
                worker.wait(timeout=30)
                persisted, before = _persisted(storage, name), _calls(calls, name)
                rows = _rows(storage, _complete(recipe, calls, name), name)
                after = _calls(calls, name) - before
                ok = rows == expected_rows and after == total - persisted
                failures += not ok
                result = ("ok" if ok else "FAILED") + (
                    " (finished before the kill)" if finished_first else ""
                )
                print(f"| {name} | {point} | {k} | {extra_ms} | {persisted} | {after} | {total - persisted} | "
                      f"{rows == expected_rows} | {result} |", flush=True)  # fmt: skip
    print(json.dumps({"points": points * len(stages), "failures": failures}))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    typer.run(main)
