"""Batches on the local server through the real openai SDK: the lifecycle, validation failures,
cancel, expiry, per-request failures, listing, concurrency. Every JSON answer and every output or
error line is checked against the shared OpenAPI schemas."""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import openai
import orjson
import pytest
from test_local_support import (
    RISK_SCHEMA,
    create_batch,
    read_lines,
    risk_line,
    upload,
    validate,
    wait,
    wire,
)

from portfolio_batch._tokens import count_body_tokens, count_text_tokens

STAGES = ["validating", "in_progress", "finalizing", "completed"]


def test_lifecycle_counts_timestamps_usage_and_output(
    local_server: Any, openai_client: Any
) -> None:
    local_server.configure(request_delay=0.15)
    lines = [risk_line(i) for i in range(6)]
    file = upload(openai_client, lines)
    created = wire(
        openai_client.batches.with_raw_response.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"run": "nightly", "portfolio": "demo"},
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        ),
        "Batch",
    )
    assert created["status"] == "validating"
    assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert created["metadata"] == {"run": "nightly", "portfolio": "demo"}
    # honoured (the output file's expiry below) but, as on OpenAI, not a field of the Batch
    assert "output_expires_after" not in created
    assert created["model"] == "gpt-4o-mini"  # set from the input file, already at create
    assert created["expires_at"] == created["created_at"] + 24 * 3600

    batch, polls = wait(openai_client, created["id"])
    statuses = [created["status"]] + [p["status"] for p in polls]
    seen = [s for i, s in enumerate(statuses) if i == 0 or statuses[i - 1] != s]
    assert seen == STAGES
    done_counts = [p["request_counts"]["completed"] for p in polls if p["status"] == "in_progress"]
    assert done_counts == sorted(done_counts) and len(set(done_counts)) >= 3  # rising while it runs
    assert all(p["request_counts"]["total"] == 6 for p in polls if p["status"] != "validating")

    assert batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}
    assert batch["model"] == "gpt-4o-mini"
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert batch[stamp] is not None
    assert (
        batch["created_at"]
        <= batch["in_progress_at"]
        <= batch["finalizing_at"]
        <= batch["completed_at"]
    )
    assert batch["error_file_id"] is None  # nothing failed: no error file
    assert batch["errors"] is None

    out_file = wire(
        openai_client.files.with_raw_response.retrieve(batch["output_file_id"]), "OpenAIFile"
    )
    assert out_file["purpose"] == "batch_output"
    assert out_file["expires_at"] == out_file["created_at"] + 3600

    output = read_lines(openai_client, batch["output_file_id"])
    ids = [line["custom_id"] for line in output]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)
    assert ids != [line["custom_id"] for line in lines]  # not in input order
    prompt_total = completion_total = 0
    by_id = {line["custom_id"]: line for line in lines}
    for line in output:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        body = response["body"]
        assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant" and choice["message"]["refusal"] is None
        assert choice["finish_reason"] == "stop" and choice["logprobs"] is None
        answer = orjson.loads(choice["message"]["content"])
        jsonschema.validate(answer, RISK_SCHEMA)
        request = by_id[line["custom_id"]]["body"]
        usage = body["usage"]
        # The schema is billed as prompt tokens; counted as the cost estimate counts it.
        assert usage["prompt_tokens"] == count_body_tokens([request], model="gpt-4o-mini")[0]
        assert usage["completion_tokens"] == count_text_tokens(choice["message"]["content"])
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
        prompt_total += usage["prompt_tokens"]
        completion_total += usage["completion_tokens"]
    assert batch["usage"] == {
        "input_tokens": prompt_total,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_total,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_total + completion_total,
    }
    # The SDK parses it into its own types.
    parsed = openai_client.batches.retrieve(batch["id"])
    assert parsed.usage is not None and parsed.usage.total_tokens == prompt_total + completion_total


def _failed(client: Any, lines: list[Any]) -> dict[str, Any]:
    batch, _ = wait(client, create_batch(client, lines).id)
    assert batch["status"] == "failed"
    assert batch["failed_at"] is not None
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    assert batch["errors"]["object"] == "list"
    return batch


def test_invalid_json_line_reports_its_line(openai_client: Any) -> None:
    lines: list[Any] = [risk_line(0), b'{"custom_id": "pos-1", "method": ', risk_line(2)]
    errors = _failed(openai_client, lines)["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_json_line", 2)]
    assert errors[0]["message"] == "This line is not parseable as valid JSON."


def test_duplicate_custom_id(openai_client: Any) -> None:
    errors = _failed(openai_client, [risk_line(0), risk_line(1), risk_line(0)])["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("duplicate_custom_id", 3)]
    assert "pos-0" in errors[0]["message"]


def test_url_mismatch(openai_client: Any) -> None:
    bad = {**risk_line(1), "url": "/chat/completions"}
    errors = _failed(openai_client, [risk_line(0), bad])["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("url_mismatch", 2)]


def test_model_mismatch(openai_client: Any) -> None:
    errors = _failed(openai_client, [risk_line(0), risk_line(1, model="gpt-4.1-mini")])["errors"][
        "data"
    ]
    assert [(e["code"], e["line"]) for e in errors] == [("model_mismatch", 2)]


def test_too_many_tasks(local_server: Any, openai_client: Any) -> None:
    local_server.configure(max_requests_per_batch=3)
    errors = _failed(openai_client, [risk_line(i) for i in range(4)])["errors"]["data"]
    assert [e["code"] for e in errors] == ["too_many_tasks"]
    assert "at most 3" in errors[0]["message"]


def test_empty_file(openai_client: Any) -> None:
    errors = _failed(openai_client, [b"", b"  "])["errors"]["data"]
    assert [e["code"] for e in errors] == ["empty_file"]


def test_token_limit_counts_other_active_batches(local_server: Any, openai_client: Any) -> None:
    per_request = int(count_body_tokens([risk_line(0)["body"]], model="gpt-4o-mini")[0])
    local_server.configure(max_enqueued_tokens=per_request * 5, request_delay=0.2)
    first = create_batch(openai_client, [risk_line(i) for i in range(3)])
    wait(openai_client, first.id, until=("in_progress",))
    second = create_batch(openai_client, [risk_line(i) for i in range(3)])
    batch, _ = wait(openai_client, second.id)
    assert batch["status"] == "failed"
    error = batch["errors"]["data"][0]
    assert error["code"] == "token_limit_exceeded" and error["line"] is None
    assert error["message"].startswith(
        "Enqueued token limit reached for gpt-4o-mini in organization"
    )
    assert f"Limit: {per_request * 5:,} enqueued tokens." in error["message"]
    # A different model has its own queue; the first batch is unaffected.
    third = create_batch(openai_client, [risk_line(i, model="gpt-4.1-nano") for i in range(3)])
    assert wait(openai_client, third.id)[0]["status"] == "completed"
    assert wait(openai_client, first.id)[0]["status"] == "completed"


def test_cancel_keeps_finished_output_and_cancels_the_rest(
    local_server: Any, openai_client: Any
) -> None:
    local_server.configure(request_delay=0.1)
    lines = [risk_line(i) for i in range(30)]
    created = create_batch(openai_client, lines)
    running, _ = wait(openai_client, created.id, until=("in_progress",))
    while running["request_counts"]["completed"] < 3:
        time.sleep(0.05)
        running = wire(openai_client.batches.with_raw_response.retrieve(created.id), "Batch")
    cancelling = wire(openai_client.batches.with_raw_response.cancel(created.id), "Batch")
    assert cancelling["status"] == "cancelling" and cancelling["cancelling_at"] is not None
    batch, _ = wait(openai_client, created.id)
    assert batch["status"] == "cancelled" and batch["cancelled_at"] is not None
    counts = batch["request_counts"]
    assert counts["total"] == 30 and counts["completed"] >= 3 and counts["completed"] < 30
    assert counts["completed"] + counts["failed"] == 30
    output = read_lines(openai_client, batch["output_file_id"])
    errors = read_lines(openai_client, batch["error_file_id"])
    assert len(output) == counts["completed"] and len(errors) == counts["failed"]
    assert {line["custom_id"] for line in output} | {line["custom_id"] for line in errors} == {
        line["custom_id"] for line in lines
    }
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_cancelled" and line["error"]["message"]
    # Cancelling again is harmless; a finished batch cannot be cancelled.
    assert openai_client.batches.cancel(created.id).status == "cancelled"
    done = create_batch(openai_client, [risk_line(0)])
    local_server.configure(request_delay=0)
    wait(openai_client, done.id)
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.batches.cancel(done.id)
    assert "'completed'" in info.value.body["message"]


def test_cancel_while_validating(local_server: Any, openai_client: Any) -> None:
    local_server.configure(request_delay=0.5)
    created = create_batch(openai_client, [risk_line(i) for i in range(3)])
    assert openai_client.batches.cancel(created.id).status == "cancelling"
    batch, _ = wait(openai_client, created.id)
    assert batch["status"] == "cancelled" and batch["in_progress_at"] is None


def test_expiry_gives_partial_output_and_expired_lines(
    local_server: Any, openai_client: Any
) -> None:
    local_server.configure(completion_window_seconds=1.5, request_delay=0.1)
    lines = [risk_line(i) for i in range(40)]
    batch, _ = wait(openai_client, create_batch(openai_client, lines).id)
    assert batch["status"] == "expired" and batch["expired_at"] is not None
    assert batch["completed_at"] is None
    counts = batch["request_counts"]
    assert 0 < counts["completed"] < 40 and counts["completed"] + counts["failed"] == 40
    output = read_lines(openai_client, batch["output_file_id"])
    errors = read_lines(openai_client, batch["error_file_id"])
    assert len(output) == counts["completed"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert errors[0]["error"]["message"] == (
        "This request could not be executed before the completion window expired."
    )


def test_expiry_before_any_request_ran_reports_every_request_expired(
    local_server: Any, openai_client: Any
) -> None:
    # The window closes while the batch is still validating: no request ever runs, and every
    # one of them must still be in the error file as batch_expired (not silently absent).
    local_server.configure(completion_window_seconds=0.1, request_delay=0.3)
    lines = [risk_line(i) for i in range(5)]
    batch, _ = wait(openai_client, create_batch(openai_client, lines).id)
    assert batch["status"] == "expired" and batch["in_progress_at"] is None
    assert batch["output_file_id"] is None
    assert batch["request_counts"] == {"total": 5, "completed": 0, "failed": 5}
    errors = read_lines(openai_client, batch["error_file_id"])
    assert sorted(line["custom_id"] for line in errors) == [line["custom_id"] for line in lines]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_request_level_failures_go_to_the_error_file(local_server: Any, openai_client: Any) -> None:
    local_server.configure(context_tokens=300)
    long_notes = "Long analyst notes. " * 100
    lines = [
        risk_line(0, max_tokens=50),
        risk_line(1, notes=long_notes),
        risk_line(2, max_tokens=50),
    ]
    batch, _ = wait(openai_client, create_batch(openai_client, lines).id)
    assert batch["status"] == "completed"
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    (error,) = read_lines(openai_client, batch["error_file_id"])
    assert error["custom_id"] == "pos-1" and error["error"] is None
    assert error["response"]["status_code"] == 400
    body_error = error["response"]["body"]["error"]
    assert body_error["code"] == "context_length_exceeded"
    assert body_error["type"] == "invalid_request_error"
    assert "maximum context length is 300 tokens" in body_error["message"]
    assert len(read_lines(openai_client, batch["output_file_id"])) == 2


def test_no_output_file_when_nothing_succeeded(local_server: Any, openai_client: Any) -> None:
    local_server.configure(context_tokens=20)
    batch, _ = wait(openai_client, create_batch(openai_client, [risk_line(0), risk_line(1)]).id)
    assert batch["status"] == "completed"
    assert batch["output_file_id"] is None
    assert len(read_lines(openai_client, batch["error_file_id"])) == 2


def test_truncated_answer_at_max_tokens(openai_client: Any) -> None:
    batch, _ = wait(openai_client, create_batch(openai_client, [risk_line(0, max_tokens=12)]).id)
    (line,) = read_lines(openai_client, batch["output_file_id"])
    body = line["response"]["body"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"completion_window": "48h"}, "completion_window"),
        ({"endpoint": "/v1/fine_tuning"}, "endpoint"),
        ({"endpoint": "/v1/moderation"}, "endpoint"),
        ({"metadata": {"k": "v" * 600}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 60}}, "output_expires_after"),
    ],
)
def test_create_rejects_bad_parameters(
    openai_client: Any, kwargs: dict[str, Any], param: str
) -> None:
    file = upload(openai_client, [risk_line(0)])
    args = {
        "input_file_id": file.id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.batches.create(**{**args, **kwargs})
    assert info.value.body["param"] == param
    assert set(info.value.body) == {"message", "type", "param", "code"}


def test_create_needs_an_existing_batch_file(openai_client: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.create(
            input_file_id="file-000000000000",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    with pytest.raises(openai.NotFoundError):
        openai_client.batches.retrieve("batch_000000000000")
    notes = upload(openai_client, [risk_line(0)], purpose="user_data")
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.batches.create(
            input_file_id=notes.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "purpose 'batch'" in info.value.body["message"]


def test_list_batches_paginates_newest_first(openai_client: Any) -> None:
    ids = [create_batch(openai_client, [risk_line(i)]).id for i in range(5)]
    page = wire(openai_client.batches.with_raw_response.list(limit=2), "ListBatchesResponse")
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    assert page["has_more"] is True
    rest = wire(
        openai_client.batches.with_raw_response.list(limit=10, after=ids[3]), "ListBatchesResponse"
    )
    assert [b["id"] for b in rest["data"]] == ids[::-1][2:]
    assert rest["has_more"] is False
    assert [b.id for b in openai_client.batches.list(limit=2)] == ids[::-1]
    with pytest.raises(openai.BadRequestError):
        openai_client.batches.list(limit=101)


def test_concurrent_batches_run_at_once(local_server: Any, openai_client: Any) -> None:
    local_server.configure(request_delay=0.05)
    ids = [create_batch(openai_client, [risk_line(i) for i in range(12)]).id for _ in range(3)]
    overlap = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        statuses = [openai_client.batches.retrieve(i).status for i in ids]
        overlap = overlap or statuses.count("in_progress") >= 2
        if all(s == "completed" for s in statuses):
            break
        time.sleep(0.02)
    assert overlap, "batches ran one after another"
    for batch_id in ids:
        batch, _ = wait(openai_client, batch_id)
        assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        assert len(read_lines(openai_client, batch["output_file_id"])) == 12


def test_batch_of_embeddings_and_responses(openai_client: Any) -> None:
    emb = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": f"text {i}", "dimensions": 8},
        }
        for i in range(3)
    ]
    file = upload(openai_client, emb)
    created = openai_client.batches.create(
        input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch, _ = wait(openai_client, created.id)
    lines = read_lines(openai_client, batch["output_file_id"])
    assert all(len(line["response"]["body"]["data"][0]["embedding"]) == 8 for line in lines)
    assert batch["usage"]["input_tokens"] > 0 and batch["usage"]["output_tokens"] == 0

    resp = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": f"Say {i}", "instructions": "Be brief."},
        }
        for i in range(2)
    ]
    file = upload(openai_client, resp)
    created = openai_client.batches.create(
        input_file_id=file.id, endpoint="/v1/responses", completion_window="24h"
    )
    batch, _ = wait(openai_client, created.id)
    for line in read_lines(openai_client, batch["output_file_id"]):
        body = line["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed"
        assert body["output"][0]["content"][0]["text"]


def test_output_line_order_and_validation_of_error_shape() -> None:
    # The shared spec's BatchRequestOutput must accept both line shapes the server writes.
    validate(
        {
            "id": "batch_req_1",
            "custom_id": "a",
            "response": None,
            "error": {"code": "batch_expired", "message": "m"},
        },
        "BatchRequestOutput",
    )
    with pytest.raises(jsonschema.ValidationError):
        validate(
            {"id": "batch_req_1", "custom_id": 5, "response": None, "error": None},
            "BatchRequestOutput",
        )


def test_a_client_gone_mid_request_is_not_logged_as_a_server_error(
    local_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that times out or is killed while sending a body is routine for a test double:
    # no traceback in the user's CI log, and the server goes on answering.
    import logging
    import socket

    uvicorn_errors: list[logging.LogRecord] = []

    class Catcher(logging.Handler):  # uvicorn's loggers do not propagate to caplog
        def emit(self, record: logging.LogRecord) -> None:
            uvicorn_errors.append(record)

    catcher = Catcher()
    logging.getLogger("uvicorn.error").addHandler(catcher)
    try:
        with caplog.at_level(logging.ERROR, logger="portfolio_batch.local"):
            for path in ("/v1/batches", "/v1/chat/completions"):
                with socket.create_connection(("127.0.0.1", local_server.port)) as conn:
                    conn.sendall(
                        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                        'Content-Length: 1000\r\n\r\n{"input_file_id":'.encode()
                    )
                    time.sleep(0.2)
            time.sleep(0.3)
        assert local_server.client().batches.list().data == []
    finally:
        logging.getLogger("uvicorn.error").removeHandler(catcher)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r.getMessage() for r in uvicorn_errors if r.levelno >= logging.ERROR] == []
