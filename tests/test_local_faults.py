"""Fault injection on the local server: 429s and 500s the SDK retries, added latency, downloads cut
partway, malformed output lines; and that settings are validated."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx2
import openai
import orjson
import pytest
from test_local_support import create_batch, jsonl, read_lines, risk_line, upload, wait

from portfolio_batch.errors import InputError
from portfolio_batch.local import serve


def test_429_carries_retry_after_and_the_sdk_retries_through(local_server: Any) -> None:
    local_server.configure(fault_rate_429=1.0, retry_after=0.05)
    with pytest.raises(openai.RateLimitError) as info:
        local_server.client(max_retries=0).files.list()
    headers = info.value.response.headers
    assert headers["retry-after-ms"] == "50" and headers["retry-after"] == "1"
    assert info.value.body["code"] == "rate_limit_exceeded"

    local_server.configure(fault_rate_429=0.4, seed=7)
    client = local_server.client(max_retries=10)
    batch = create_batch(client, [risk_line(i) for i in range(3)])
    final, _ = wait(client, batch.id)
    assert final["status"] == "completed"
    assert len(client.files.content(final["output_file_id"]).content.splitlines()) == 3


def test_500_faults_and_fault_endpoints(local_server: Any) -> None:
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["batches.retrieve"])
    client = local_server.client(max_retries=0)
    batch = create_batch(client, [risk_line(0)])  # other routes are unaffected
    with pytest.raises(openai.InternalServerError) as info:
        client.batches.retrieve(batch.id)
    assert info.value.body["type"] == "server_error"
    local_server.configure(fault_rate_500=0.5, seed=3)
    retrying = local_server.client(max_retries=8)
    assert wait(retrying, batch.id)[0]["status"] == "completed"


def test_faults_are_deterministic_for_a_seed(local_server: Any) -> None:
    def pattern() -> list[int]:
        local_server.configure(fault_rate_500=0.5, seed=42)
        client = local_server.client(max_retries=0)
        codes = []
        for _ in range(12):
            try:
                client.files.list()
                codes.append(200)
            except openai.InternalServerError:
                codes.append(500)
        return codes

    first = pattern()
    assert 200 in first and 500 in first
    assert pattern() == first


def test_latency_is_added_to_every_call(local_server: Any, openai_client: Any) -> None:
    local_server.configure(latency=0.3)
    start = time.perf_counter()
    openai_client.files.list()
    assert time.perf_counter() - start >= 0.3


def test_cut_download_once_then_whole_file(local_server: Any) -> None:
    data = jsonl([risk_line(i) for i in range(30)])
    local_server.configure(cut_download_after_bytes=1000)
    strict = local_server.client(max_retries=0)
    file = strict.files.create(file=("r.jsonl", io.BytesIO(data)), purpose="batch")
    with pytest.raises(openai.APIConnectionError):
        strict.files.content(file.id)
    assert strict.files.content(file.id).content == data  # only the first download is cut
    # A client that resumes from where the cut left it (HTTP Range) also gets everything.
    other = strict.files.create(file=("s.jsonl", io.BytesIO(data)), purpose="batch")
    url = f"{local_server.base_url}/files/{other.id}/content"
    received = b""
    with (
        pytest.raises(httpx2.RemoteProtocolError),
        httpx2.stream("GET", url, headers={"Authorization": "Bearer k"}) as r,
    ):
        for chunk in r.iter_bytes():
            received += chunk
    assert received == data[: len(received)] and 0 < len(received) <= 1000
    rest = httpx2.get(
        url, headers={"Authorization": "Bearer k", "Range": f"bytes={len(received)}-"}
    )
    assert received + rest.content == data


def test_cut_download_at_a_rate_and_sdk_retries(local_server: Any) -> None:
    data = jsonl([risk_line(i) for i in range(30)])
    local_server.configure(cut_download_after_bytes=500, cut_download_rate=0.3, seed=1)
    client = local_server.client(max_retries=10)
    file = client.files.create(file=("r.jsonl", io.BytesIO(data)), purpose="batch")
    for _ in range(4):
        assert client.files.content(file.id).content == data
    with pytest.raises(
        openai.APIConnectionError
    ):  # some downloads were cut: without retries it shows
        for _ in range(20):
            local_server.client(max_retries=0).files.content(file.id)


def test_malformed_output_lines(local_server: Any, openai_client: Any) -> None:
    local_server.configure(malformed_output_rate=0.3, seed=5)
    batch, _ = wait(
        openai_client, create_batch(openai_client, [risk_line(i) for i in range(40)]).id
    )
    assert batch["request_counts"]["completed"] == 40
    raw = openai_client.files.content(batch["output_file_id"]).content.splitlines()
    assert len(raw) == 40
    bad = 0
    for line in raw:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
    assert 4 <= bad <= 24


def test_settings_are_validated(local_server: Any) -> None:
    with pytest.raises(InputError, match="fault_rate_429"):
        local_server.configure(fault_rate_429=2)
    with pytest.raises(InputError, match="valid settings"):
        local_server.configure(fault_rate=0.1)
    with pytest.raises(InputError, match="unknown route"):
        local_server.configure(fault_endpoints=["files.upload"])
    with pytest.raises(InputError, match="eventually"):
        local_server.configure(cut_download_rate=1.0)
    with pytest.raises(InputError), serve(bogus=1):
        pass


def test_faults_do_not_touch_uploaded_content(local_server: Any) -> None:
    local_server.configure(fault_rate_500=0.3, seed=11)
    client = local_server.client(max_retries=10)
    file = upload(client, [risk_line(i) for i in range(5)])
    lines = read_lines(client, None)
    assert lines == []
    assert client.files.content(file.id).content == jsonl([risk_line(i) for i in range(5)])


def test_a_lost_reply_is_answered_500_after_the_request_was_carried_out(
    local_server: Any,
) -> None:
    # 429s and 500s come before the server acts, so a retry can never duplicate anything; a
    # lost reply comes after: the batch exists, the client saw a 500, and the SDK's retries of
    # the POST make more. What a client that must not pay twice has to survive.
    file = upload(local_server.client(), [risk_line(0)])
    local_server.configure(fault_rate_lost_reply=1.0, fault_endpoints=["batches.create"])
    with pytest.raises(openai.InternalServerError) as info:
        local_server.client(max_retries=2).batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "after carrying the request out" in info.value.message
    assert info.value.response.headers["x-request-id"].startswith("req_")
    local_server.configure(fault_rate_lost_reply=0.0)
    made = local_server.client().batches.list().data
    assert len(made) == 3  # the POST and the SDK's two retries: three batches
    assert {b.input_file_id for b in made} == {file.id}
    with pytest.raises(InputError, match="fault_rate_lost_reply"):
        local_server.configure(fault_rate_lost_reply=1.5)
