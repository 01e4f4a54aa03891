"""The local server's Anthropic Message Batches routes, driven by the real ``anthropic`` SDK."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

anthropic = pytest.importorskip("anthropic")

SCHEMA = {
    "type": "object",
    "properties": {
        "ticker": {"type": "string"},
        "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        "risk_score": {"type": "integer"},
    },
    "required": ["ticker", "risk_level", "risk_score"],
}
POSITIONS = [
    {"ticker": "NVDA", "sector": "Technology", "weight": 0.12, "beta": 1.7, "volatility": 0.5},
    {"ticker": "KO", "sector": "Consumer Staples", "weight": 0.03, "beta": 0.6, "volatility": 0.15},
    {"ticker": "XOM", "sector": "Energy", "weight": 0.05, "beta": 0.9, "volatility": 0.3},
]


def risk_request(position: dict[str, Any], **params: Any) -> dict[str, Any]:
    """A request built like our risk requests: system + user message, a JSON schema output."""
    return {
        "custom_id": f"risk-{position['ticker']}-3eb420ac",
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 400,
            "system": "You are a portfolio risk analyst. Answer with the JSON object asked for.",
            "messages": [
                {"role": "user", "content": "Review this position.\n" + json.dumps(position)}
            ],
            "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            **params,
        },
    }


def client_for(server: Any, key: str | None = None) -> Any:
    root = server.base_url.removesuffix("/v1")
    return anthropic.Anthropic(api_key=key or server.api_key, base_url=root, max_retries=0)


def wait_ended(client: Any, batch_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}"
        time.sleep(0.05)


def test_create_poll_results_join_by_custom_id(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.05)
    tool = {
        "custom_id": "risk-TOOL-1",
        "params": {
            "model": "claude-haiku-4-5",
            "max_tokens": 300,
            "messages": [{"role": "user", "content": "Review.\n" + json.dumps(POSITIONS[0])}],
            "tools": [{"name": "record_risk", "input_schema": SCHEMA}],
            "tool_choice": {"type": "tool", "name": "record_risk"},
        },
    }
    batch = client.messages.batches.create(requests=[*map(risk_request, POSITIONS), tool])
    assert batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress"
    # every request counts as processing until the batch ends, as on Anthropic
    assert batch.request_counts.processing == 4 and batch.request_counts.succeeded == 0
    assert batch.results_url is None
    assert batch.expires_at > batch.created_at

    batch = wait_ended(client, batch.id)
    counts = batch.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 4, 0)
    assert batch.ended_at is not None and batch.results_url.endswith(f"/{batch.id}/results")

    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == {
        "risk-NVDA-3eb420ac",
        "risk-KO-3eb420ac",
        "risk-XOM-3eb420ac",
        "risk-TOOL-1",
    }
    for position in POSITIONS:
        result = results[f"risk-{position['ticker']}-3eb420ac"]
        assert result.type == "succeeded"
        message = result.message
        assert message.model == "claude-sonnet-4-5" and message.role == "assistant"
        assert message.stop_reason == "end_turn"
        answer = json.loads(message.content[0].text)
        assert answer["position_key"] == position["ticker"]  # joined to its own request
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
        assert message.usage.cache_read_input_tokens == 0
        assert message.usage.cache_creation_input_tokens == 0
    used = results["risk-TOOL-1"].message
    assert used.stop_reason == "tool_use" and used.model == "claude-haiku-4-5"
    assert used.content[0].type == "tool_use" and used.content[0].name == "record_risk"
    assert used.content[0].input["position_key"] == "NVDA"

    assert batch.id in [b.id for b in client.messages.batches.list(limit=10)]
    assert client.messages.batches.delete(batch.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_list_pages_newest_first(local_server: Any) -> None:
    client = client_for(local_server)
    ids = [
        client.messages.batches.create(requests=[risk_request(POSITIONS[0])]).id for _ in range(3)
    ]
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == ids[::-1]  # auto-paging


def test_bad_custom_id_is_a_400_at_create(local_server: Any) -> None:
    client = client_for(local_server)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.batches.create(
            requests=[{**risk_request(POSITIONS[0]), "custom_id": "risk-BRK.B-3eb420ac"}]
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "risk-BRK.B-3eb420ac" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="Duplicate custom_id"):
        client.messages.batches.create(requests=[risk_request(POSITIONS[0])] * 2)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(
            requests=[{**risk_request(POSITIONS[0]), "custom_id": "x" * 65}]
        )
    assert client.messages.batches.list().data == []


def test_invalid_params_are_errored_results_when_the_batch_ends(local_server: Any) -> None:
    client = client_for(local_server)
    zero = risk_request(POSITIONS[1], max_tokens=0)
    zero["custom_id"] = "zero"
    unknown = risk_request(POSITIONS[2], stream_options={"include_usage": True})
    unknown["custom_id"] = "unknown"
    # no 400 at create: Anthropic checks each request's params only as it runs it
    batch = client.messages.batches.create(requests=[risk_request(POSITIONS[0]), zero, unknown])
    batch = wait_ended(client, batch.id)
    counts = batch.request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (1, 2, 0, 0)
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["risk-NVDA-3eb420ac"].type == "succeeded"
    for custom_id, word in (("zero", "max_tokens"), ("unknown", "stream_options")):
        assert results[custom_id].type == "errored"
        assert results[custom_id].error.error.type == "invalid_request_error"
        assert word in results[custom_id].error.error.message


def test_expired_batch_keeps_requests_expired(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.3, completion_window_seconds=0.5)
    tickers = [{**POSITIONS[0], "ticker": f"T{i}"} for i in range(5)]
    batch = client.messages.batches.create(requests=[risk_request(p) for p in tickers])
    batch = wait_ended(client, batch.id)
    counts = batch.request_counts
    assert counts.expired >= 1 and counts.errored == 0 and counts.canceled == 0
    assert counts.succeeded + counts.expired == 5
    kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert sorted(kinds) == sorted(["succeeded"] * counts.succeeded + ["expired"] * counts.expired)


def test_cancel_is_canceling_then_ended_with_canceled_results(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.3)
    tickers = [{**POSITIONS[0], "ticker": f"T{i}"} for i in range(5)]
    batch = client.messages.batches.create(requests=[risk_request(p) for p in tickers])
    cancelled = client.messages.batches.cancel(batch.id)
    assert cancelled.processing_status == "canceling"
    assert cancelled.cancel_initiated_at is not None
    batch = wait_ended(client, batch.id)
    assert batch.request_counts.canceled >= 1 and batch.request_counts.errored == 0
    results = list(client.messages.batches.results(batch.id))
    assert len(results) == 5
    assert {r.result.type for r in results} <= {"succeeded", "canceled"}
    assert sum(r.result.type == "canceled" for r in results) == batch.request_counts.canceled


def test_a_running_batch_cannot_be_deleted_and_results_wait_for_the_end(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.5)
    batch = client.messages.batches.create(requests=[risk_request(POSITIONS[0])])
    with pytest.raises(anthropic.BadRequestError, match="cancel it"):
        client.messages.batches.delete(batch.id)
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(batch.id)


def test_key_is_checked_and_errors_are_anthropic_shaped(tmp_path: Path) -> None:
    from portfolio_batch.local import serve

    with serve(engine="rules", data_dir=tmp_path / "d") as server:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            client_for(server, key="sk-ant-wrong").messages.batches.list()
        assert caught.value.body["type"] == "error"
        assert caught.value.body["error"]["type"] == "authentication_error"
        assert "sk-ant-wrong" not in str(caught.value.body)
        # the header curl and older SDKs send
        root = server.base_url.removesuffix("/v1")
        answer = httpx.get(f"{root}/v1/messages/batches", headers={"x-api-key": server.api_key})
        assert answer.status_code == 200 and answer.json()["data"] == []
        assert httpx.get(f"{root}/v1/messages/batches").status_code == 401
        # the OpenAI routes still want their bearer key, and never list Anthropic batches
        client_for(server).messages.batches.create(requests=[risk_request(POSITIONS[0])])
        assert server.client().batches.list().data == []
