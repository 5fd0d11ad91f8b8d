"""Judge throughput: our async client vs the official Writing-RL approach, same server, same run.

A local OpenAI-compatible server (tests/support/fault_server.py) runs in its own process with a
fixed injected latency and a rate limit it enforces itself (429 + Retry-After beyond it, counted
per second). N judge-sized requests (a ~1,200-word response inside a judging prompt) go through:

- ours: `OpenAICompatibleClient` via the backend registry and `chat_many`, with the recipe's
  requests_per_minute set to the server's limit;
- official: what verl/utils/reward_score/writing_rl.py does: 12 threads (API_PARALLEL=12), a fresh
  synchronous `openai.OpenAI` client per call (SDK default retries), up to 3 tries with a fixed
  5 s sleep, and a failure returned as None (which the official reward scores as a loss).

Reports achieved requests/s, the fraction of the rate limit, failures and the 429s the server
sent. Run: `.venv/bin/python benchmarks/judge_throughput.py` (see --help).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import openai
import typer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.schema import Decoding, Recipe
from tasks.llm.base import ChatRequest, chat_many
from tasks.llm.registry import create_client

MODEL = "judge"
RESPONSE = " ".join(f"word{i % 97}" for i in range(1200))
PROMPT = (
    "You are a strict judge of long-form writing. Compare the two responses to the instruction "
    "below and reply with a short rationale and a final verdict [[A]], [[B]] or [[C]].\n\n"
    "Instruction: write an essay.\n\n[Response A]\n{a}\n[End of Response A]\n\n"
    "[Response B]\n{b}\n[End of Response B]\n"
)


def _serve(conn, latency_s: float, rpm: int) -> None:
    from tests.support.fault_server import FaultServer

    with FaultServer(latency_s=latency_s, requests_per_minute=rpm, rate_window_s=1.0) as server:
        conn.send(server.openai_base_url)
        conn.recv()  # "stop"
        rate_limited = sum(1 for r in server.requests if r.fault == "rate_limit")
        conn.send({"requests": len(server.requests), "rate_limited": rate_limited})


class Server:
    def __init__(self, latency_s: float, rpm: int):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, latency_s, rpm), daemon=True)

    def __enter__(self) -> str:
        self._proc.start()
        return self._conn.recv()

    def stats(self) -> dict:
        self._conn.send("stop")
        stats = self._conn.recv()
        self._proc.join(timeout=30)
        return stats

    def __exit__(self, *exc) -> None:
        if self._proc.is_alive():
            self._proc.kill()


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": PROMPT.format(a=f"{i} " + RESPONSE, b=RESPONSE)}]


def run_ours(base_url: str, n: int, rpm: int, concurrency: int) -> tuple[float, int]:
    recipe = Recipe.model_validate({
        "name": "bench",
        "backends": {"judge": {"kind": "openai-compatible", "base_url": base_url, "max_concurrency": concurrency,
                               "requests_per_minute": rpm, "max_retries": 6, "timeout_s": 60}},
        "generators": [{"name": "policy", "role": "policy", "backend": "judge", "model": MODEL}],
    })  # fmt: skip
    client = create_client(recipe, "judge", MODEL)
    params = Decoding(temperature=0.1, max_tokens=256, seed=0)
    requests = [ChatRequest(tuple(_messages(i)), params) for i in range(n)]

    async def go():
        try:
            return await chat_many(client, requests, max_concurrency=concurrency)
        finally:
            await client.aclose()

    started = time.perf_counter()
    results = asyncio.run(go())
    return time.perf_counter() - started, sum(1 for r in results if not r.ok)


def official_call(base_url: str, messages: list[dict]) -> str | None:
    retry_cnt = 0
    while retry_cnt < 3:
        try:
            client = openai.OpenAI(api_key="unused", base_url=base_url)
            response = client.chat.completions.create(model=MODEL, messages=messages, temperature=0.1)
            return response.choices[0].message.content
        except Exception:
            retry_cnt += 1
            time.sleep(5)
    return None


def run_official(base_url: str, n: int, threads: int = 12) -> tuple[float, int]:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda i: official_call(base_url, _messages(i)), range(n)))
    return time.perf_counter() - started, sum(1 for r in results if r is None)


def main(
    requests: Annotated[int, typer.Option(help="Requests per approach.")] = 600,
    latency_s: Annotated[float, typer.Option(help="Injected server latency per request.")] = 0.5,
    rpm: Annotated[int, typer.Option(help="Rate limit (requests per minute), enforced per second.")] = 3600,
    concurrency: Annotated[int, typer.Option(help="Our max_concurrency.")] = 64,
    only: Annotated[str | None, typer.Option(help="Run one approach: ours or official.")] = None,
) -> None:
    limit_rps = rpm / 60
    rows = []
    approaches = {
        "ours": ("ours (async, rate-limited)", lambda url: run_ours(url, requests, rpm, concurrency)),
        "official": (
            "official (12 threads, client per call, 3 x 5 s)",
            lambda url: run_official(url, requests),
        ),
    }
    for key, (name, runner) in approaches.items():
        if only is not None and key != only:
            continue
        server = Server(latency_s, rpm)
        with server as url:
            wall, failed = runner(url)
            stats = server.stats()
        rps = requests / wall
        rows.append((name, wall, rps, rps / limit_rps, failed, stats["rate_limited"], stats["requests"]))
    print(
        f"\n{requests} judge-sized requests, {latency_s * 1000:.0f} ms latency, limit {rpm} rpm "
        f"({limit_rps:g} req/s):"
    )
    print("| approach | wall s | req/s | of limit | failed | 429s sent | HTTP requests |")
    print("|---|---|---|---|---|---|---|")
    for name, wall, rps, frac, failed, limited, total in rows:
        print(f"| {name} | {wall:.1f} | {rps:.1f} | {frac:.0%} | {failed} | {limited} | {total} |")
    if len(rows) == 2:
        print(f"\nspeed-up: {rows[0][2] / rows[1][2]:.1f}x")


if __name__ == "__main__":
    typer.run(main)
