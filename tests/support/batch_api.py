"""The batch half of the fault server: OpenAI's Batch API (files + batches) and Anthropic's Message
Batches, in memory, with scripted batch faults.

`FaultServer` (tests/support/fault_server.py) declares the routes, applies its request faults and
records every call; `BatchStore` here keeps the files and batches and builds the providers' objects.
Each item's reply comes from the server's `item_reply(api, body) -> (status, JSON body)`: exactly
what the live endpoint answers for that body, so a batch result cannot be told from a live call.

Time: a batch ends `latency_s` after its creation, judged whenever it is looked at (no threads).
OpenAI's status runs validating (first 10% of that) -> in_progress -> finalizing (last 10%) ->
completed; Anthropic's processing_status in_progress -> ended. Items' replies are computed at
creation; request_counts stay at their starting values until the batch ends.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

BATCH_FAULT_KINDS = ("ok", "fail", "expire", "partial", "missing_lines", "hang")

# The providers' size limits: OpenAI's from the openai SDK's docstrings (files.create, batches.create),
# Anthropic's from its Message Batches guide (the SDK does not state them). MB read as 10**6 bytes.
OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_FILE_BYTES = 200_000_000
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256_000_000

COMPLETION_WINDOW_S = 24 * 3600
_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

ItemReply = Callable[[str, Any], tuple[int, dict[str, Any]]]  # (api, body) -> (status, JSON body)
ErrorBody = Callable[[str, int, str], dict[str, Any]]  # (api, status, message) -> the live error body


class BatchAPIError(Exception):
    """An HTTP error answer to a batch call (the server shapes it for the provider)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class BatchFault:
    """What happens to one batch. Which items "expire", "partial" and "missing_lines" touch: those
    named in `custom_ids`, every `every`-th (1-based position), or those whose last user message
    contains one of `markers`; with none of the three, every item."""

    kind: str
    custom_ids: tuple[str, ...] | None = None
    every: int | None = None
    markers: tuple[str, ...] | None = None
    status: int = 500  # "partial": the per-item error's HTTP status
    message: str | None = None  # "fail" / "partial": the error message

    def __post_init__(self) -> None:
        if self.kind not in BATCH_FAULT_KINDS:
            raise ValueError(f"unknown batch fault {self.kind!r}: use one of {BATCH_FAULT_KINDS}")
        for name in ("custom_ids", "markers"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"{name} takes a list of strings, not one string")
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if self.every is not None and self.every < 1:
            raise ValueError("every must be >= 1")
        if not 400 <= self.status <= 599:
            raise ValueError("status must be a 4xx/5xx code")

    def selects(self, position: int, custom_id: str, last_user_text: str) -> bool:
        if self.custom_ids is None and self.every is None and self.markers is None:
            return True
        return (
            (self.custom_ids is not None and custom_id in self.custom_ids)
            or (self.every is not None and position % self.every == 0)
            or (self.markers is not None and any(m in last_user_text for m in self.markers))
        )


BatchFaultLike = BatchFault | str


def as_batch_fault(value: BatchFaultLike) -> BatchFault:
    return value if isinstance(value, BatchFault) else BatchFault(value)


@dataclass(frozen=True)
class BatchItem:
    custom_id: str
    body: Any  # the request body (OpenAI line's "body", Anthropic request's "params")
    status: int  # what the live endpoint answers: 200 or an error status
    reply: dict[str, Any]  # ... and its JSON body
    outcome: str  # "succeeded" | "errored" | "expired" | "canceled" (once the batch has ended)
    missing: bool = False  # left out of the results ("missing_lines")


@dataclass
class Batch:
    """One batch as the server keeps it. `status` is the provider's status string now."""

    id: str
    provider: str  # "openai" | "anthropic"
    items: list[BatchItem]
    created_at: float  # time.monotonic()
    created_unix: float  # time.time()
    latency_s: float
    fault: BatchFault | None
    input_file_id: str | None = None  # OpenAI
    endpoint: str | None = None  # OpenAI
    metadata: dict[str, Any] | None = None  # OpenAI
    validation_errors: list[dict[str, Any]] = field(default_factory=list)  # OpenAI "failed"
    cancelled_at: float | None = None  # time.monotonic() of the cancel call
    output_file_id: str | None = None  # OpenAI: written when the batch is first seen ended
    error_file_id: str | None = None
    files_written: bool = False

    @property
    def kind(self) -> str:
        return self.fault.kind if self.fault is not None else "ok"

    @property
    def ended(self) -> bool:
        return self._phase(time.monotonic()) == "ended"

    @property
    def status(self) -> str:
        phase = self._phase(time.monotonic())
        if self.provider == "anthropic":
            return "ended" if phase == "ended" else "in_progress"
        return self._final_openai_status() if phase == "ended" else phase

    def _phase(self, now: float) -> str:
        """validating | in_progress | finalizing | ended."""
        if self.cancelled_at is not None:
            return "ended"
        elapsed = now - self.created_at
        if self.validation_errors or self.kind == "fail":
            return "ended" if elapsed >= self.latency_s else "validating"
        if self.kind != "hang" and elapsed >= self.latency_s:
            return "ended"
        if self.kind == "expire" or self.kind == "hang":
            return "validating" if elapsed < 0.1 * self.latency_s else "in_progress"
        if elapsed < 0.1 * self.latency_s:
            return "validating"
        return "in_progress" if elapsed < 0.9 * self.latency_s else "finalizing"

    def _final_openai_status(self) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if self.validation_errors or self.kind == "fail":
            return "failed"
        return "expired" if self.kind == "expire" else "completed"

    def final_items(self) -> list[BatchItem]:
        """The items as they stand once the batch has ended (cancel: the unfinished ones canceled)."""
        if self.cancelled_at is not None:
            return [_replace(i, outcome="canceled", missing=False) for i in self.items]
        return self.items


def _replace(item: BatchItem, **changes: Any) -> BatchItem:
    return BatchItem(**{**item.__dict__, **changes})


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_unix: int
    batch_id: str | None = None  # the batch whose output or error file this is


class BatchStore:
    """Files and batches of one server; every method is thread-safe and quick."""

    def __init__(
        self,
        item_reply: ItemReply,
        error_body: ErrorBody,
        last_user_text: Callable[[Any], str],
        *,
        latency_s: float,
        faults: Iterable[BatchFaultLike] = (),
        max_requests: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.item_reply = item_reply
        self.error_body = error_body
        self.last_user_text = last_user_text
        self.latency_s = latency_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.script: collections.deque[BatchFault] = collections.deque(as_batch_fault(f) for f in faults)
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, StoredFile] = {}
        self._counter = 0
        self._lock = threading.RLock()

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:06d}"

    def _limits(self, provider: str) -> tuple[int, int]:
        requests = OPENAI_MAX_REQUESTS if provider == "openai" else ANTHROPIC_MAX_REQUESTS
        size = OPENAI_MAX_FILE_BYTES if provider == "openai" else ANTHROPIC_MAX_BYTES
        return self.max_requests or requests, self.max_bytes or size

    def _new_batch(self, provider: str, requests: list[tuple[str, Any]], **extra: Any) -> Batch:
        fault = self.script.popleft() if self.script else None
        if fault is not None and fault.kind == "ok":
            fault = None
        items = []
        for position, (custom_id, body) in enumerate(requests, start=1):
            status, reply = self.item_reply(provider, body)
            outcome = "succeeded" if status == 200 else "errored"
            selected = fault is not None and fault.selects(position, custom_id, self.last_user_text(body))
            missing = False
            if fault is not None and fault.kind == "fail":
                status, outcome = 500, "errored"
                reply = self.error_body(provider, status, fault.message or "batch failed (injected)")
            elif selected and fault is not None and fault.kind == "expire":
                outcome = "expired"
            elif selected and fault is not None and fault.kind == "partial":
                status, outcome = fault.status, "errored"
                reply = self.error_body(provider, status, fault.message or "batch item failed (injected)")
            elif selected and fault is not None and fault.kind == "missing_lines":
                missing = True
            items.append(BatchItem(custom_id, body, status, reply, outcome, missing))
        batch = Batch(
            id=self._next_id("batch_" if provider == "openai" else "msgbatch_"),
            provider=provider,
            items=items,
            created_at=time.monotonic(),
            created_unix=time.time(),
            latency_s=self.latency_s,
            fault=fault,
            **extra,
        )
        self.batches[batch.id] = batch
        return batch

    def snapshot(self) -> dict[str, Batch]:
        with self._lock:
            return dict(self.batches)

    def add_faults(self, faults: Iterable[BatchFaultLike]) -> None:
        with self._lock:
            self.script.extend(as_batch_fault(f) for f in faults)

    def pending_faults(self) -> list[BatchFault]:
        with self._lock:
            return list(self.script)

    def get(self, batch_id: str, provider: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None or batch.provider != provider:
            raise BatchAPIError(404, f"no batch {batch_id!r}")
        return batch

    def cancel(self, batch_id: str, provider: str) -> Batch:
        with self._lock:
            batch = self.get(batch_id, provider)
            if batch.ended:
                raise BatchAPIError(
                    400, f"batch {batch_id} has ended ({batch.status}); it cannot be cancelled"
                )
            batch.cancelled_at = time.monotonic()
            return batch

    # -- OpenAI ---------------------------------------------------------------------------------

    def upload(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        with self._lock:
            if purpose == "batch" and len(content) > self._limits("openai")[1]:
                raise BatchAPIError(400, f"a batch file may be at most {self._limits('openai')[1]} bytes")
            stored = StoredFile(self._next_id("file-"), filename, purpose, content, int(time.time()))
            self.files[stored.id] = stored
            return _file_object(stored)

    def file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise BatchAPIError(404, f"no file {file_id!r}")
        return stored

    def create_openai(self, body: Any) -> dict[str, Any]:
        with self._lock:
            if not isinstance(body, dict):
                raise BatchAPIError(400, "request body is not a JSON object")
            for key in ("input_file_id", "endpoint", "completion_window"):
                if key not in body:
                    raise BatchAPIError(400, f"missing required parameter {key!r}")
            if body["endpoint"] != "/v1/chat/completions":
                raise BatchAPIError(
                    400, f"this server batches /v1/chat/completions only, not {body['endpoint']}"
                )
            if body["completion_window"] != "24h":
                raise BatchAPIError(400, "completion_window must be '24h'")
            stored = self.file(body["input_file_id"])
            if stored.purpose != "batch":
                raise BatchAPIError(
                    400, f"file {stored.id} was uploaded with purpose {stored.purpose!r}, not 'batch'"
                )
            requests, errors = _parse_openai_input(
                stored.content, body["endpoint"], self._limits("openai")[0]
            )
            batch = self._new_batch(
                "openai",
                requests,
                input_file_id=stored.id,
                endpoint=body["endpoint"],
                metadata=body.get("metadata"),
                validation_errors=errors,
            )
            return self.openai_object(batch, creating=True)

    def openai_object(
        self, batch: Batch, *, creating: bool = False, cancelling: bool = False
    ) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            phase = batch._phase(now)
            status = "validating" if creating else "cancelling" if cancelling else batch.status
            t0, lat = batch.created_unix, batch.latency_s
            unix: dict[str, int | None] = {
                "in_progress_at": None,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
            }
            if not creating and phase != "validating" and status not in ("failed",):
                unix["in_progress_at"] = int(t0 + 0.1 * lat)
            if status in ("finalizing", "completed"):
                unix["finalizing_at"] = int(t0 + 0.9 * lat)
            if status in ("completed", "failed", "expired"):
                unix[f"{status}_at"] = int(t0 + lat)
            if batch.cancelled_at is not None:
                cancelled = int(batch.created_unix + (batch.cancelled_at - batch.created_at))
                unix["cancelling_at"] = cancelled
                unix["cancelled_at"] = None if cancelling else cancelled
            counts = {"total": len(batch.items), "completed": 0, "failed": 0}
            usage = None
            errors = None
            if phase == "ended" and not cancelling:
                self._finish_openai(batch)
                final = batch.final_items()
                counts["completed"] = sum(i.outcome == "succeeded" for i in final)
                counts["failed"] = sum(i.outcome != "succeeded" for i in final)
                if status == "failed":
                    counts["failed"] = 0  # it never ran
                    data = batch.validation_errors or [
                        {
                            "code": "fault_server_failed",
                            "message": (batch.fault.message if batch.fault else None)
                            or "batch failed (injected)",
                            "param": None,
                            "line": None,
                        }
                    ]
                    errors = {"object": "list", "data": data}
                else:
                    done = [i for i in final if i.outcome == "succeeded"]
                    inp = sum(i.reply["usage"]["prompt_tokens"] for i in done)
                    out = sum(i.reply["usage"]["completion_tokens"] for i in done)
                    usage = {
                        "input_tokens": inp,
                        "input_tokens_details": {"cached_tokens": 0},
                        "output_tokens": out,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": inp + out,
                    }
            model = next((i.body.get("model") for i in batch.items if isinstance(i.body, dict)), None)
            return {
                "id": batch.id,
                "object": "batch",
                "endpoint": batch.endpoint,
                "model": model,
                "errors": errors,
                "input_file_id": batch.input_file_id,
                "completion_window": "24h",
                "status": status,
                "output_file_id": None if cancelling else batch.output_file_id,
                "error_file_id": None if cancelling else batch.error_file_id,
                "created_at": int(t0),
                "expires_at": int(t0) + COMPLETION_WINDOW_S,
                **unix,
                "request_counts": counts,
                "metadata": batch.metadata,
                "usage": usage,
            }

    def _finish_openai(self, batch: Batch) -> None:
        """Write the output and error files of an ended batch, once."""
        if batch.files_written or batch._final_openai_status() == "failed":
            return
        batch.files_written = True
        output, errors = [], []
        for n, item in enumerate(batch.final_items(), start=1):
            if item.missing:
                continue
            line: dict[str, Any] = {"id": f"batch_req_{batch.id[6:]}_{n:06d}", "custom_id": item.custom_id}
            if item.outcome in ("expired", "canceled"):
                code = "batch_expired" if item.outcome == "expired" else "batch_cancelled"
                message = (
                    "This request could not be executed before the completion window expired."
                    if item.outcome == "expired"
                    else "The batch was cancelled before this request executed."
                )
                line |= {"response": None, "error": {"code": code, "message": message}}
            else:
                line |= {
                    "response": {
                        "status_code": item.status,
                        "request_id": f"req_{batch.id[6:]}_{n:06d}",
                        "body": item.reply,
                    },
                    "error": None,
                }
            (output if item.outcome == "succeeded" else errors).append(json.dumps(line))
        for lines, attr, suffix in (
            (output, "output_file_id", "output"),
            (errors, "error_file_id", "errors"),
        ):
            if lines:
                stored = StoredFile(
                    self._next_id("file-"),
                    f"{batch.id}_{suffix}.jsonl",
                    "batch_output",
                    ("\n".join(lines) + "\n").encode(),
                    int(time.time()),
                    batch_id=batch.id,
                )
                self.files[stored.id] = stored
                setattr(batch, attr, stored.id)

    # -- Anthropic ------------------------------------------------------------------------------

    def create_anthropic(self, body: Any, size: int) -> dict[str, Any]:
        with self._lock:
            max_requests, max_bytes = self._limits("anthropic")
            if size > max_bytes:
                raise BatchAPIError(413, f"request_too_large: a batch may be at most {max_bytes} bytes")
            requests = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(requests, list) or not requests:
                raise BatchAPIError(400, "requests: a non-empty list is required")
            if len(requests) > max_requests:
                raise BatchAPIError(400, f"requests: at most {max_requests} requests per batch")
            seen: set[str] = set()
            parsed = []
            for n, request in enumerate(requests):
                custom_id = request.get("custom_id") if isinstance(request, dict) else None
                if not isinstance(custom_id, str) or not _ANTHROPIC_CUSTOM_ID.match(custom_id):
                    raise BatchAPIError(400, f"requests.{n}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
                if custom_id in seen:
                    raise BatchAPIError(400, f"requests.{n}.custom_id: duplicate custom_id {custom_id!r}")
                if not isinstance(request.get("params"), dict):
                    raise BatchAPIError(400, f"requests.{n}.params: an object is required")
                seen.add(custom_id)
                parsed.append((custom_id, request["params"]))
            return self.anthropic_object(self._new_batch("anthropic", parsed), base_url=None, creating=True)

    def anthropic_object(
        self, batch: Batch, *, base_url: str | None, creating: bool = False, cancelling: bool = False
    ) -> dict[str, Any]:
        with self._lock:
            ended = not creating and not cancelling and batch.ended
            counts = {
                "processing": len(batch.items),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }
            if ended:
                counts["processing"] = 0
                for item in batch.final_items():
                    counts[item.outcome] += 1
            cancel_at = (
                _rfc3339(batch.created_unix + (batch.cancelled_at - batch.created_at))
                if batch.cancelled_at is not None
                else None
            )
            return {
                "id": batch.id,
                "type": "message_batch",
                "processing_status": "ended" if ended else "canceling" if cancelling else "in_progress",
                "request_counts": counts,
                "created_at": _rfc3339(batch.created_unix),
                "expires_at": _rfc3339(batch.created_unix + COMPLETION_WINDOW_S),
                "ended_at": (cancel_at or _rfc3339(batch.created_unix + batch.latency_s)) if ended else None,
                "cancel_initiated_at": cancel_at,
                "archived_at": None,
                "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results"
                if ended and base_url
                else None,
            }

    def anthropic_results(self, batch_id: str) -> bytes:
        with self._lock:
            batch = self.get(batch_id, "anthropic")
            if not batch.ended:
                raise BatchAPIError(404, f"batch {batch_id} has not ended; its results are not available yet")
            lines = []
            for n, item in enumerate(batch.final_items(), start=1):
                if item.missing:
                    continue
                result: dict[str, Any] = {"type": item.outcome}
                if item.outcome == "succeeded":
                    result["message"] = item.reply
                elif item.outcome == "errored":  # the live error body, an ErrorResponse
                    result["error"] = {**item.reply, "request_id": f"req_{batch.id[9:]}_{n:06d}"}
                lines.append(json.dumps({"custom_id": item.custom_id, "result": result}))
            return "".join(line + "\n" for line in lines).encode()


def _parse_openai_input(
    content: bytes, endpoint: str, max_requests: int
) -> tuple[list[tuple[str, Any]], list[dict[str, Any]]]:
    """The (custom_id, body) of each line, or the validation errors that fail the batch."""
    requests: list[tuple[str, Any]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def error(code: str, message: str, line: int | None, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": line})

    lines = [(n, text) for n, text in enumerate(content.decode("utf-8", "replace").splitlines(), start=1)]
    lines = [(n, text) for n, text in lines if text.strip()]
    if not lines:
        error("empty_file", "The batch input file is empty.", None)
    if len(lines) > max_requests:
        error("too_many_requests", f"The batch input file has more than {max_requests} requests.", None)
    for n, text in lines:
        try:
            line = json.loads(text)
        except ValueError:
            error("invalid_json_line", "This line is not valid JSON.", n)
            continue
        if not isinstance(line, dict):
            error("invalid_json_line", "This line is not a JSON object.", n)
            continue
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            error("missing_required_parameter", "custom_id is required.", n, "custom_id")
        elif custom_id in seen:
            error(
                "duplicate_custom_id", f"The custom_id {custom_id!r} is used more than once.", n, "custom_id"
            )
        if line.get("method") != "POST":
            error("invalid_method", "method must be POST.", n, "method")
        if line.get("url") != endpoint:
            error("invalid_url", f"url must be the batch's endpoint {endpoint}.", n, "url")
        if not isinstance(line.get("body"), dict):
            error("missing_required_parameter", "body is required.", n, "body")
        if isinstance(custom_id, str):
            seen.add(custom_id)
            requests.append((custom_id, line.get("body")))
    return requests, errors


def _file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": len(stored.content),
        "created_at": stored.created_unix,
        "filename": stored.filename,
        "purpose": stored.purpose,
        "status": "processed",
        "expires_at": stored.created_unix + 30 * 24 * 3600 if stored.purpose == "batch" else None,
        "status_details": None,
    }


def _rfc3339(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat().replace("+00:00", "Z")
