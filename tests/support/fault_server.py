"""A real local HTTP server that speaks the OpenAI and Anthropic chat APIs and misbehaves on cue.

`FaultServer` runs uvicorn + starlette in a background thread on 127.0.0.1 (a free port) and serves

- `POST /v1/chat/completions` (OpenAI format: point an OpenAI client at `server.openai_base_url`)
- `POST /v1/messages` (Anthropic format: point an Anthropic client at `server.base_url`)

and both providers' batch APIs (below), with a canned, deterministic reply: "You wrote N words."
where N counts the words of the last user message. `max_tokens` cuts the reply to that many words
(finish "length" / "max_tokens"), a `stop` string cuts it before the stop (finish "stop" /
"stop_sequence"), usage counts words (prompt: all message words; completion: reply words), and
OpenAI logprobs come back when asked (one token per word, logprob -0.1 * (i + 1); top alternatives
"alt1", "alt2"... below it).

Faults: a script of `Fault`s applies to successive requests, one each, in arrival order, whatever
the path (batch calls too); once the script is used up, requests get the canned reply. `triggers`
applies a fault to every request whose last user message contains a marker, however often it is
retried (for failures inside a concurrent batch). Kinds:

    "ok"          the canned reply (a placeholder in a script)
    "429", "500", "503", any other 4xx/5xx code
                  that status with an API-shaped error body; `retry_after` adds `Retry-After: N`
    "hang"        wait `hang_s` (longer than any sane client timeout), then reply normally
    "truncated"   200 with a JSON body cut in half (a complete HTTP message; the JSON is not)
    "malformed"   200 with valid JSON missing the fields that matter (choices / content)
    "garbage"     200 labelled application/json whose body is an HTML error page
    "reset"       drop the connection with a TCP RST and no response at all
    "text"        a well-formed 200 whose reply text is the fault's `message` (a judge reply with
                  no verdict, say)

`reply_text(body) -> str`, if given, replaces the canned reply's text for every successful reply
(a judge that answers in its format; the fault drill derives a verdict from the prompt); it is
billed and cut like the canned one (a word a token, at most `max_tokens` words).

"reset" reaches the socket through uvicorn's per-request cycle object (`send.__self__.transport`),
an implementation detail of uvicorn's h11 protocol (pinned here with `http="h11"`); should a future
uvicorn hide it, a "reset" request fails loudly (the client sees a 500) rather than pass silently.

Like the real API version 2026-10-21, `/v1/messages` answers 400 to temperature, top_p or top_k.

Batches (tests/support/batch_api.py; in memory, per server), the paths and shapes the installed SDKs
use (openai `files`/`batches`, anthropic `messages.batches`):

- OpenAI: `POST /v1/files` (multipart, purpose "batch"; JSONL lines {"custom_id", "method": "POST",
  "url": "/v1/chat/completions", "body"}), `POST /v1/batches`, `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`, `GET /v1/files/{id}/content` (output and error files: lines
  {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"})
- Anthropic: `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}`, `GET .../{id}/results`
  (JSONL {"custom_id", "result": {"type": "succeeded", "message"} | errored | expired | canceled}),
  `POST .../{id}/cancel`

Each item's result is what `/v1/chat/completions` or `/v1/messages` answers to its body (the same
400 rule, `reply_text`, and `triggers` with a status or "text"; other trigger kinds do not touch
items). A batch ends `batch_latency_s` after its creation, judged when it is polled (OpenAI status
validating -> in_progress -> finalizing -> completed; Anthropic processing_status in_progress ->
ended). Cancel answers "cancelling" / "canceling" and the batch is cancelled at once, every item
unfinished (OpenAI: error-file lines with code "batch_cancelled"; Anthropic: "canceled"); cancelling
an ended batch is a 400. Bad input lines (not JSON, duplicate custom_id, another url) or more than
`batch_max_requests` (default 50,000) fail an OpenAI batch at validation (status "failed", `errors`
name the lines); a file over `batch_max_bytes` (200 MB) is refused at upload. Anthropic answers 400
to a bad or duplicate custom_id or more than `batch_max_requests` (100,000), 413 over
`batch_max_bytes` (256 MB). `batch_faults` applies to successive batches, one each, in creation order:

    "ok"             a placeholder
    "fail"           OpenAI: validating, then "failed" with `errors`, no files; Anthropic: ended,
                     every result "errored"
    "expire"         the chosen items expire (OpenAI: status "expired", their error-file lines have
                     code "batch_expired" and no response; Anthropic: "expired"); the rest succeed
    "partial"        the chosen items come back as errors: status `status` (500) with the live error
                     body (OpenAI: error-file lines; Anthropic: "errored")
    "missing_lines"  the chosen items' lines are silently left out; request_counts still count them
    "hang"           in progress until cancelled

`BatchFault(kind, custom_ids=[...], every=k, markers=[...])` chooses items by custom_id, every k-th
position or a marker in the last user message; with none of them, every item. Request faults on a
batch call: a status fault or "reset" answers before the server acts (nothing is created); "hang"
waits, then acts; "truncated", "garbage" and "malformed" act, then spoil the answer (the batch
exists, its id lost to the client).

Also: `latency_s` delays every reply; `requests_per_minute` answers 429 with `Retry-After` (and
`retry-after-ms`, the wait until the window frees a place) to a request that finds that many
requests already served in the last 60 s (or its share of a shorter `rate_window_s`). Every request is
recorded (`requests`: path, arrival time, JSON body, headers, fault applied; "rate_limit" for a
429 from the rpm limit; for batch calls also the `batch_id` and `file_id` created or addressed and
`items`, the lines uploaded or requests submitted) and so is the largest number of requests in
flight at once (`max_in_flight`). `batches` maps each batch id to its record (provider, items,
created_at, fault, `status` now). `clear()` forgets requests (not batches); `add_faults()` and
`add_batch_faults()` extend the scripts. `tcp_nodelay=True` turns Nagle off: a reply on a reused
connection then comes ~40 ms sooner (with it on, the delayed ACK holds back each reply's body).

    with FaultServer(["429", Fault("500", retry_after=0.1)], latency_s=0.01) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=2)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi you"}])
        assert reply.choices[0].message.content == "You wrote 2 words."
        assert [r.fault for r in server.requests] == ["429", "500", None]
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.parser
import email.policy
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.batch_api import (
    Batch,
    BatchAPIError,
    BatchFault,
    BatchFaultLike,
    BatchStore,
)

FAULT_KINDS = ("ok", "hang", "truncated", "malformed", "garbage", "reset", "text")
_TRANSPORT_KEY = "fault_server.transport"  # scope key: the connection's asyncio transport (for "reset")


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. `kind` is a FAULT_KINDS name or an HTTP status code (4xx/5xx)."""

    kind: str
    retry_after: float | None = None  # status faults: send `Retry-After: <this>` (seconds)
    message: str | None = None  # status faults: the error message in the body; "text": the reply
    hang_s: float | None = None  # "hang": overrides the server's hang_s

    def __post_init__(self) -> None:
        kind = str(self.kind)
        object.__setattr__(self, "kind", kind)
        if kind not in FAULT_KINDS and not (kind.isdigit() and 400 <= int(kind) <= 599):
            raise ValueError(f"unknown fault {kind!r}: use one of {FAULT_KINDS} or a 4xx/5xx status code")

    @property
    def status(self) -> int | None:
        return int(self.kind) if self.kind.isdigit() else None


FaultLike = Fault | str | int


def as_fault(value: FaultLike) -> Fault:
    return value if isinstance(value, Fault) else Fault(str(value))


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    time: float  # time.monotonic() on arrival
    body: Any  # the parsed JSON body, or None when it was not JSON
    headers: dict[str, str]  # lower-cased names
    fault: str | None  # the fault kind applied; None for a plain canned reply
    batch_id: str | None = None  # batch calls: the batch created or addressed
    file_id: str | None = None  # batch calls: the file uploaded, read, or a batch's input file
    items: int | None = None  # uploads (lines) and batch creations (requests): how many items


@dataclass
class _State:
    script: collections.deque[Fault] = field(default_factory=collections.deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    arrivals: collections.deque[float] = field(default_factory=collections.deque)  # for the rpm limit
    in_flight: int = 0
    max_in_flight: int = 0


class FaultServer:
    """A local OpenAI/Anthropic-compatible server with scripted faults. Use as a context manager."""

    def __init__(
        self,
        faults: Iterable[FaultLike] = (),
        *,
        triggers: Mapping[str, FaultLike] | None = None,
        latency_s: float = 0.0,
        requests_per_minute: int | None = None,
        rate_window_s: float = 60.0,
        hang_s: float = 30.0,
        reply_text: Callable[[dict[str, Any]], str] | None = None,
        batch_faults: Iterable[BatchFaultLike] = (),
        batch_latency_s: float = 0.2,
        batch_max_requests: int | None = None,
        batch_max_bytes: int | None = None,
        tcp_nodelay: bool = False,
    ) -> None:
        self.latency_s = latency_s
        self.requests_per_minute = requests_per_minute
        # Providers state limits per minute but enforce them over shorter windows too; a window of
        # 1 s admits requests_per_minute / 60 per second (the throughput benchmark uses that).
        self.rate_window_s = rate_window_s
        self.hang_s = hang_s
        self.reply_text = reply_text
        self.tcp_nodelay = tcp_nodelay
        self.triggers = {marker: as_fault(f) for marker, f in (triggers or {}).items()}
        self._state = _State(script=collections.deque(as_fault(f) for f in faults))
        self._batches = BatchStore(
            self._batch_item_reply,
            _error_payload,
            _last_user_text,
            latency_s=batch_latency_s,
            faults=batch_faults,
            max_requests=batch_max_requests,
            max_bytes=batch_max_bytes,
        )
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server root, e.g. http://127.0.0.1:PORT (an Anthropic client's base_url)."""
        if self.port is None:
            raise RuntimeError("the fault server is not running")
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """base_url + /v1 (an OpenAI client's base_url)."""
        return f"{self.base_url}/v1"

    def add_faults(self, *faults: FaultLike) -> None:
        """Append faults to the script."""
        with self._lock:
            self._state.script.extend(as_fault(f) for f in faults)

    def clear_faults(self) -> None:
        """Drop what is left of the script: from now on, canned replies."""
        with self._lock:
            self._state.script.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._state.script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._state.max_in_flight

    @property
    def batches(self) -> dict[str, Batch]:
        """Every batch so far, both providers', by id, in creation order: `tests.support.batch_api.Batch`
        (provider, items with custom_id and body, created_at, fault, and `status` now)."""
        return self._batches.snapshot()

    def add_batch_faults(self, *faults: BatchFaultLike) -> None:
        """Append faults to the batch script."""
        self._batches.add_faults(faults)

    @property
    def pending_batch_faults(self) -> list[BatchFault]:
        return self._batches.pending_faults()

    def clear(self) -> None:
        """Forget recorded requests, the in-flight maximum, the rpm window and any pending script
        (not the batches and files, nor the batch script)."""
        with self._lock:
            self._state = _State()

    def start(self) -> FaultServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.tcp_nodelay:  # accepted connections inherit it (Linux)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai, methods=["POST"]),
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                # OpenAI Batch API (tests/support/batch_api.py)
                Route("/v1/files", self._batch_route("openai", self._upload_file), methods=["POST"]),
                Route("/v1/files/{file_id}/content", self._batch_route("openai", self._file_content)),
                Route("/v1/batches", self._batch_route("openai", self._create_openai), methods=["POST"]),
                Route("/v1/batches/{batch_id}", self._batch_route("openai", self._retrieve_openai)),
                Route(
                    "/v1/batches/{batch_id}/cancel",
                    self._batch_route("openai", self._cancel_openai),
                    methods=["POST"],
                ),
                # Anthropic Message Batches
                Route(
                    "/v1/messages/batches",
                    self._batch_route("anthropic", self._create_anthropic),
                    methods=["POST"],
                ),
                Route(
                    "/v1/messages/batches/{batch_id}",
                    self._batch_route("anthropic", self._retrieve_anthropic),
                ),
                Route(
                    "/v1/messages/batches/{batch_id}/results",
                    self._batch_route("anthropic", self._anthropic_results),
                ),
                Route(
                    "/v1/messages/batches/{batch_id}/cancel",
                    self._batch_route("anthropic", self._cancel_anthropic),
                    methods=["POST"],
                ),
            ]
        )
        config = uvicorn.Config(
            _CaptureTransport(app),
            log_config=None,  # leave the process's logging alone (tests capture it)
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            http="h11",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fault-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fault server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._stopping.set()  # wakes hanging handlers
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling ---------------------------------------------------------------------

    async def _openai(self, request: Request) -> Response:
        return await self._handle(request, "openai")

    async def _anthropic(self, request: Request) -> Response:
        return await self._handle(request, "anthropic")

    async def _handle(self, request: Request, api: str, batch_op: _BatchOp | None = None) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        fault, rate_wait = self._admit(body, arrived)
        record = RecordedRequest(
            path=request.url.path,
            time=arrived,
            body=body,
            headers={k.lower(): v for k, v in request.headers.items()},
            fault="rate_limit" if rate_wait is not None else (None if fault.kind == "ok" else fault.kind),
        )
        with self._lock:
            self._state.requests.append(record)
            self._state.in_flight += 1
            self._state.max_in_flight = max(self._state.max_in_flight, self._state.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if rate_wait is not None:
                headers = {
                    "retry-after": str(math.ceil(rate_wait)),
                    "retry-after-ms": str(int(rate_wait * 1000)),
                }
                return _error(api, 429, "rate limit exceeded (server-side requests_per_minute)", headers)
            if batch_op is None:
                return await self._respond(api, fault, body)
            note: dict[str, Any] = {}
            try:
                return await self._batch_respond(api, fault, batch_op, request, body, raw, note)
            finally:
                if note:  # what the call created or addressed, once known
                    with self._lock:
                        recorded = self._state.requests
                        at = next(
                            (i for i in range(len(recorded) - 1, -1, -1) if recorded[i] is record), None
                        )
                        if at is not None:
                            recorded[at] = dataclasses.replace(record, **note)
        finally:
            with self._lock:
                self._state.in_flight -= 1

    def _admit(self, body: Any, now: float) -> tuple[Fault, float | None]:
        """The fault for this request, and how long to wait if the server-side rpm limit is hit."""
        with self._lock:
            rate_wait = None
            if self.requests_per_minute is not None:
                window = self.rate_window_s
                allowed = max(1, round(self.requests_per_minute * window / 60))
                arrivals = self._state.arrivals
                while arrivals and arrivals[0] <= now - window:
                    arrivals.popleft()
                if len(arrivals) >= allowed:
                    rate_wait = max(arrivals[0] + window - now, 0.001)
                else:
                    arrivals.append(now)
            last = _last_user_text(body)
            triggered = next((f for marker, f in self.triggers.items() if marker in last), None)
            if triggered is not None:
                return triggered, rate_wait
            if rate_wait is None and self._state.script:
                return self._state.script.popleft(), None
            return Fault("ok"), rate_wait

    async def _respond(self, api: str, fault: Fault, body: Any) -> Response:
        if fault.status is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = _seconds(fault.retry_after)
            return _error(
                api, fault.status, fault.message or _DEFAULT_MESSAGES.get(fault.status, "error"), headers
            )
        if fault.kind == "reset":
            return _Reset()
        if fault.kind == "hang":
            await self._hang(fault)
        if fault.kind == "garbage":
            return Response(_GARBAGE, status_code=200, media_type="application/json")
        status, reply = self._reply(api, body, fault.message if fault.kind == "text" else _REPLY_TEXT)
        if status != 200:
            return JSONResponse(reply, status_code=status)
        if fault.kind == "malformed":
            keep = (
                ("id", "object", "model", "created") if api == "openai" else ("id", "type", "role", "model")
            )
            return JSONResponse({k: v for k, v in reply.items() if k in keep})
        if fault.kind == "truncated":
            data = json.dumps(reply).encode()
            return Response(data[: len(data) // 2], status_code=200, media_type="application/json")
        return JSONResponse(reply)

    async def _hang(self, fault: Fault) -> None:
        deadline = time.monotonic() + (fault.hang_s if fault.hang_s is not None else self.hang_s)
        while time.monotonic() < deadline and not self._stopping.is_set():
            await asyncio.sleep(0.02)

    def _reply(self, api: str, body: Any, text: str | object | None = None) -> tuple[int, dict[str, Any]]:
        """What the live endpoint answers to `body`: (200, the reply) or (400, the error body).
        `text` replaces the reply's text; _REPLY_TEXT: whatever `reply_text` says, if given."""
        if not isinstance(body, dict):
            return 400, _error_payload(api, 400, "request body is not a JSON object")
        if api == "anthropic":
            # API version 2026-10-21 (what anthropic SDK 2.x sends) has no sampling parameters.
            extra = sorted({"temperature", "top_p", "top_k"} & set(body))
            if extra:
                return 400, _error_payload(api, 400, f"{extra[0]}: Extra inputs are not permitted")
        reply = _openai_reply(body) if api == "openai" else _anthropic_reply(body)
        if text is _REPLY_TEXT:
            text = self.reply_text(body) if self.reply_text else None
        if isinstance(text, str):
            # Billed and cut like a canned reply: a word a token, at most max_tokens of them.
            words = text.split(" ")
            limit = body.get("max_tokens")
            cut = isinstance(limit, int) and len(words) > limit
            text = " ".join(words[:limit]) if cut else text
            if api == "openai":
                reply["choices"][0]["message"]["content"] = text
                reply["usage"]["completion_tokens"] = len(text.split())
                reply["usage"]["total_tokens"] = reply["usage"]["prompt_tokens"] + len(text.split())
                if cut:
                    reply["choices"][0]["finish_reason"] = "length"
            else:
                reply["content"][0]["text"] = text
                reply["usage"]["output_tokens"] = len(text.split())
                if cut:
                    reply["stop_reason"] = "max_tokens"
        return 200, reply

    # -- batches ------------------------------------------------------------------------------

    def _batch_item_reply(self, api: str, body: Any) -> tuple[int, dict[str, Any]]:
        """One batch item's result: the live reply, with the status and "text" triggers applied."""
        last = _last_user_text(body)
        trigger = next((f for marker, f in self.triggers.items() if marker in last), None)
        if trigger is not None and trigger.status is not None:
            message = trigger.message or _DEFAULT_MESSAGES.get(trigger.status, "error")
            return trigger.status, _error_payload(api, trigger.status, message)
        return self._reply(
            api, body, trigger.message if trigger is not None and trigger.kind == "text" else _REPLY_TEXT
        )

    def _batch_route(self, api: str, op: _BatchOp) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._handle(request, api, op)

        return endpoint

    async def _batch_respond(
        self,
        api: str,
        fault: Fault,
        op: _BatchOp,
        request: Request,
        body: Any,
        raw: bytes,
        note: dict[str, Any],
    ) -> Response:
        """A status fault or "reset" answers before the server acts (nothing is created); "hang"
        waits, then acts; "truncated", "garbage" and "malformed" act, then spoil the answer (the
        batch or file exists, but the client cannot read its id)."""
        if fault.status is not None:
            headers = {"retry-after": _seconds(fault.retry_after)} if fault.retry_after is not None else {}
            message = fault.message or _DEFAULT_MESSAGES.get(fault.status, "error")
            return _error(api, fault.status, message, headers)
        if fault.kind == "reset":
            return _Reset()
        if fault.kind == "hang":
            await self._hang(fault)
        try:
            result = op(request, body, raw, note)
        except BatchAPIError as e:
            return _error(api, e.status, e.message, {})
        data = result if isinstance(result, bytes) else json.dumps(result).encode()
        media = "application/octet-stream" if isinstance(result, bytes) else "application/json"
        if fault.kind == "garbage":
            return Response(_GARBAGE, status_code=200, media_type="application/json")
        if fault.kind == "truncated":
            return Response(data[: len(data) // 2], status_code=200, media_type=media)
        if fault.kind == "malformed" and isinstance(result, dict):
            keep = {"id", "object", "type"}
            return JSONResponse({k: v for k, v in result.items() if k in keep})
        return Response(data, status_code=200, media_type=media)

    def _upload_file(self, request: Request, body: Any, raw: bytes, note: dict[str, Any]) -> dict[str, Any]:
        parts = _multipart(request.headers.get("content-type", ""), raw)
        if "file" not in parts or "purpose" not in parts:
            raise BatchAPIError(400, "a multipart body with 'file' and 'purpose' is required")
        filename, content = parts["file"]
        purpose = parts["purpose"][1].decode()
        stored = self._batches.upload(filename or "upload.jsonl", purpose, content)
        note.update(file_id=stored["id"], items=sum(1 for line in content.splitlines() if line.strip()))
        return stored

    def _file_content(self, request: Request, body: Any, raw: bytes, note: dict[str, Any]) -> bytes:
        stored = self._batches.file(request.path_params["file_id"])
        note.update(file_id=stored.id, batch_id=stored.batch_id)
        return stored.content

    def _create_openai(self, request: Request, body: Any, raw: bytes, note: dict[str, Any]) -> dict[str, Any]:
        batch = self._batches.create_openai(body)
        note.update(
            batch_id=batch["id"], file_id=batch["input_file_id"], items=batch["request_counts"]["total"]
        )
        return batch

    def _retrieve_openai(
        self, request: Request, body: Any, raw: bytes, note: dict[str, Any]
    ) -> dict[str, Any]:
        note["batch_id"] = request.path_params["batch_id"]
        return self._batches.openai_object(self._batches.get(note["batch_id"], "openai"))

    def _cancel_openai(self, request: Request, body: Any, raw: bytes, note: dict[str, Any]) -> dict[str, Any]:
        note["batch_id"] = request.path_params["batch_id"]
        return self._batches.openai_object(self._batches.cancel(note["batch_id"], "openai"), cancelling=True)

    def _create_anthropic(
        self, request: Request, body: Any, raw: bytes, note: dict[str, Any]
    ) -> dict[str, Any]:
        batch = self._batches.create_anthropic(body, len(raw))
        note.update(batch_id=batch["id"], items=batch["request_counts"]["processing"])
        return batch

    def _retrieve_anthropic(
        self, request: Request, body: Any, raw: bytes, note: dict[str, Any]
    ) -> dict[str, Any]:
        note["batch_id"] = request.path_params["batch_id"]
        batch = self._batches.get(note["batch_id"], "anthropic")
        return self._batches.anthropic_object(batch, base_url=self.base_url)

    def _anthropic_results(self, request: Request, body: Any, raw: bytes, note: dict[str, Any]) -> bytes:
        note["batch_id"] = request.path_params["batch_id"]
        return self._batches.anthropic_results(note["batch_id"])

    def _cancel_anthropic(
        self, request: Request, body: Any, raw: bytes, note: dict[str, Any]
    ) -> dict[str, Any]:
        note["batch_id"] = request.path_params["batch_id"]
        batch = self._batches.cancel(note["batch_id"], "anthropic")
        return self._batches.anthropic_object(batch, base_url=self.base_url, cancelling=True)


_BatchOp = Callable[[Request, Any, bytes, dict[str, Any]], "dict[str, Any] | bytes"]
_REPLY_TEXT = object()  # _reply's default text: the server's reply_text, if any
_GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """The parts of a multipart/form-data body: name -> (filename, bytes). (Starlette's own form
    parser needs python-multipart, which this project does not install.)"""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    parts: dict[str, tuple[str | None, bytes]] = {}
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str):
                parts[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return parts


# -----------------------------------------------------------------------------------------------
# Canned replies
# -----------------------------------------------------------------------------------------------

_DEFAULT_MESSAGES = {
    400: "bad request",
    401: "Incorrect API key provided.",
    403: "permission denied",
    404: "not found",
    408: "request timeout",
    429: "rate limit exceeded",
    500: "internal server error (injected)",
    502: "bad gateway (injected)",
    503: "service unavailable (injected)",
}


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _last_user_text(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    users = [m for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"]
    return _content_text(users[-1].get("content")) if users else ""


def _generate(body: dict[str, Any], stop: list[str]) -> tuple[list[str], str, str | None, int]:
    """(reply words, why it ended: "stop" | "length" | "stop_sequence", the stop string that
    matched, prompt word count)."""
    words = f"You wrote {len(_last_user_text(body).split())} words.".split(" ")
    prompt_words = sum(len(_content_text(m.get("content")).split()) for m in body.get("messages") or [])
    system = body.get("system")
    prompt_words += len(_content_text(system).split()) if system else 0
    reason = "stop"
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    if isinstance(max_tokens, int) and len(words) > max_tokens:
        words, reason = words[:max_tokens], "length"
    text = " ".join(words)
    cuts = sorted((text.find(s), s) for s in stop if s and s in text)
    matched = None
    if cuts:
        (cut, matched), reason = cuts[0], "stop_sequence"
        text = text[:cut]
        words = text.split(" ") if text else []
    return words, reason, matched, prompt_words


def _openai_reply(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop") or []
    words, reason, _, prompt_words = _generate(body, [stop] if isinstance(stop, str) else list(stop))
    text = " ".join(words)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "length" if reason == "length" else "stop",
        "logprobs": None,
    }
    if body.get("logprobs"):
        top_n = int(body.get("top_logprobs") or 0)
        tokens = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
        choice["logprobs"] = {
            "content": [
                {
                    "token": token,
                    "logprob": -0.1 * (i + 1),
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {
                            "token": token if j == 0 else f"alt{j}",
                            "logprob": -0.1 * (i + 1) - j,
                            "bytes": None,
                        }
                        for j in range(top_n)
                    ],
                }
                for i, token in enumerate(tokens)
            ]
        }
    return {
        "id": "chatcmpl-fault-server",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model", ""),
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": len(text.split()),
            "total_tokens": prompt_words + len(text.split()),
        },
    }


def _anthropic_reply(body: dict[str, Any]) -> dict[str, Any]:
    stop = list(body.get("stop_sequences") or [])
    words, reason, matched, prompt_words = _generate(body, stop)
    text = " ".join(words)
    stop_reason = {"length": "max_tokens", "stop": "end_turn", "stop_sequence": "stop_sequence"}[reason]
    return {
        "id": "msg_fault_server",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", ""),
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": matched,
        "usage": {"input_tokens": prompt_words, "output_tokens": len(text.split())},
    }


def _error_payload(api: str, status: int, message: str) -> dict[str, Any]:
    if api == "openai":
        return {"error": {"message": message, "type": "fault_server", "code": status}}
    return {"type": "error", "error": {"type": "fault_server_error", "message": message}}


def _error(api: str, status: int, message: str, headers: dict[str, str]) -> Response:
    return JSONResponse(_error_payload(api, status, message), status_code=status, headers=headers)


# -----------------------------------------------------------------------------------------------
# Connection reset
# -----------------------------------------------------------------------------------------------


class _CaptureTransport:
    """Outermost ASGI app: puts the connection's transport in the scope (starlette wraps `send`)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[_TRANSPORT_KEY] = getattr(getattr(send, "__self__", None), "transport", None)
        await self.app(scope, receive, send)


class _Reset(Response):
    """Abort the connection with an RST (SO_LINGER 0) instead of sending a response."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        transport = scope.get(_TRANSPORT_KEY)
        if transport is None:
            raise RuntimeError("'reset' needs uvicorn's connection transport, which this uvicorn hides")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Wait until uvicorn has seen the disconnect, or it would try to send a 500 on a dead socket.
        while (await receive())["type"] != "http.disconnect":
            pass
