"""The local server's Gemini batch routes (file mode with keys), driven by the real
``google-genai`` SDK."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

genai = pytest.importorskip("google.genai")
from google.genai import errors, types  # noqa: E402

SCHEMA = {
    "type": "OBJECT",
    "properties": {
        "ticker": {"type": "STRING"},
        "risk_level": {"type": "STRING", "enum": ["low", "medium", "high"]},
        "risk_score": {"type": "INTEGER"},
    },
    "required": ["ticker", "risk_level", "risk_score"],
}
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def line(ticker: str) -> dict[str, Any]:
    """A line built like our risk requests: system instruction, user turn, a response schema."""
    position = {
        "ticker": ticker,
        "sector": "Energy",
        "weight": 0.05,
        "beta": 1.1,
        "volatility": 0.3,
    }
    return {
        "key": f"risk-{ticker}-3eb420ac",
        "request": {
            "systemInstruction": {"parts": [{"text": "You are a portfolio risk analyst."}]},
            "contents": [{"role": "user", "parts": [{"text": "Review.\n" + json.dumps(position)}]}],
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": SCHEMA,
                "maxOutputTokens": 400,
            },
        },
    }


def client_for(server: Any, key: str | None = None) -> Any:
    root = server.base_url.removesuffix("/v1")
    return genai.Client(
        api_key=key or server.api_key, http_options=types.HttpOptions(base_url=root)
    )


def submit(client: Any, lines: list[dict[str, Any]]) -> Any:
    data = "\n".join(json.dumps(x) for x in lines).encode()
    uploaded = client.files.upload(
        file=io.BytesIO(data), config={"mime_type": "jsonl", "display_name": "risk-input"}
    )
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == len(data)
    return client.batches.create(
        model="gemini-2.5-flash", src=uploaded.name, config={"display_name": "risk-run"}
    )


def wait_done(client: Any, name: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.state.name in DONE:
            return job
        assert time.monotonic() < deadline, f"job still {job.state.name}"
        time.sleep(0.05)


def responses(client: Any, job: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]


def stats(server: Any, name: str) -> dict[str, str]:
    """batchStats, which the REST answer carries and google-genai's BatchJob does not map."""
    root = server.base_url.removesuffix("/v1")
    answer = httpx.get(f"{root}/v1beta/{name}", headers={"x-goog-api-key": server.api_key})
    return answer.json()["metadata"]["batchStats"]


def test_upload_create_poll_download_join_by_key(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.05)
    tickers = ["NVDA", "KO", "XOM"]
    bad = {"key": "risk-BAD", "request": {"contents": []}}
    job = submit(client, [*map(line, tickers), bad])
    assert job.name.startswith("batches/") and job.display_name == "risk-run"
    assert job.state.name in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    assert job.model == "models/gemini-2.5-flash"

    job = wait_done(client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.end_time is not None
    assert stats(local_server, job.name) == {
        "requestCount": "4",
        "successfulRequestCount": "3",
        "failedRequestCount": "1",
        "pendingRequestCount": "0",
    }
    rows = {r["key"]: r for r in responses(client, job)}
    assert set(rows) == {f"risk-{t}-3eb420ac" for t in tickers} | {"risk-BAD"}
    for ticker in tickers:
        response = rows[f"risk-{ticker}-3eb420ac"]["response"]
        candidate = response["candidates"][0]
        assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "STOP"
        answer = json.loads(candidate["content"]["parts"][0]["text"])
        assert answer["position_key"] == ticker  # the answer of its own request
        usage = response["usageMetadata"]
        assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
        assert usage["cachedContentTokenCount"] == 0
        assert response["modelVersion"] == "gemini-2.5-flash"
    assert rows["risk-BAD"]["status"]["code"] == 3  # INVALID_ARGUMENT, on its own line
    assert "risk-BAD" not in rows or "response" not in rows["risk-BAD"]

    assert job.name in [j.name for j in client.batches.list(config={"page_size": 10})]
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as caught:
        client.batches.get(name=job.name)
    assert caught.value.code == 404


def test_results_out_of_order_knob_still_join_by_key(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(gemini_shuffle_results=True, seed=7)
    tickers = [f"T{i:02d}" for i in range(30)]
    job = wait_done(client, submit(client, [line(t) for t in tickers]).name)
    rows = responses(client, job)
    keys = [r["key"] for r in rows]
    assert keys != [f"risk-{t}-3eb420ac" for t in tickers]  # not in input order
    assert sorted(keys) == sorted(f"risk-{t}-3eb420ac" for t in tickers)
    for row in rows:
        text = row["response"]["candidates"][0]["content"]["parts"][0]["text"]
        assert f"risk-{json.loads(text)['position_key']}-3eb420ac" == row["key"]


def test_input_order_by_default(local_server: Any) -> None:
    client = client_for(local_server)
    tickers = [f"T{i:02d}" for i in range(30)]
    job = wait_done(client, submit(client, [line(t) for t in tickers]).name)
    assert [r["key"] for r in responses(client, job)] == [f"risk-{t}-3eb420ac" for t in tickers]


def test_stuck_job_knob_stays_running_past_24h_then_expires(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(gemini_stuck_jobs=True)
    job = submit(client, [line("NVDA")])
    time.sleep(0.5)  # the requests themselves are done by now
    assert client.batches.get(name=job.name).state.name == "JOB_STATE_RUNNING"
    local_server.configure(clock_offset=25 * 3600)
    job = client.batches.get(name=job.name)
    assert job.state.name == "JOB_STATE_RUNNING" and job.dest is None
    local_server.configure(clock_offset=49 * 3600)
    job = client.batches.get(name=job.name)
    assert job.state.name == "JOB_STATE_EXPIRED" and job.dest is None


def test_cancel_ends_cancelled_with_statuses_for_unrun_requests(local_server: Any) -> None:
    client = client_for(local_server)
    local_server.configure(request_delay=0.3)
    job = submit(client, [line(f"T{i}") for i in range(5)])
    client.batches.cancel(name=job.name)
    job = wait_done(client, job.name)
    assert job.state.name == "JOB_STATE_CANCELLED"
    rows = responses(client, job)
    assert len(rows) == 5
    cancelled = [r for r in rows if "status" in r]
    assert cancelled and all(r["status"]["code"] == 1 for r in cancelled)


def test_inline_requests_are_refused(local_server: Any) -> None:
    client = client_for(local_server)
    with pytest.raises(errors.ClientError, match="file mode"):
        client.batches.create(
            model="gemini-2.5-flash",
            src=[{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}],
        )


def test_key_is_checked_and_openai_routes_are_untouched(tmp_path: Path) -> None:
    from portfolio_batch.local import serve

    with serve(engine="rules", data_dir=tmp_path / "d") as server:
        wrong = client_for(server, key="AIza-wrong")  # held: a dropped client closes its pool
        with pytest.raises(errors.ClientError) as caught:
            wrong.batches.list()
        assert caught.value.code == 400 and caught.value.status == "INVALID_ARGUMENT"
        assert "AIza-wrong" not in str(caught.value)
        root = server.base_url.removesuffix("/v1")
        assert httpx.get(f"{root}/v1beta/batches").status_code == 403
        # /v1/files is Gemini's with a Google key and OpenAI's with a bearer key
        client = client_for(server)
        submit(client, [line("NVDA")])
        assert server.client().files.list().data == []
        assert server.client().batches.list().data == []
