"""Tests that pin money (issue 11): each behaviour the README promises about what is paid, with
the figures computed by hand here. Each test was seen to fail with its guarded line broken (see
CHANGELOG, issue 11). Prices: gpt-4o-mini from genai-prices, USD per million tokens: batch input
0.075, batch output 0.30; sync 0.15 and 0.60.

Also the Batch API behaviours of 2026 (shared/openai-batch-contract.md): an output file id that
appears a poll or two after ``completed``, ``error_file_id: ""``, the Batch's own ``usage`` in
both naming schemes, and the 2,000 creations an hour, paced rather than failed."""

from __future__ import annotations

import collections
import importlib
import itertools
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch import _create as create
from portfolio_batch import _tokens as tokens
from portfolio_batch._registry import open_registry
from portfolio_batch._submit import idempotency_key
from portfolio_batch.errors import BudgetExceededError, InputError
from portfolio_batch.local import serve

# the module (pb.poll is the function)
poll = importlib.import_module("portfolio_batch._poll")

BATCH_IN, BATCH_OUT, SYNC_IN, SYNC_OUT = 0.075, 0.30, 0.15, 0.60
# cached input distinct from input, for the figures that need it (batch: half of each)
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075}}


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pd.read_csv(testdata / "portfolio.csv").head(12))


@pytest.fixture
def manifest(requests: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    return pb.to_jsonl(requests, tmp_path / "jsonl", max_requests=4)


class Counting(httpx2.BaseTransport):
    """Forwards every request and counts them by (method, path)."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.seen: collections.Counter[tuple[str, str]] = collections.Counter()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.seen[(request.method, request.url.path.removeprefix("/v1"))] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _counting(local_server: Any) -> tuple[openai.OpenAI, Counting]:
    transport = Counting()
    client = openai.OpenAI(
        base_url=str(local_server.base_url),
        api_key="test",
        http_client=httpx2.Client(transport=transport),
    )
    return client, transport


def _run(client: Any, frame: pd.DataFrame, out: Path, **submit: Any) -> pd.DataFrame:
    jobs = pb.submit(pb.to_jsonl(frame, out), client=client, **submit)
    return pb.poll(jobs, client=client, progress=False, timeout=120)


def _live(client: Any) -> list[Any]:
    return [b for b in client.batches.list(limit=100) if b.status not in ("cancelled", "failed")]


# -- estimate, budget, actual cost: batch prices --------------------------------------------------
def test_estimate_budget_and_shard_estimates_are_at_batch_prices(
    openai_client: Any, requests: pd.DataFrame, manifest: pd.DataFrame
) -> None:
    costs = pb.estimate_cost(requests)
    n_in = costs["input_tokens"].tolist()
    assert costs["batch_cost_usd"].tolist() == pytest.approx(
        [(t * BATCH_IN + 400 * BATCH_OUT) / 1e6 for t in n_in], rel=1e-12
    )
    assert costs["sync_cost_usd"].tolist() == pytest.approx(
        [(t * SYNC_IN + 400 * SYNC_OUT) / 1e6 for t in n_in], rel=1e-12
    )
    batch_total = sum((t * BATCH_IN + 400 * BATCH_OUT) / 1e6 for t in n_in)
    sync_total = 2 * batch_total
    assert pb.check_budget(costs, budget_usd=(batch_total + sync_total) / 2) == pytest.approx(
        batch_total
    )
    with pytest.raises(BudgetExceededError):
        pb.check_budget(costs, budget_usd=batch_total * 0.99)

    shard_est = [
        (t * BATCH_IN + m * BATCH_OUT) / 1e6
        for t, m in zip(manifest["est_input_tokens"], manifest["max_output_tokens"], strict=True)
    ]
    with pytest.raises(BudgetExceededError) as over:
        pb.submit(manifest, client=openai_client, budget_usd=sum(shard_est) * 0.99)
    assert over.value.estimate_usd == pytest.approx(sum(shard_est), rel=1e-12)
    assert not list(openai_client.batches.list())  # refused before anything was sent
    # Just above the batch estimate (half the sync one): accepted, each shard priced by hand.
    jobs = pb.submit(manifest, client=openai_client, budget_usd=sum(shard_est) * 1.01)
    assert jobs["est_cost_usd"].tolist() == pytest.approx(shard_est, rel=1e-12)


def test_poll_records_the_actual_cost_of_the_batch_usage_at_batch_prices(
    local_server: Any, openai_client: Any, manifest: pd.DataFrame
) -> None:
    # The Batch object's usage in both naming schemes, the chat-style names zeroed (as OpenAI's).
    local_server.configure(batch_usage_chat_fields=True)
    final = pb.poll(pb.submit(manifest, client=openai_client), client=openai_client, progress=False)
    with open_registry() as reg:
        total = 0.0
        for batch_id in final["batch_id"]:
            usage = openai_client.batches.retrieve(batch_id).usage
            assert usage.input_tokens > 0 and usage.model_extra["prompt_tokens"] == 0
            cached = usage.input_tokens_details.cached_tokens
            by_hand = (
                (usage.input_tokens - cached) * BATCH_IN + cached * BATCH_IN
            ) / 1e6 + usage.output_tokens * BATCH_OUT / 1e6
            stored = reg.batch(batch_id)
            assert stored is not None
            assert stored["actual_cost_usd"] == pytest.approx(by_hand, rel=1e-12)
            assert (stored["input_tokens"], stored["output_tokens"]) == (
                usage.input_tokens,
                usage.output_tokens,
            )
            total += by_hand
        run = reg.run(final["run_id"].iloc[0])
        assert run is not None and run["actual_cost_usd"] == pytest.approx(total)


def test_batch_usage_reads_either_naming_scheme() -> None:
    responses = {"input_tokens": 1000, "output_tokens": 300, "prompt_tokens": 0}
    chat = {
        "prompt_tokens": 1000,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 200},
        "completion_tokens_details": {"reasoning_tokens": 250},
    }
    for usage, cached, thought in ((responses, 0, 0), (chat, 200, 250)):
        got = poll.batch_usage({"usage": usage})
        assert got is not None
        assert (got["input_tokens"], got["output_tokens"]) == (1000, 300)
        assert got["input_tokens_details"]["cached_tokens"] == cached
        assert got["output_tokens_details"]["reasoning_tokens"] == thought
        # reasoning is inside the 300 output tokens: priced once
        assert poll._actual_cost(got, "gpt-4o-mini", prices=PRICES) == pytest.approx(
            ((1000 - cached) * 0.075 + cached * 0.0375 + 300 * 0.30) / 1e6, rel=1e-12
        )
    assert poll.batch_usage({"usage": {"input_tokens": 0, "prompt_tokens": 0}}) is None
    assert poll.batch_usage({"usage": None}) is None


def test_summarize_compares_with_the_estimate_of_the_same_rows_and_mode(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    costs = pb.estimate_cost(requests)
    some = requests.iloc[:3]
    lines = [
        _ok(cid, key, pt=300, ct=50) for cid, key in zip(some.index, some["ticker"], strict=True)
    ]
    results = pb.aggregate_df(None, some, output_files=[_write(tmp_path / "o.jsonl", lines)])
    n_in = costs.loc[some.index, "input_tokens"].tolist()
    batch_est = sum((t * BATCH_IN + 400 * BATCH_OUT) / 1e6 for t in n_in)
    assert pb.summarize(results, costs=costs).est_cost_usd == pytest.approx(batch_est, rel=1e-12)
    assert pb.summarize(results, costs=costs).actual_cost_usd == pytest.approx(
        3 * (300 * BATCH_IN + 50 * BATCH_OUT) / 1e6, rel=1e-12
    )
    sync = results.copy()
    sync.attrs = {**results.attrs, "mode": "sync"}
    sync_est = sum((t * SYNC_IN + 400 * SYNC_OUT) / 1e6 for t in n_in)
    assert pb.summarize(sync, costs=costs).est_cost_usd == pytest.approx(sync_est, rel=1e-12)


# -- never pay twice ------------------------------------------------------------------------------
def test_cancel_takes_queued_shards_out_of_the_queue(
    local_server: Any, openai_client: Any, manifest: pd.DataFrame
) -> None:
    local_server.configure(request_delay=0.3)
    # Room for one shard at a time: shards 1 and 2 wait, queued, for shard 0 to finish.
    jobs = pb.submit(
        manifest,
        client=openai_client,
        max_enqueued_tokens=int(manifest["est_input_tokens"].max()),
    )
    assert jobs["status"].tolist()[1:] == ["queued", "queued"]
    cancelled = pb.cancel(jobs, client=openai_client)
    assert cancelled["status"].tolist()[1:] == ["cancelled", "cancelled"]
    final = pb.poll(cancelled, client=openai_client, progress=False, raise_on_failed=False)
    assert final["status"].isin(["cancelled", "completed"]).all()
    assert len(list(openai_client.batches.list())) == 1  # the queued ones were never created


def test_the_same_file_on_two_backends_makes_a_batch_on_each(
    local_server: Any, openai_client: Any, manifest: pd.DataFrame, tmp_path: Path
) -> None:
    sha, endpoint = manifest["sha256"].iloc[0], "/v1/chat/completions"
    assert idempotency_key(sha, endpoint, "gpt-4o-mini", "a") != idempotency_key(
        sha, endpoint, "gpt-4o-mini", "b"
    )
    first = pb.submit(manifest, client=openai_client)
    with serve(engine="rules", data_dir=tmp_path / "other", any_key=True) as other_server:
        other = other_server.client()
        second = pb.submit(manifest, client=other)
        assert set(second["batch_id"]).isdisjoint(first["batch_id"])
        for batch_id in second["batch_id"]:
            assert other.batches.retrieve(batch_id).status != "failed"
        assert len(list(other.batches.list())) == len(manifest)
    assert len(list(openai_client.batches.list())) == len(manifest)


def test_a_second_submit_is_answered_by_the_registry_without_asking_the_server(
    local_server: Any, manifest: pd.DataFrame
) -> None:
    client, transport = _counting(local_server)
    first = pb.submit(manifest, client=client)
    transport.seen.clear()
    again = pb.submit(manifest, client=client)
    assert again["batch_id"].tolist() == first["batch_id"].tolist()
    assert transport.seen == {}  # no listing, no upload, no create: the registry knew


def test_a_shard_created_meanwhile_is_not_looked_up_or_created_again(
    local_server: Any, manifest: pd.DataFrame
) -> None:
    client, transport = _counting(local_server)
    local_server.configure(request_delay=0.3)
    jobs = pb.submit(
        manifest, client=client, max_enqueued_tokens=int(manifest["est_input_tokens"].max())
    )
    run_id = jobs["run_id"].iloc[0]
    with open_registry() as reg:
        stale = reg.shard(run_id, 1)  # queued, as another caller saw it before creating it
        assert stale is not None and stale["status"] == "queued"
        made = create.create_shard_batch(reg, client, stale)
        assert made is not None
        transport.seen.clear()
        assert create.create_shard_batch(reg, client, stale) is None  # the registry says done
        assert transport.seen == {}
    assert len(list(local_server.client().batches.list())) == 2


def test_a_concat_of_two_retry_frames_makes_new_batches_never_the_old_ones(
    openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    a, b = requests.iloc[:4], requests.iloc[4:8]
    jobs_a, jobs_b = _run(openai_client, a, tmp_path / "a"), _run(openai_client, b, tmp_path / "b")
    res_a, res_b = (
        pb.aggregate_df(jobs_a, a, client=openai_client),
        pb.aggregate_df(jobs_b, b, client=openai_client),
    )
    res_a["status"] = res_b["status"] = "invalid_output"  # every answer judged unusable
    again = pd.concat([pb.retry_failed(res_a, a), pb.retry_failed(res_b, b)])
    assert (
        again["retry_of"].tolist()
        == [jobs_a["batch_id"].iloc[0]] * 4 + [jobs_b["batch_id"].iloc[0]] * 4
    )
    manifest = pb.to_jsonl(again, tmp_path / "c", max_requests=4)
    # byte-identical to the first two files: the case where the old batches would come back
    assert manifest["sha256"].tolist() == [jobs_a["sha256"].iloc[0], jobs_b["sha256"].iloc[0]]
    old = {jobs_a["batch_id"].iloc[0], jobs_b["batch_id"].iloc[0]}
    jobs = pb.submit(manifest, client=openai_client)
    assert old.isdisjoint(jobs["batch_id"]) and jobs["batch_id"].nunique() == 2
    # running the same cell again reuses the new batches: no third payment
    assert pb.submit(manifest, client=openai_client)["batch_id"].tolist() == (
        jobs["batch_id"].tolist()
    )
    assert len(list(openai_client.batches.list())) == 4
    # the retry column is not an input column of the results
    assert (
        "retry_of"
        not in pb.aggregate_df(
            pb.poll(jobs, client=openai_client, progress=False), again, client=openai_client
        ).columns
    )


def test_exclude_batches_is_the_explicit_way_to_resend(
    openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    small = requests.iloc[:4]
    first = _run(openai_client, small, tmp_path / "a")
    manifest = pb.to_jsonl(small, tmp_path / "b")
    assert pb.submit(manifest, client=openai_client)["batch_id"].tolist() == (
        first["batch_id"].tolist()
    )
    again = pb.submit(manifest, client=openai_client, exclude_batches=first["batch_id"])
    assert again["batch_id"].iloc[0] != first["batch_id"].iloc[0]
    with pytest.raises(InputError, match="exclude_batches='batch_x' is one string"):
        pb.submit(manifest, client=openai_client, exclude_batches="batch_x")


# -- results: what was paid and what can be resent ------------------------------------------------
def _ok(
    cid: str, key: str, *, pt: int = 200, ct: int = 60, content: Any = "default"
) -> dict[str, Any]:
    if content == "default":
        content = orjson.dumps(
            {
                "position_key": key,
                "risk_score": 50,
                "risk_level": "medium",
                "drivers": ["beta"],
                "rationale": "Fine.",
            }
        ).decode()
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
            },
        },
        "error": None,
    }


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return path


def test_retry_failed_picks_failures_by_http_status_and_by_error_code(
    requests: pd.DataFrame,
) -> None:
    ids = requests.index[:6]
    results = pd.DataFrame(
        {
            "status": ["failed"] * 5 + ["succeeded"],
            "http_status": pd.array([503, 429, 408, None, 400, 200], dtype="Int64"),
            # 503 with a code nobody lists: picked for its status; request_timeout has no status
            "error_code": [
                "odd_code",
                None,
                None,
                "request_timeout",
                "context_length_exceeded",
                None,
            ],
        },
        index=ids,
    )
    picked = pb.retry_failed(results, requests).index.tolist()
    assert picked == list(ids[:4])


def test_a_refusal_is_reported_as_a_refusal_with_its_text(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    two = requests.iloc[:2]
    refused = _ok(two.index[0], "AAPL", content=None)
    refused["response"]["body"]["choices"][0]["message"]["refusal"] = "I can't help with that."
    empty = _ok(two.index[1], "MSFT", content=None)
    res = pb.aggregate_df(None, two, output_files=[_write(tmp_path / "o.jsonl", [refused, empty])])
    assert res["status"].tolist() == ["invalid_output", "invalid_output"]
    assert res["error_code"].tolist() == ["refusal", "no_content"]
    assert "I can't help with that." in res["error_message"].iloc[0]
    # both were paid for
    assert res["cost_usd"].tolist() == pytest.approx([(200 * BATCH_IN + 60 * BATCH_OUT) / 1e6] * 2)


def test_responses_api_answers_are_decoded_and_priced(
    requests: pd.DataFrame, tmp_path: Path
) -> None:
    one = requests.iloc[:1]
    answer = {
        "position_key": "AAPL",
        "risk_score": 35,
        "risk_level": "medium",
        "drivers": ["services"],
        "rationale": "Steady.",
    }
    line = {
        "id": "batch_req_1",
        "custom_id": one.index[0],
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "object": "response",
                "status": "completed",
                "model": "gpt-4o-mini",
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": orjson.dumps(answer).decode()}],
                    }
                ],
                "usage": {
                    "input_tokens": 300,
                    "output_tokens": 50,
                    "input_tokens_details": {"cached_tokens": 100},
                    "output_tokens_details": {"reasoning_tokens": 0},
                },
            },
        },
        "error": None,
    }
    res = pb.aggregate_df(
        None, one, output_files=[_write(tmp_path / "o.jsonl", [line])], prices=PRICES
    )
    row = res.iloc[0]
    assert (row["status"], row["finish_reason"], row["risk_score"]) == ("succeeded", "stop", 35)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (300, 50, 100)
    assert row["cost_usd"] == pytest.approx((200 * 0.075 + 100 * 0.0375 + 50 * 0.30) / 1e6)


# -- token counts -------------------------------------------------------------------------------
def test_the_estimate_counts_the_schema_with_its_frame(requests: pd.DataFrame) -> None:
    body = requests["body"].iloc[0]
    enc = tokens.encoding_for_model("gpt-4o-mini")
    spec = body["response_format"]["json_schema"]
    by_hand = (
        3  # reply priming
        + sum(
            3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in body["messages"]
        )
        + len(enc.encode(orjson.dumps(spec["schema"]).decode()))
        + len(enc.encode(spec["name"]))
        + 10  # the "# Response Formats" frame
    )
    assert pb.estimate_cost(requests.iloc[:1])["input_tokens"].iloc[0] == by_hand


def test_counts_match_the_prompt_tokens_openai_billed(testdata: Path) -> None:
    # Real prompt_tokens from OpenAI's own runs (testdata/tokens/billed_prompt_tokens.json, with
    # its sources), within the tolerance it states.
    data = json.loads((testdata / "tokens" / "billed_prompt_tokens.json").read_text())
    tolerance = data["tolerance_tokens"]
    for record in data["billed"]:
        messages = data["messages"][record["messages"]]
        counted = tokens.count_chat_tokens(messages, model=record["model"])
        assert abs(counted - record["prompt_tokens"]) <= tolerance, record
        body = {"model": record["model"], "messages": messages}
        costs = pb.estimate_cost(
            pd.DataFrame({"custom_id": ["x"], "body": [body]}),
            output_tokens=0,
            prices={record["model"]: {"input": 1, "output": 1}},
        )
        assert abs(int(costs["input_tokens"].iloc[0]) - record["prompt_tokens"]) <= tolerance


def test_a_vocabulary_whose_sha256_differs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAI's published digest of cl100k_base; the shipped file must match it.
    assert tokens._SHA256["cl100k_base"].startswith("223921b76ee99bde")
    monkeypatch.setitem(tokens._SHA256, "cl100k_base", "0" * 64)
    tokens._encoding.cache_clear()  # the encoding is built (and checked) once per process
    with pytest.raises(RuntimeError, match="reinstall it with: pip install --force-reinstall"):
        tokens.encoding_for_model("gpt-4")


def test_the_poll_interval_grows(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    # 0.05 s first on loopback, then x1.5 up to 1 s: about 9 checks in the ~2.4 s this batch
    # takes, where a fixed 0.05 s would make 30 or more.
    local_server.configure(request_delay=0.6)
    times: list[float] = []
    jobs = pb.submit(pb.to_jsonl(requests.iloc[:4], tmp_path), client=openai_client)
    pb.poll(
        jobs,
        client=openai_client,
        progress=False,
        on_update=lambda _: times.append(time.monotonic()),
    )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) <= 16, gaps
    assert max(gaps) > 0.5 and gaps[-2] > 3 * gaps[0], gaps


# -- the Batch API of 2026 ------------------------------------------------------------------------
def test_an_output_file_named_a_few_polls_after_completed_is_waited_for(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path, caplog: Any
) -> None:
    local_server.configure(output_file_lag_polls=2)
    small = requests.iloc[:4]
    with caplog.at_level(logging.INFO, logger="portfolio_batch"):
        jobs = _run(openai_client, small, tmp_path)
    assert jobs["status"].tolist() == ["completed"] and jobs["output_file_id"].iloc[0]
    assert "no output file id yet" in caplog.text
    res = pb.aggregate_df(jobs, small, client=openai_client)
    assert res["status"].eq("succeeded").all()


def test_a_missing_output_file_is_concluded_after_a_bounded_number_of_polls(
    local_server: Any,
    openai_client: Any,
    requests: pd.DataFrame,
    tmp_path: Path,
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(poll, "OUTPUT_LAG_POLLS", 1)
    local_server.configure(output_file_lag_polls=2)
    small = requests.iloc[:4].copy()
    # one line the server refuses (a 400 in the error file): the batch has an error file at once
    bad = small.index[0]
    small["body"] = pd.Series(
        [{**b, "temperature": "hot"} if cid == bad else b for cid, b in small["body"].items()],
        index=small.index,
        dtype=object,
    )
    with caplog.at_level(logging.INFO, logger="portfolio_batch"):
        jobs = _run(openai_client, small, tmp_path)
    assert jobs["status"].tolist() == ["completed"] and jobs["output_file_id"].iloc[0] is None
    assert jobs["error_file_id"].iloc[0] is not None
    assert "still has no output file after 1 polls: concluding it has none" in caplog.text
    # aggregate_df looks once more for the output file (named by now), error file or not
    res = pb.aggregate_df(jobs, small, client=openai_client)
    assert res.loc[bad, "status"] == "failed" and res.loc[bad, "http_status"] == 400
    assert res.drop(index=bad)["status"].eq("succeeded").all()


def test_an_empty_error_file_id_means_none(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    local_server.configure(empty_error_file_id=True)
    small = requests.iloc[:4]
    jobs = _run(openai_client, small, tmp_path)
    assert openai_client.batches.retrieve(jobs["batch_id"].iloc[0]).error_file_id == ""
    assert jobs["error_file_id"].tolist() == [None]
    res = pb.aggregate_df(jobs, small, client=openai_client)
    assert res["status"].eq("succeeded").all()
    assert [f["kind"] for f in res.attrs["files"]] == ["output"]


class SimulatedHour:
    """A clock and sleep for the creation pacing that move the server's clock too: a wait of
    an hour takes no time."""

    def __init__(self, server: Any) -> None:
        self.server, self.offset = server, 0.0
        self.waits: list[float] = []
        self.lock = threading.Lock()

    def time(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.waits.append(seconds)
            self.offset += seconds
            self.server.configure(clock_offset=self.offset)


def test_creations_wait_when_the_hour_holds_the_most_allowed(
    local_server: Any,
    openai_client: Any,
    manifest: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
) -> None:
    hour = SimulatedHour(local_server)
    monkeypatch.setattr(create, "MAX_BATCHES_PER_HOUR", 2)
    monkeypatch.setattr(create, "_clock", hour.time)
    monkeypatch.setattr(create, "_sleep", hour.sleep)
    local_server.configure(max_batches_per_hour=None)
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        jobs = pb.submit(manifest, client=openai_client)
    # the third waited for the first two to be an hour old, then was created
    assert hour.waits == [pytest.approx(3601, abs=3)]
    assert "2 batches were created in the last hour, the most allowed (at most 2 an hour)" in (
        caplog.text
    )
    assert jobs["batch_id"].notna().all() and len(_live(openai_client)) == 3


def test_the_servers_creation_limit_is_waited_out_not_failed(
    local_server: Any,
    openai_client: Any,
    manifest: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
) -> None:
    hour = SimulatedHour(local_server)
    monkeypatch.setattr(create, "_sleep", hour.sleep)
    local_server.configure(max_batches_per_hour=2)
    with caplog.at_level(logging.WARNING, logger="portfolio_batch"):
        jobs = pb.submit(manifest, client=openai_client)
    # OpenAI's 429 "try again in 3600 seconds" for the third: waited, looked again, created
    assert len(hour.waits) == 1 and hour.waits[0] == pytest.approx(3600, abs=2)
    assert "rate-limiting (429; OpenAI allows at most 2000 batch creations an hour)" in caplog.text
    assert jobs["batch_id"].notna().all() and len(_live(openai_client)) == 3


class RefuseCreates(httpx2.BaseTransport):
    """Answers the first ``n`` batch-create POSTs with OpenAI's 429 (nothing is created), then
    forwards everything."""

    def __init__(self, n: int) -> None:
        self.inner, self.left = httpx2.HTTPTransport(), n

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/batches") and self.left:
            self.left -= 1
            error = {"message": "Rate limit reached for batch creations", "type": "requests"}
            return httpx2.Response(
                429, headers={"retry-after": "30"}, json={"error": error}, request=request
            )
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_more_429s_than_retries_are_waited_out_not_counted_as_failures(
    local_server: Any, manifest: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(create, "_sleep", waits.append)
    client = openai.OpenAI(
        base_url=str(local_server.base_url),
        api_key="test",
        max_retries=2,  # three attempts for a failure; the six 429s are not failures
        http_client=httpx2.Client(transport=RefuseCreates(6)),
    )
    jobs = pb.submit(manifest.iloc[:1], client=client)
    assert waits == [30.0] * 6
    assert jobs["batch_id"].notna().all() and len(_live(local_server.client())) == 1
