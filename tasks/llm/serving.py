"""An OpenAI-compatible HTTP server for a local model folder, run as a subprocess of `transformers serve`.

`LocalModelServer` starts the server, waits until it answers, exposes the `base_url` and the model
name to put in requests, and stops it (SIGTERM, then SIGKILL after a grace period). Anything that
speaks the OpenAI chat API (the openai-compatible backend, the openai SDK, curl) can then call a
local or embedded model over HTTP. `wrl serve` is the command-line face of it (its body:
tasks/llm/serve_command.py), and `shared_server` starts one on demand for a recipe backend with
`serve_locally`.

What this relies on in `transformers serve` (transformers 5.23, read from its source and measured):
- `transformers serve <folder> --host H --port N --device D` loads the folder before uvicorn starts
  listening, so `/health` answering 200 means the model is ready.
- Requests must name the model exactly as it was passed (the absolute folder path, `model_name`);
  any other name is a 400 "Server is pinned to ...".
- `/v1/models` lists the Hugging Face hub cache, not the served folder (a 500 with no cache): the
  readiness probe is `/health`.
- Replies carry `usage`; `logprobs`, `top_logprobs` and `n` are ignored (logged, not refused).
- Requests are served one at a time on the default path. `--continuous-batching` (paged attention,
  per-request max_new_tokens, temperature and top_p) lets concurrent requests share one running
  batch; on the CPU it measured 30-31 tokens/s against 14 for 8 requests of 96-160 tokens at
  concurrency 4 (1 thread). `serve_locally` and `wrl serve` turn it on by default, with a bounded
  KV cache (`continuous_batching_args`).
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from configs.schema import LocalServer
from tasks.llm import cpu_share
from tasks.processes import stop_group

logger = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class ServerStartError(RuntimeError):
    """The server process died or never answered; the message ends with the tail of its log."""


class _PortTakenError(ServerStartError):
    """The server could not bind its port (another process took it between our check and its bind)."""


class LocalModelServer:
    """`transformers serve` for one local model folder, as a managed subprocess.

    Use as a context manager (`with LocalModelServer(folder) as server: ...`) or call `start()` and
    `stop()`. Without a port it picks a free one (and retries with another if that one is taken by
    the time the server binds it). The server's output goes to `log_path`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        device: Device | str = "auto",
        dtype: str = "auto",
        log_path: str | Path | None = None,
        startup_timeout_s: float = 300.0,
        stop_timeout_s: float = 10.0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        threads: int | None = None,
    ) -> None:
        folder = Path(model_dir).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ValueError(f"{folder} is not a local model folder (it has no config.json)")
        if "@" in str(folder):
            # transformers serve reads "<id>@<revision>": the path would be cut at the "@".
            raise ValueError(f"{folder}: transformers serve cannot serve a path containing '@'")
        self.model_dir = folder
        self.host = host
        self.device = device
        self.dtype = dtype
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        if threads is not None:
            self.extra_env["OMP_NUM_THREADS"] = str(threads)
        # The cores it computes with on this machine's CPU (0 on a GPU): in-process models leave
        # them to it while it answers (tasks.llm.cpu_share).
        self.cpu_threads = 0 if _on_gpu(device) else threads or len(os.sched_getaffinity(0))
        self._requested_port = port or None  # 0 means "pick one", as with bind()
        self.port: int | None = port
        self.log_path: Path | None = Path(log_path) if log_path is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._attempt_offset = 0  # where this launch's lines start in the log

    # -- what clients need ----------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The `model` to put in requests: the server is pinned to exactly this string."""
        return str(self.model_dir)

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT/v1`, with a wildcard listen address replaced by loopback."""
        if self.port is None:
            raise RuntimeError("the server has no port yet: call start() first")
        return f"http://{_url_host(self.host)}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalModelServer({str(self.model_dir)!r}, {self.host}:{self.port}, {state})"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> LocalModelServer:
        """Launch the server and block until it answers `/health` (or raise ServerStartError)."""
        if self.running:
            return self
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or _free_port(self.host)
            if self._requested_port is not None and not _port_free(self.host, self.port):
                raise ServerStartError(f"port {self.port} on {self.host} is already in use")
            started = time.perf_counter()
            cpu_share.reserve(self, self.cpu_threads)  # loading is busy too
            self._launch()
            try:
                self._wait_until_ready()
            except _PortTakenError:
                self.stop()
                if attempt == attempts:
                    raise
                logger.info("serve: port %d was taken meanwhile; trying another", self.port)
                continue
            except BaseException:  # a timeout, a dead server, Ctrl-C: leave nothing running
                self.stop()
                raise
            logger.info(
                "serve: %s answers at %s (pid %d, up in %.1f s; log %s)",
                self.model_dir.name,
                self.base_url,
                self.pid,
                time.perf_counter() - started,
                self.log_path,
            )
            return self
        raise AssertionError("unreachable")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after `stop_timeout_s`. Returns the exit code (None if never started)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            stop_group(process, self.stop_timeout_s, what="serve")
            process.wait()
        atexit.unregister(self.stop)
        cpu_share.release(self)
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode

    def wait(self) -> int:
        """Block until the server exits on its own; its exit code."""
        if self._process is None:
            raise RuntimeError("the server was never started")
        return self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        with self.log_path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64_000))  # the tail of a long log, not all of it
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ------------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line that runs the server (this interpreter's transformers, not PATH's)."""
        return [
            sys.executable,
            "-m",
            "transformers.cli.transformers",
            "serve",
            self.model_name,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            *self.extra_args,
        ]

    def _launch(self) -> None:
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="wrl-serve-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")  # append: a retry keeps the earlier attempt's lines
        self._attempt_offset = self._log.tell()
        self._log.write(f"$ {' '.join(self.command())}\n".encode())
        self._log.flush()
        env = os.environ.copy()
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; never wait on a network
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"  # the log shows what happened up to a crash
        env.update(self.extra_env)
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own process group: a terminal's Ctrl-C reaches only us, and we stop it in order.
            start_new_session=True,
        )
        atexit.register(self.stop)  # never leave a server behind when the caller forgets stop()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        url = f"http://{_url_host(self.host)}:{self.port}/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                error = _PortTakenError if self._lost_port_race() else ServerStartError
                raise error(
                    f"transformers serve exited with code {code} before answering {url}. "
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with opener.open(url, timeout=2.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet (or still loading)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"transformers serve did not answer {url} within {self.startup_timeout_s:.0f} s. "
                    f"Last lines of {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _lost_port_race(self) -> bool:
        assert self.log_path is not None
        with self.log_path.open("rb") as handle:
            handle.seek(self._attempt_offset)
            handle.readline()  # our own command line
            return b"address already in use" in handle.read().lower()


def _on_gpu(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as uvicorn sets it: a port in TIME_WAIT counts as free, a listening one does not.
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


CB_PAGE_TOKENS = 32  # tokens per KV cache page
CB_MAX_BATCH_TOKENS = 512  # tokens per forward pass: long prompts are prefilled in chunks of this


def continuous_batching_args(cache_tokens: int) -> tuple[str, ...]:
    """`transformers serve` arguments for continuous batching with a KV cache of `cache_tokens`.
    Left to itself it sizes the cache from free memory: on a 24 GB CPU machine it allocated 10 GB
    and started in 37 s, where 8,192 tokens took 1.8 GB in all and 10 s (SmolLM2-135M)."""
    pages = -(-cache_tokens // CB_PAGE_TOKENS)
    return (
        "--continuous-batching",
        "--cb-block-size", str(CB_PAGE_TOKENS),
        "--cb-num-blocks", str(pages),
        "--cb-max-batch-tokens", str(CB_MAX_BATCH_TOKENS),
    )  # fmt: skip


# One server per (folder, device, dtype) per process: every client of a `serve_locally` backend
# on that model shares it. Started by its first client; stopped when its last client closes (its
# memory and cores go back to the rest of the pipeline; a later stage starts it again, ~10 s), or
# at interpreter exit (start() registers that).
_SHARED: dict[tuple[str, str, str], LocalModelServer] = {}
_USERS: dict[int, int] = {}  # id(server) -> open clients
_SHARED_LOCK = threading.Lock()


def shared_server(model_dir: str | Path, settings: LocalServer, *, log_dir: Path) -> LocalModelServer:
    """The running server for `model_dir` with `settings` (a recipe backend's `serve_locally`), started
    now if this process has none (blocking until it answers; ServerStartError with its log tail).
    The caller is one more user of it, until `release_shared_server`."""
    folder = str(Path(model_dir).expanduser().resolve())
    key = (folder, settings.device, settings.dtype)
    with _SHARED_LOCK:
        server = _SHARED.get(key)
        if server is None or not server.running:
            server = LocalModelServer(
                folder,
                device=settings.device,
                dtype=settings.dtype,
                startup_timeout_s=settings.startup_timeout_s,
                log_path=Path(log_dir) / f"serve-{Path(folder).name}-{os.getpid()}.log",
                threads=settings.threads,
                extra_args=continuous_batching_args(settings.cache_tokens)
                if settings.continuous_batching
                else (),
            )
            server.start()
            _SHARED[key] = server
        _USERS[id(server)] = _USERS.get(id(server), 0) + 1
        return server


def release_shared_server(server: LocalModelServer) -> None:
    """One user of a shared server is done with it; the last one stops it."""
    with _SHARED_LOCK:
        users = _USERS.get(id(server), 0) - 1
        if users > 0:
            _USERS[id(server)] = users
            return
        _USERS.pop(id(server), None)
        for key, shared in list(_SHARED.items()):
            if shared is server:
                del _SHARED[key]
    server.stop()
