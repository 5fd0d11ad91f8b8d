"""Wall time and peak memory of the demo (`make demo`, i.e. `wrl demo`), cold and warm, per stage.

Cold: a fresh store, a fresh model cache (the embedded model is converted from its GGUF again) and
a fresh Prefect home. Warm: the same command again on that state, where every stage is a cache hit.
`make demo` is `make install` (a no-op once the venv exists) and then this command.

Memory is the resident set of the whole process tree (the CLI, the Prefect server it starts, the
flow-run processes and the `transformers serve` competitor), sampled every `--interval` seconds.
Shared pages count once per process, so this is an upper bound. The tree's samples are attributed
to stages by the stage runs' start and end times in the catalog; the time outside any stage
(process start, imports, model conversion, the Prefect server, reports) is shown as such.

    .venv/bin/python benchmarks/demo_wall_memory.py                 # cold, then warm (~16 min)
    .venv/bin/python benchmarks/demo_wall_memory.py --runs 1        # cold only
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import duckdb
import psutil
import typer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


class TreeSampler(threading.Thread):
    """Samples (unix time, RSS of a process and all its descendants) until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):  # exited since the listing
                    total += proc.memory_info().rss
            self.samples.append((time.time(), total))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_demo(config: Path, workdir: Path, interval: float) -> tuple[float, float, float, list]:
    """Runs `wrl demo` once; returns (started, ended, wall seconds, memory samples)."""
    env = {**os.environ, "PREFECT_HOME": str(workdir / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)  # the demo's default: an ephemeral API of its own
    sets = [f"storage.root={workdir / 'store'}", f"storage.model_cache={workdir / 'models'}"]
    command = [str(Path(sys.executable).with_name("wrl")), "demo", "--config", str(config),
               *(arg for s in sets for arg in ("--set", s))]  # fmt: skip
    started, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop()
    (workdir / f"demo-{started:.0f}.log").write_text(output)  # what the user saw, for the write-up
    if proc.returncode != 0:
        raise SystemExit(f"wrl demo failed ({proc.returncode}):\n{output[-4000:]}")
    return started, time.time(), wall, sampler.samples


def stage_windows(catalog: Path, since: float) -> list[dict]:
    """The stage runs that started after `since`, in order, labelled (evaluate: candidate/benchmark)."""
    with duckdb.connect(str(catalog), read_only=True) as con:
        rows = con.execute(
            "SELECT stage, status, epoch(started_at), epoch(ended_at), summary_json FROM stage_runs "
            "WHERE epoch(started_at) >= ? ORDER BY started_at",
            [since],
        ).fetchall()
    windows = []
    for stage, status, start, end, summary_json in rows:
        summary = json.loads(summary_json or "{}")
        label = stage
        if stage == "evaluate" and "candidate" in summary:
            label = f"evaluate {summary['candidate']}/{summary['benchmark']}"
        windows.append({"stage": label, "status": status, "start": start, "end": end})
    return windows


def attribute(windows: list[dict], samples: list, started: float, ended: float) -> list[dict]:
    """Per stage: seconds and peak tree RSS; plus the time outside every stage."""
    rows = []
    for w in windows:
        inside = [rss for t, rss in samples if w["start"] <= t <= w["end"]]
        rows.append({"stage": w["stage"], "status": w["status"], "seconds": w["end"] - w["start"],
                     "peak_gib": max(inside) / GIB if inside else None})  # fmt: skip
    staged = sum(w["end"] - w["start"] for w in windows)
    outside = [rss for t, rss in samples if not any(w["start"] <= t <= w["end"] for w in windows)]
    rows.append({"stage": "outside the stages (start-up, model conversion, server, reports)", "status": "",
                 "seconds": (ended - started) - staged, "peak_gib": max(outside) / GIB if outside else None})  # fmt: skip
    return rows


def main(
    config: Annotated[Path, typer.Option(help="Recipe.")] = PROJECT_ROOT / "configs" / "demo.yaml",
    runs: Annotated[int, typer.Option(help="1: cold only; 2: cold, then warm.")] = 2,
    interval: Annotated[float, typer.Option(help="Memory sampling period, seconds.")] = 0.2,
    workdir: Annotated[Path | None, typer.Option(help="Keep the state here (default: a temp dir).")] = None,
) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = (workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        for label in ("cold", "warm")[:runs]:
            started, ended, wall, samples = run_demo(config.resolve(), work, interval)
            windows = stage_windows(work / "store" / "catalog.duckdb", started)
            rows = attribute(windows, samples, started, ended)
            peak = max(rss for _, rss in samples) / GIB
            results.append({"run": label, "wall_s": wall, "peak_gib": peak, "stages": rows})
            print(f"{label}: {wall:.1f} s, peak {peak:.2f} GiB ({len(samples)} samples)", file=sys.stderr)
    when = datetime.now().strftime("%Y-%m-%d")
    print(f"`wrl demo --config {config.name}`, {when}, {os.cpu_count()} CPU cores, "
          f"{psutil.virtual_memory().total / GIB:.0f} GiB")  # fmt: skip
    header = " | ".join(f"{r['run']}: status | s | peak GiB" for r in results)
    print(f"| stage | {header} |")
    print("|---|" + "---|---|---|" * len(results))
    for i, row in enumerate(results[0]["stages"]):
        cells = []
        for r in results:
            other = r["stages"][i] if i < len(r["stages"]) else None
            if other is None:
                cells.append("- | - | -")
                continue
            peak = f"{other['peak_gib']:.2f}" if other["peak_gib"] is not None else "-"
            cells.append(f"{other['status']} | {other['seconds']:.1f} | {peak}")
        print(f"| {row['stage']} | {' | '.join(cells)} |")
    totals = " | ".join(f" | {r['wall_s']:.1f} | {r['peak_gib']:.2f}" for r in results)
    print(f"| **whole command** | {totals} |")
    print(json.dumps([{k: v for k, v in r.items() if k != "stages"} for r in results]))


if __name__ == "__main__":
    typer.run(main)
