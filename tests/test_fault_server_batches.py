"""The fault server's batch endpoints (tests/support/batch_api.py) through the real openai and
anthropic SDKs: a batch's results equal live calls with the same bodies, the status progression,
what each batch fault looks like to a client, validation, and request faults on batch calls."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import openai
import pytest

from tests.support.fault_server import BatchFault, Fault, FaultServer

LATENCY = 0.05
OPENAI_TERMINAL = {"completed", "failed", "expired", "cancelled"}


def batch_server(faults: Any = (), **options: Any) -> FaultServer:
    """Without Nagle: a reply on a reused connection comes ~40 ms sooner (see FaultServer)."""
    return FaultServer(faults, tcp_nodelay=True, **options)


def openai_client(server: FaultServer, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.openai_base_url, api_key="x", max_retries=retries)


def anthropic_client(server: FaultServer, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="x", max_retries=retries)


def chat_body(words: int, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": " ".join(["w"] * words)}], **extra}


def message_params(words: int, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
        **extra,
    }


OPENAI_BODIES = {
    "a": chat_body(3),
    "b": chat_body(5, max_tokens=2),  # cut: finish "length"
    "c": {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "one two"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three four five six"},
        ],
        "stop": ["4"],
        "temperature": 0.7,
        "seed": 3,
    },
    "d": chat_body(2, logprobs=True, top_logprobs=2),
}

ANTHROPIC_PARAMS = {
    "a": message_params(3),
    "b": message_params(5, max_tokens=2),
    "c": message_params(4, system="be terse", stop_sequences=["4"]),
}


def request_line(custom_id: str, body: Any, url: str = "/v1/chat/completions") -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("requests.jsonl", data), purpose="batch").id


def create_openai(client: openai.OpenAI, file_id: str) -> Any:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def submit_openai(client: openai.OpenAI, bodies: dict[str, Any]) -> Any:
    return create_openai(client, upload(client, [request_line(cid, body) for cid, body in bodies.items()]))


def poll_openai(client: openai.OpenAI, batch_id: str, timeout_s: float = 5.0) -> tuple[Any, list[str]]:
    """The batch once it is terminal, and every status seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in OPENAI_TERMINAL:
            return batch, seen
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.005)


def openai_lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def poll_anthropic(client: anthropic.Anthropic, batch_id: str, timeout_s: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.processing_status}"
        time.sleep(0.005)
    return batch


def anthropic_results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in client.messages.batches.results(batch_id)}


def batch_calls(server: FaultServer, suffix: str) -> list[Any]:
    return [r for r in server.requests if r.path.endswith(suffix)]


# -- results equal live calls -------------------------------------------------------------------


def test_openai_batch_results_equal_live_calls() -> None:
    with batch_server(batch_latency_s=0.2) as server:
        client = openai_client(server)
        created = submit_openai(client, OPENAI_BODIES)
        assert created.status == "validating"
        assert created.request_counts.total == len(OPENAI_BODIES)
        batch, seen = poll_openai(client, created.id)
        assert seen[-1] == "completed"
        order = ["validating", "in_progress", "finalizing", "completed"]
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen)
        assert batch.request_counts.completed == len(OPENAI_BODIES) and batch.request_counts.failed == 0
        assert batch.error_file_id is None and batch.completed_at is not None
        assert batch.model == "gpt-test"

        lines = openai_lines(client, batch.output_file_id)
        assert set(lines) == set(OPENAI_BODIES)
        for cid, body in OPENAI_BODIES.items():
            live = client.chat.completions.with_raw_response.create(**body)
            assert lines[cid]["response"]["status_code"] == 200
            assert lines[cid]["error"] is None
            # _openai_reply has a fixed id and created: the whole body matches, byte for byte in JSON
            assert lines[cid]["response"]["body"] == live.http_response.json()
        assert lines["b"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
        assert lines["d"]["response"]["body"]["choices"][0]["logprobs"] is not None
        usage = [line["response"]["body"]["usage"] for line in lines.values()]
        assert batch.usage.input_tokens == sum(u["prompt_tokens"] for u in usage)
        assert batch.usage.output_tokens == sum(u["completion_tokens"] for u in usage)

        server_batch = server.batches[created.id]
        assert server_batch.provider == "openai" and server_batch.status == "completed"
        assert [i.custom_id for i in server_batch.items] == list(OPENAI_BODIES)
        (upload,) = [r for r in server.requests if r.path == "/v1/files"]
        assert upload.items == len(OPENAI_BODIES) and upload.file_id == created.input_file_id
        (create,) = [r for r in server.requests if r.path == "/v1/batches"]
        assert (create.batch_id, create.file_id, create.items) == (created.id, upload.file_id, 4)
        assert all(r.batch_id == created.id for r in batch_calls(server, created.id))
        (download,) = batch_calls(server, "/content")
        assert (download.file_id, download.batch_id) == (batch.output_file_id, created.id)


def test_anthropic_batch_results_equal_live_calls() -> None:
    with batch_server(batch_latency_s=LATENCY) as server:
        client = anthropic_client(server)
        requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
        requests.append({"custom_id": "sampled", "params": message_params(2, temperature=0.5)})
        created = client.messages.batches.create(requests=requests)
        assert created.processing_status == "in_progress" and created.results_url is None
        assert created.request_counts.processing == 4
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(created.id)

        batch = poll_anthropic(client, created.id)
        assert batch.ended_at is not None and batch.results_url.endswith(f"/{created.id}/results")
        counts = batch.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (0, 3, 1)
        results = anthropic_results(client, created.id)
        assert set(results) == {*ANTHROPIC_PARAMS, "sampled"}
        for cid, params in ANTHROPIC_PARAMS.items():
            assert results[cid].type == "succeeded"
            assert results[cid].message.to_dict() == client.messages.create(**params).to_dict()
        assert results["b"].message.stop_reason == "max_tokens"
        assert results["c"].message.stop_reason == "stop_sequence"
        # the live endpoint's 400 for sampling parameters, as a per-item error
        with pytest.raises(anthropic.BadRequestError) as live:
            # anthropic SDK 2.x has no temperature argument: the raw body field, as a batch item sends it
            client.messages.create(**message_params(2), extra_body={"temperature": 0.5})
        assert results["sampled"].type == "errored"
        assert results["sampled"].error.error.message == live.value.body["error"]["message"]

        assert server.batches[created.id].status == "ended"
        (create,) = [r for r in server.requests if r.path == "/v1/messages/batches"]
        assert (create.batch_id, create.items) == (created.id, 4)


def test_triggers_and_reply_text_apply_to_batch_items_as_to_live_calls() -> None:
    def reply_text(body: dict[str, Any]) -> str:
        return f"verdict for {len(body['messages'])} messages"

    triggers = {"BOOM": Fault("503", message="down")}
    with batch_server(triggers=triggers, reply_text=reply_text, batch_latency_s=0.0) as server:
        client = openai_client(server)
        bodies = {
            "ok": chat_body(2),
            "boom": chat_body(1) | {"messages": [{"role": "user", "content": "BOOM"}]},
        }
        batch, _ = poll_openai(client, submit_openai(client, bodies).id)
        assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
        ok = openai_lines(client, batch.output_file_id)["ok"]["response"]["body"]
        assert ok["choices"][0]["message"]["content"] == "verdict for 1 messages"
        assert ok == client.chat.completions.with_raw_response.create(**bodies["ok"]).http_response.json()
        boom = openai_lines(client, batch.error_file_id)["boom"]
        with pytest.raises(openai.InternalServerError) as live:
            client.chat.completions.create(**bodies["boom"])
        assert boom["response"]["status_code"] == 503 == live.value.status_code
        assert boom["response"]["body"] == live.value.response.json()


# -- batch faults -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_fail(provider: str) -> None:
    with batch_server(
        batch_faults=[BatchFault("fail", message="input rejected")], batch_latency_s=LATENCY
    ) as s:
        if provider == "openai":
            client = openai_client(s)
            batch, seen = poll_openai(client, submit_openai(client, OPENAI_BODIES).id)
            assert seen == ["validating", "failed"]
            assert batch.failed_at is not None
            assert batch.errors.data[0].message == "input rejected"
            assert batch.output_file_id is None and batch.error_file_id is None
            assert batch.request_counts.completed == 0
        else:
            client = anthropic_client(s)
            requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
            batch = poll_anthropic(client, client.messages.batches.create(requests=requests).id)
            assert batch.request_counts.errored == 3 and batch.request_counts.succeeded == 0
            results = anthropic_results(client, batch.id)
            assert {r.type for r in results.values()} == {"errored"}
            assert results["a"].error.error.message == "input rejected"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expire(provider: str) -> None:
    with batch_server(batch_faults=[BatchFault("expire", custom_ids=["b"])], batch_latency_s=LATENCY) as s:
        if provider == "openai":
            client = openai_client(s)
            batch, seen = poll_openai(client, submit_openai(client, OPENAI_BODIES).id)
            assert seen[-1] == "expired" and "finalizing" not in seen and batch.expired_at is not None
            assert (batch.request_counts.completed, batch.request_counts.failed) == (3, 1)
            assert set(openai_lines(client, batch.output_file_id)) == {"a", "c", "d"}
            expired = openai_lines(client, batch.error_file_id)["b"]
            assert expired["response"] is None and expired["error"]["code"] == "batch_expired"
        else:
            client = anthropic_client(s)
            requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
            batch = poll_anthropic(client, client.messages.batches.create(requests=requests).id)
            assert (batch.request_counts.expired, batch.request_counts.succeeded) == (1, 2)
            results = anthropic_results(client, batch.id)
            assert {cid: r.type for cid, r in results.items()} == {
                "a": "succeeded",
                "b": "expired",
                "c": "succeeded",
            }


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_partial(provider: str) -> None:
    fault = BatchFault("partial", every=2, status=529, message="overloaded")
    with batch_server(batch_faults=[fault], batch_latency_s=LATENCY) as s:
        if provider == "openai":
            client = openai_client(s)
            batch, seen = poll_openai(client, submit_openai(client, OPENAI_BODIES).id)
            assert seen[-1] == "completed"
            assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 2)
            assert set(openai_lines(client, batch.output_file_id)) == {"a", "c"}
            errors = openai_lines(client, batch.error_file_id)
            assert set(errors) == {"b", "d"}
            assert errors["b"]["response"]["status_code"] == 529
            assert errors["b"]["response"]["body"]["error"]["message"] == "overloaded"
            assert errors["b"]["error"] is None
        else:
            client = anthropic_client(s)
            requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
            batch = poll_anthropic(client, client.messages.batches.create(requests=requests).id)
            assert (batch.request_counts.errored, batch.request_counts.succeeded) == (1, 2)
            results = anthropic_results(client, batch.id)
            assert results["b"].type == "errored" and results["b"].error.error.message == "overloaded"
            assert results["a"].type == results["c"].type == "succeeded"


def test_partial_by_marker_touches_only_its_batch() -> None:
    fault = BatchFault("partial", markers=["FLAKY"])
    with batch_server(batch_faults=[fault], batch_latency_s=0.0) as s:
        client = anthropic_client(s)
        requests = [
            {"custom_id": "plain", "params": message_params(2)},
            {
                "custom_id": "flaky",
                "params": message_params(1) | {"messages": [{"role": "user", "content": "FLAKY"}]},
            },
        ]
        first = poll_anthropic(client, client.messages.batches.create(requests=requests).id)
        assert {cid: r.type for cid, r in anthropic_results(client, first.id).items()} == {
            "plain": "succeeded",
            "flaky": "errored",
        }
        second = poll_anthropic(client, client.messages.batches.create(requests=requests[1:]).id)
        assert anthropic_results(client, second.id)["flaky"].type == "succeeded"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_missing_lines(provider: str) -> None:
    with batch_server(
        batch_faults=[BatchFault("missing_lines", custom_ids=["b"])], batch_latency_s=LATENCY
    ) as s:
        if provider == "openai":
            client = openai_client(s)
            batch, _ = poll_openai(client, submit_openai(client, OPENAI_BODIES).id)
            assert batch.status == "completed" and batch.request_counts.completed == 4  # says all 4 ...
            assert set(openai_lines(client, batch.output_file_id)) == {"a", "c", "d"}  # ... has 3
            assert batch.error_file_id is None
        else:
            client = anthropic_client(s)
            requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
            batch = poll_anthropic(client, client.messages.batches.create(requests=requests).id)
            assert batch.request_counts.succeeded == 3
            assert set(anthropic_results(client, batch.id)) == {"a", "c"}


def test_hang_until_cancelled_openai() -> None:
    with batch_server(batch_faults=["hang"], batch_latency_s=LATENCY) as s:
        client = openai_client(s)
        created = submit_openai(client, OPENAI_BODIES)
        time.sleep(3 * LATENCY)
        assert client.batches.retrieve(created.id).status == "in_progress"
        cancelling = client.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
        batch, _ = poll_openai(client, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at is not None
        assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 4)
        assert batch.output_file_id is None
        errors = openai_lines(client, batch.error_file_id)
        assert {line["error"]["code"] for line in errors.values()} == {"batch_cancelled"}
        assert set(errors) == set(OPENAI_BODIES)
        with pytest.raises(openai.BadRequestError, match="cannot be cancelled"):
            client.batches.cancel(created.id)


def test_hang_until_cancelled_anthropic() -> None:
    with batch_server(batch_faults=["hang"], batch_latency_s=LATENCY) as s:
        client = anthropic_client(s)
        requests = [{"custom_id": cid, "params": p} for cid, p in ANTHROPIC_PARAMS.items()]
        created = client.messages.batches.create(requests=requests)
        time.sleep(3 * LATENCY)
        assert client.messages.batches.retrieve(created.id).processing_status == "in_progress"
        canceling = client.messages.batches.cancel(created.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
        batch = poll_anthropic(client, created.id)
        assert batch.request_counts.canceled == 3
        assert {r.type for r in anthropic_results(client, created.id).values()} == {"canceled"}
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.cancel(created.id)


def test_batch_faults_apply_to_successive_batches_in_creation_order() -> None:
    with batch_server(batch_faults=["ok", "fail"], batch_latency_s=0.0) as s:
        client = openai_client(s)
        first, second = (submit_openai(client, {"a": chat_body(1)}) for _ in range(2))
        assert s.pending_batch_faults == []
        assert poll_openai(client, first.id)[0].status == "completed"
        assert poll_openai(client, second.id)[0].status == "failed"
        s.add_batch_faults(BatchFault("expire"))
        third, _ = poll_openai(client, submit_openai(client, {"a": chat_body(1)}).id)
        assert third.status == "expired"
        assert [b.kind for b in s.batches.values()] == ["ok", "fail", "expire"]


# -- validation and size limits -----------------------------------------------------------------


def test_openai_invalid_input_fails_the_batch_at_validation() -> None:
    with batch_server(batch_latency_s=0.0) as s:
        client = openai_client(s)
        lines = [
            request_line("a", chat_body(1)),
            request_line("a", chat_body(1)),
            request_line("b", chat_body(1), url="/v1/embeddings"),
        ]
        batch, _ = poll_openai(client, create_openai(client, upload(client, lines)).id)
        assert batch.status == "failed"
        assert [(e.code, e.line) for e in batch.errors.data] == [
            ("duplicate_custom_id", 2),
            ("invalid_url", 3),
        ]
        with pytest.raises(openai.NotFoundError):
            create_openai(client, "file-nope")


def test_size_limits() -> None:
    with batch_server(batch_latency_s=0.0, batch_max_requests=2, batch_max_bytes=10_000) as s:
        oa = openai_client(s)
        batch, _ = poll_openai(oa, submit_openai(oa, {c: chat_body(1) for c in "abc"}).id)
        assert batch.status == "failed" and batch.errors.data[0].code == "too_many_requests"
        assert poll_openai(oa, submit_openai(oa, {c: chat_body(1) for c in "ab"}).id)[0].status == "completed"
        with pytest.raises(openai.BadRequestError, match="at most 10000 bytes"):
            oa.files.create(file=("big.jsonl", b"x" * 10_001), purpose="batch")

        an = anthropic_client(s)
        with pytest.raises(anthropic.BadRequestError, match="at most 2 requests"):
            an.messages.batches.create(
                requests=[{"custom_id": c, "params": message_params(1)} for c in "abc"]
            )
        with pytest.raises(anthropic.APIStatusError) as too_big:
            an.messages.batches.create(requests=[{"custom_id": "a", "params": message_params(6000)}])
        assert too_big.value.status_code == 413
        with pytest.raises(anthropic.BadRequestError, match="custom_id"):
            an.messages.batches.create(requests=[{"custom_id": "no spaces", "params": message_params(1)}])
        with pytest.raises(anthropic.BadRequestError, match="duplicate"):
            an.messages.batches.create(requests=[{"custom_id": "a", "params": message_params(1)}] * 2)
        assert [b.provider for b in s.batches.values()] == ["openai", "openai"]  # none rejected is kept


# -- request faults on batch calls --------------------------------------------------------------


def test_a_status_fault_on_upload_creates_nothing_and_the_retry_uploads_once() -> None:
    with batch_server([Fault("503", retry_after=0.01)], batch_latency_s=0.0) as s:
        client = openai_client(s, retries=1)
        created = submit_openai(client, {"a": chat_body(1)})
        uploads = [r for r in s.requests if r.path == "/v1/files"]
        assert [(r.fault, r.file_id) for r in uploads] == [("503", None), (None, created.input_file_id)]
        assert poll_openai(client, created.id)[0].status == "completed"


def test_a_lost_create_response_leaves_a_batch_the_client_cannot_see() -> None:
    with batch_server(["ok", "truncated"], batch_latency_s=0.0) as s:
        client = openai_client(s)
        file_id = upload(client, [request_line("a", chat_body(1))])
        with pytest.raises(json.JSONDecodeError):  # what the openai SDK raises for a cut-off body
            create_openai(client, file_id)
        # the server created it: a retried create would be a second, duplicate batch
        (create,) = batch_calls(s, "/v1/batches")
        assert create.fault == "truncated" and create.batch_id in s.batches


def test_a_poll_can_fail_like_any_request() -> None:
    with batch_server(batch_latency_s=0.0) as s:
        client = anthropic_client(s)
        created = client.messages.batches.create(requests=[{"custom_id": "a", "params": message_params(1)}])
        s.add_faults(Fault("529", retry_after=0))
        with pytest.raises(anthropic.APIStatusError) as overloaded:
            client.messages.batches.retrieve(created.id)
        assert overloaded.value.status_code == 529
        assert poll_anthropic(client, created.id).processing_status == "ended"
