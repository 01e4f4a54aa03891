"""run_sync against the local server's synchronous endpoint, through the real openai SDK."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._cost import cost_usd
from portfolio_batch.errors import InputError


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv")).iloc[:6]


@pytest.mark.slow
def test_same_columns_and_answers_as_the_batch_path(
    local_server: Any, openai_client: Any, requests: pd.DataFrame, tmp_path: Path
) -> None:
    sync = pb.run_sync(requests, client=openai_client, concurrency=3, progress=False)
    manifest = pb.to_jsonl(requests, tmp_path / "shards")
    jobs = pb.poll(pb.submit(manifest, client=openai_client), client=openai_client, progress=False)
    batch = pb.aggregate_df(jobs, requests, client=openai_client)

    assert sync.columns.tolist() == batch.columns.tolist()
    assert sync.index.tolist() == requests.index.tolist()
    assert (sync["status"] == "succeeded").all() and (batch["status"] == "succeeded").all()
    # the rules engine is deterministic: the same request gives the same answer either way
    for col in (
        "risk_score",
        "risk_level",
        "drivers",
        "rationale",
        "prompt_tokens",
        "completion_tokens",
    ):
        assert sync[col].tolist() == batch[col].tolist(), col
    assert sync["batch_id"].isna().all() and batch["batch_id"].eq(jobs["batch_id"].iloc[0]).all()
    row = sync.iloc[0]
    assert row["cost_usd"] == pytest.approx(
        cost_usd(
            row["requested_model"],  # the local server's answers: priced as the model asked for
            row["prompt_tokens"],
            row["completion_tokens"],
            row["cached_tokens"],
            batch=False,
        )
    )
    assert sync["cost_usd"].sum() == pytest.approx(2 * batch["cost_usd"].sum())  # batch: half price
    assert sync.attrs["mode"] == "sync" and pb.summarize(sync).successes == 6


def test_rate_limits_are_retried_by_the_sdk(local_server: Any, requests: pd.DataFrame) -> None:
    local_server.configure(
        fault_rate_429=0.4, retry_after=0.01, fault_endpoints=["chat.completions"], seed=3
    )
    res = pb.run_sync(
        requests, client=local_server.client(max_retries=8), concurrency=2, progress=True
    )
    assert (res["status"] == "succeeded").all()


def test_api_errors_become_failed_rows(local_server: Any, requests: pd.DataFrame) -> None:
    local_server.configure(fault_rate_500=1.0, fault_endpoints=["chat.completions"])
    res = pb.run_sync(requests, client=local_server.client(max_retries=0), progress=False)
    assert res["status"].eq("failed").all() and res["http_status"].eq(500).all()
    assert res["error_code"].notna().all() and res["error_message"].notna().all()
    assert res["cost_usd"].eq(0).all()
    # a 5xx is worth another try
    assert pb.retry_failed(res, requests).index.tolist() == requests.index.tolist()


def test_unreachable_server_gives_connection_errors(requests: pd.DataFrame) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    res = pb.run_sync(requests.iloc[:2], client=client, progress=False)
    assert (
        res["error_code"].tolist() == ["connection_error"] * 2 and res["status"].eq("failed").all()
    )


def test_bad_requests_are_named(openai_client: Any, requests: pd.DataFrame) -> None:
    with pytest.raises(InputError, match="concurrency"):
        pb.run_sync(requests, client=openai_client, concurrency=0)
    odd = requests.copy()
    odd["url"] = "/v1/embeddings"
    with pytest.raises(InputError, match=requests.index[0]):
        pb.run_sync(odd.iloc[:1], client=openai_client, progress=False)
