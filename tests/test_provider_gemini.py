"""The Gemini backend (``_providers/gemini.py``) against the local server's Gemini batch routes,
through the real ``google-genai`` SDK: prepare, submit, status, results joined by key, cancel,
stuck and expired jobs, and the whole pipeline (submit -> poll -> aggregate_df)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest

pytest.importorskip("google.genai")
from google.genai import types

import portfolio_batch as pb
from portfolio_batch._contract import BATCH_STATUSES
from portfolio_batch._providers import gemini
from portfolio_batch._providers._facade import BatchClient
from portfolio_batch.errors import InputError, PortfolioBatchError

MODEL = "gemini-2.5-flash"
ENDED = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(autouse=True)
def _no_google_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (*gemini.KEY_VARS, gemini.BASE_URL_VAR, "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    return pb.load_portfolio(testdata / "portfolio.csv")


def root(server: Any) -> str:
    return str(server.base_url).removesuffix("/v1")


def backend_for(server: Any, tmp_path: Path) -> gemini.GeminiBackend:
    return gemini.GeminiBackend(
        api_key=server.api_key, base_url=root(server), keys_dir=tmp_path / "keys"
    )


def lines_of(requests: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"custom_id": r.custom_id, "method": r.method, "url": r.url, "body": r.body}
        for r in requests.itertuples()
    ]


def wait_ended(backend: gemini.GeminiBackend, batch_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = backend.status(batch_id)
        if state.status in ENDED:
            return state
        assert time.monotonic() < deadline, f"batch still {state.provider_status}"
        time.sleep(0.05)


def test_prepare_maps_a_build_requests_line(portfolio: pd.DataFrame) -> None:
    line = lines_of(pb.build_requests(portfolio.head(1), model=MODEL))[0]
    body = line["body"]
    prepared = gemini.prepare(line)
    assert prepared["key"] == line["custom_id"] and prepared["model"] == MODEL
    request = prepared["request"]
    assert request["systemInstruction"] == {"parts": [{"text": body["messages"][0]["content"]}]}
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": body["messages"][1]["content"]}]}
    ]
    config = request["generationConfig"]
    assert config["maxOutputTokens"] == body["max_tokens"] == 400
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == body["response_format"]["json_schema"]["schema"]

    # a reasoning model's limit is max_completion_tokens
    thinking = {**line, "body": {**body, "max_completion_tokens": 900}}
    del thinking["body"]["max_tokens"]
    assert gemini.prepare(thinking)["request"]["generationConfig"]["maxOutputTokens"] == 900
    # what Gemini cannot carry is refused, naming the request
    with pytest.raises(InputError, match=line["custom_id"]) as caught:
        gemini.prepare({**line, "body": {**body, "logprobs": True}})
    assert "logprobs" in str(caught.value)
    with pytest.raises(InputError, match="/v1/embeddings"):
        gemini.prepare({**line, "url": "/v1/embeddings"})


def test_every_job_state_is_mapped_and_an_unknown_one_is_named() -> None:
    for state in types.JobState:
        if state.name == "JOB_STATE_UNSPECIFIED":
            continue
        assert gemini.state_of(state.value) in BATCH_STATUSES, state
    assert gemini.state_of("JOB_STATE_EXPIRED") == "expired"
    assert gemini.state_of("BATCH_STATE_CANCELLED") == "cancelled"
    assert gemini.state_of("JOB_STATE_PENDING") == "validating"
    assert gemini.state_of("JOB_STATE_CANCELLING") == "cancelling"
    for word in ("JOB_STATE_UNSPECIFIED", "JOB_STATE_DREAMING"):
        with pytest.raises(PortfolioBatchError, match=word):
            gemini.state_of(word)


def test_output_lines_map_usage_finish_and_statuses(
    portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(4), model=MODEL)
    ids = list(requests["custom_id"])
    answer = {
        "position_key": "AAPL",
        "risk_score": 40,
        "risk_level": "medium",
        "drivers": ["size"],
        "rationale": "ok",
    }
    response = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "thinking...", "thought": True},
                        {"text": json.dumps(answer)},
                    ],
                },
                "finishReason": "MAX_TOKENS",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 300,
            "cachedContentTokenCount": 200,
            "candidatesTokenCount": 50,
            "thoughtsTokenCount": 70,
        },
        "modelVersion": "gemini-2.5-flash-001",
    }
    raw = [
        {"key": ids[0], "response": response},
        {"key": ids[1], "status": {"code": 3, "message": "contents: bad"}},
        {"key": ids[2], "status": {"code": 1, "message": "cancelled"}},
        {"key": ids[3], "status": {"code": 4, "message": "deadline"}},
    ]
    out = [gemini.output_line(x, model=MODEL) for x in raw]
    choice = out[0]["response"]["body"]["choices"][0]
    assert choice["message"]["content"] == json.dumps(answer)  # the thought part is left out
    assert choice["finish_reason"] == "length"
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in out))
    results = pb.aggregate_df(None, requests, output_files=[path], prices={MODEL: (1.0, 1.0)})
    first = results.loc[ids[0]]
    assert first["status"] == "succeeded" and first["risk_level"] == "medium"
    assert first["prompt_tokens"] == 300 and first["cached_tokens"] == 200
    assert first["completion_tokens"] == 120 and first["reasoning_tokens"] == 70
    assert first["model"] == "gemini-2.5-flash-001"
    assert results.loc[ids[1], "http_status"] == 400
    assert results.loc[ids[1], "error_code"] == "INVALID_ARGUMENT"
    assert list(results.loc[ids[1:], "status"]) == ["failed", "cancelled", "expired"]


def test_submit_status_results_join_every_key_out_of_order(
    local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    # a small delay per request, so the job cannot end before the create's answer is read
    local_server.configure(gemini_shuffle_results=True, seed=11, request_delay=0.02)
    backend = backend_for(local_server, tmp_path)
    requests = pb.build_requests(portfolio, model=MODEL)
    prepared = [backend.prepare(x) for x in lines_of(requests)]
    bad = {"key": "risk-BAD-0", "model": MODEL, "request": {"contents": []}}
    state = backend.submit([*prepared, bad], display_name="pb-test.jsonl")
    assert state.status in ("validating", "in_progress") and "/" not in state.id
    assert state.total == len(prepared) + 1

    state = wait_ended(backend, state.id)
    assert (state.status, state.provider_status) == ("completed", "BATCH_STATE_SUCCEEDED")
    assert (state.succeeded, state.errored, state.processing) == (len(prepared), 1, 0)
    assert state.ended_at is not None

    out = list(backend.results(state.id))
    keys = [x["custom_id"] for x in out]
    assert keys != [p["key"] for p in prepared] + ["risk-BAD-0"]  # the server shuffled them
    assert sorted(keys) == sorted([*requests["custom_id"], "risk-BAD-0"])  # each key once
    by_key = {x["custom_id"]: x for x in out}
    for row in requests.itertuples():
        body = by_key[row.custom_id]["response"]["body"]
        answer = json.loads(body["choices"][0]["message"]["content"])
        assert answer["position_key"] == row.ticker  # the answer of its own request
        assert body["usage"]["prompt_tokens"] > 0
    assert by_key["risk-BAD-0"]["response"]["status_code"] == 400

    # a key Gemini's responses file lacks is reported, not dropped
    keys_file = next((tmp_path / "keys").iterdir())
    keys_file.write_text(keys_file.read_text() + "risk-LOST-0\n")
    lost = [x for x in backend.results(state.id) if x["custom_id"] == "risk-LOST-0"]
    assert lost[0]["response"]["body"]["error"]["code"] == "missing_result"

    assert state.id in [s.id for s in backend.list()]
    assert backend.discover(requests["custom_id"].iloc[0].rsplit("-", 1)[1]) == [state.id]
    assert backend.discover("not-a-run") == []


def test_results_before_the_end_and_unknown_batches_raise_openai_errors(
    local_server: Any, tmp_path: Path
) -> None:
    local_server.configure(request_delay=0.5)
    backend = backend_for(local_server, tmp_path)
    line = {"custom_id": "risk-KO-1", "url": "/v1/chat/completions"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "KO"}]}
    state = backend.submit([backend.prepare({**line, "body": body})], display_name="x.jsonl")
    with pytest.raises(openai.NotFoundError, match="no results yet"):
        list(backend.results(state.id))
    with pytest.raises(openai.NotFoundError):
        backend.status("0123456789abcdef")


def test_stuck_job_stays_in_progress_then_every_request_is_expired(
    local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    local_server.configure(gemini_stuck_jobs=True)
    backend = backend_for(local_server, tmp_path)
    requests = pb.build_requests(portfolio.head(3), model=MODEL)
    state = backend.submit([backend.prepare(x) for x in lines_of(requests)], display_name="s")
    time.sleep(0.5)  # its requests have run by now
    assert backend.status(state.id).status == "in_progress"
    local_server.configure(clock_offset=25 * 3600)  # past Gemini's 24 h target
    assert backend.status(state.id).status == "in_progress"
    local_server.configure(clock_offset=49 * 3600)
    state = backend.status(state.id)
    assert (state.status, state.expired, state.succeeded) == ("expired", 3, 0)
    out = list(backend.results(state.id))  # no responses file: one expired line per request
    assert sorted(x["custom_id"] for x in out) == sorted(requests["custom_id"])
    assert {x["error"]["code"] for x in out} == {"batch_expired"}


def test_cancel(local_server: Any, portfolio: pd.DataFrame, tmp_path: Path) -> None:
    local_server.configure(request_delay=0.3)
    backend = backend_for(local_server, tmp_path)
    requests = pb.build_requests(portfolio.head(5), model=MODEL)
    state = backend.submit([backend.prepare(x) for x in lines_of(requests)], display_name="c")
    state = backend.cancel(state.id)
    assert state.cancel_requested and state.status in ("cancelling", "cancelled")
    state = wait_ended(backend, state.id)
    assert state.status == "cancelled" and state.cancelled >= 1
    out = list(backend.results(state.id))
    assert sorted(x["custom_id"] for x in out) == sorted(requests["custom_id"])
    unrun = [x for x in out if x["response"] is None]
    assert unrun and {x["error"]["code"] for x in unrun} == {"batch_cancelled"}

    # a job Gemini still calls RUNNING after our cancel (a stuck one) shows as cancelling
    local_server.configure(gemini_stuck_jobs=True, request_delay=0)
    state = backend.submit([backend.prepare(x) for x in lines_of(requests)], display_name="s")
    state = backend.cancel(state.id)
    assert state.provider_status == "BATCH_STATE_RUNNING"
    assert (state.status, state.cancel_requested) == ("cancelling", True)


def test_key_and_base_url_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="GEMINI_API_KEY"):
        gemini.GeminiBackend()
    monkeypatch.setenv("GOOGLE_API_KEY", "AIza-google")
    assert gemini.GeminiBackend()._api_key == "AIza-google"
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-gemini")  # the first choice
    backend = gemini.GeminiBackend()
    assert backend._api_key == "AIza-gemini"
    assert backend.base_url == "https://generativelanguage.googleapis.com"
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    backend = gemini.GeminiBackend()
    assert backend.base_url == "http://127.0.0.1:9"
    assert "AIza" not in repr(backend)
    retried = backend.with_options(max_retries=0)
    assert retried.max_retries == 0 and retried.base_url == backend.base_url


def _answers(results: pd.DataFrame) -> pd.DataFrame:
    return results.set_index("ticker")[["status", "risk_level", "risk_score", "drivers"]]


def test_pipeline_end_to_end_gives_the_openai_paths_answers(
    local_server: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    local_server.configure(gemini_shuffle_results=True, seed=5)
    c = BatchClient(backend_for(local_server, tmp_path), label="gemini:test")
    requests = pb.build_requests(portfolio, model=MODEL)
    manifest = pb.to_jsonl(requests, tmp_path / "gemini", max_requests=15)
    jobs = pb.poll(pb.submit(manifest, client=c), client=c, progress=False)
    assert len(jobs) == len(manifest) > 1 and set(jobs["status"]) == {"completed"}
    results = pb.aggregate_df(jobs, requests, client=c)

    oa_requests = pb.build_requests(portfolio, model="gpt-4o-mini")
    oa = local_server.client()
    oa_jobs = pb.poll(
        pb.submit(pb.to_jsonl(oa_requests, tmp_path / "openai"), client=oa),
        client=oa,
        progress=False,
    )
    expected = pb.aggregate_df(oa_jobs, oa_requests, client=oa)
    assert (results["status"] == "succeeded").all()
    pd.testing.assert_frame_equal(_answers(results), _answers(expected))
    assert (results["position_key"] == results["ticker"]).all()


def test_the_environment_selects_gemini_for_a_gemini_model(
    local_server: Any, portfolio: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", local_server.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", root(local_server))
    c = pb.client(provider="gemini")
    assert isinstance(c, BatchClient) and c.backend.name == "gemini"
    assert str(c.base_url).rstrip("/") == root(local_server)
    requests = pb.build_requests(portfolio.head(6), model=MODEL)
    jobs = pb.poll(pb.submit(pb.to_jsonl(requests, tmp_path / "g")), progress=False)
    assert jobs["backend"].str.startswith("gemini").all()
    results = pb.aggregate_df(jobs, requests)
    assert (results["status"] == "succeeded").all()
