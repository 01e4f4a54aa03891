"""Reasoning models (issue 11): o-series and gpt-5 requests carry ``max_completion_tokens`` (the
API refuses ``max_tokens`` on every line) and ``reasoning_effort``; reasoning tokens are a
results column and priced as output once, inside ``completion_tokens``; the estimate says its
output includes them. Figures are computed by hand from the prices given in each test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest
from rich.console import Console

import portfolio_batch as pb
from portfolio_batch._cost import price_for
from portfolio_batch._tokens import count_body_tokens
from portfolio_batch.cli._render import compare_table, estimate_table
from portfolio_batch.errors import InputError

# Batch prices by hand: half of these (the Batch API's discount), USD per million tokens.
PRICES = {
    "gpt-5-mini": {"input": 0.25, "output": 2.0, "cached_input": 0.025},
    "gpt-5.6-luna": {"input": 1.0, "output": 4.0, "cached_input": 0.1, "cache_write_input": 1.25},
}


@pytest.fixture
def portfolio(testdata: Path) -> pd.DataFrame:
    return pd.read_csv(testdata / "portfolio.csv").head(4)


@pytest.mark.parametrize("model", ["gpt-5-mini", "gpt-5", "gpt-5.1", "o3", "o4-mini", "o1"])
def test_reasoning_models_get_max_completion_tokens_and_never_max_tokens(
    portfolio: pd.DataFrame, model: str, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model=model, max_tokens=2000)
    for body in requests["body"]:
        assert "max_tokens" not in body
        assert body["max_completion_tokens"] == 2000
        assert "reasoning_effort" not in body  # None: the model's default
    # and so in the file the Batch API gets
    path = pb.to_jsonl(requests, tmp_path)["path"].iloc[0]
    for line in Path(path).read_bytes().splitlines():
        body = orjson.loads(line)["body"]
        assert "max_tokens" not in body and body["max_completion_tokens"] == 2000


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4", "gpt-3.5-turbo"])
def test_other_models_keep_max_tokens(portfolio: pd.DataFrame, model: str) -> None:
    body = pb.build_requests(portfolio, model=model).body.iloc[0]
    assert body["max_tokens"] == 400 and "max_completion_tokens" not in body


def test_reasoning_effort_is_sent_and_checked(portfolio: pd.DataFrame) -> None:
    requests = pb.build_requests(portfolio, model="gpt-5-mini", reasoning_effort="low")
    assert list(requests.body.iloc[0]) == [
        "model",
        "messages",
        "max_completion_tokens",
        "reasoning_effort",
        "response_format",
    ]
    assert requests.attrs["reasoning_effort"] == "low" and requests.attrs["reasoning"] is True
    with pytest.raises(InputError, match=r"reasoning_effort='low'.*'gpt-4o-mini' is not one"):
        pb.build_requests(portfolio, model="gpt-4o-mini", reasoning_effort="low")
    with pytest.raises(InputError, match=r"reasoning_effort='extreme' is not one of"):
        pb.build_requests(portfolio, model="gpt-5-mini", reasoning_effort="extreme")


def test_the_family_table_is_overridable(
    portfolio: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An Azure deployment named by the user: per call, or once in the table.
    body = pb.build_requests(portfolio, model="risk-o4", reasoning=True).body.iloc[0]
    assert body["max_completion_tokens"] == 400 and "max_tokens" not in body
    assert "max_tokens" in pb.build_requests(portfolio, model="risk-o4").body.iloc[0]
    monkeypatch.setitem(pb.MODEL_FAMILIES, "risk-o4", True)
    assert "max_completion_tokens" in pb.build_requests(portfolio, model="risk-o4").body.iloc[0]
    # and the other way: a family member the user wants sent as a plain chat model
    assert "max_tokens" in pb.build_requests(portfolio, model="o3", reasoning=False).body.iloc[0]


def test_a_gpt5_run_on_the_strict_local_server_succeeds_and_a_max_tokens_body_fails(
    openai_client: Any, portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio, model="gpt-5-mini", max_tokens=2000)
    jobs = pb.poll(
        pb.submit(pb.to_jsonl(requests, tmp_path / "a"), client=openai_client),
        client=openai_client,
        progress=False,
    )
    results = pb.aggregate_df(jobs, requests, client=openai_client)
    assert results["status"].eq("succeeded").all(), results[["status", "error_message"]]
    assert results["reasoning_tokens"].notna().all()
    # What build_requests avoids: the same body with max_tokens is OpenAI's 400 on every line.
    old = requests.copy()
    old["body"] = pd.Series(
        [
            {k: v for k, v in b.items() if k != "max_completion_tokens"} | {"max_tokens": 2000}
            for b in requests["body"]
        ],
        index=requests.index,
        dtype=object,
    )
    jobs = pb.poll(
        pb.submit(pb.to_jsonl(old, tmp_path / "b"), client=openai_client),
        client=openai_client,
        progress=False,
    )
    failed = pb.aggregate_df(jobs, old, client=openai_client)
    assert failed["status"].eq("failed").all() and failed["http_status"].eq(400).all()
    assert failed["error_message"].str.contains("max_completion_tokens").all()


def _chat_line(cid: str, content: str, usage: dict[str, Any], model: str) -> dict[str, Any]:
    return {
        "id": f"batch_req_{cid}",
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "request_id": "req_1",
            "body": {
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
        },
        "error": None,
    }


def _answer(ticker: str) -> str:
    return orjson.dumps(
        {
            "position_key": ticker,
            "risk_score": 40,
            "risk_level": "medium",
            "drivers": ["beta"],
            "rationale": "Fine.",
        }
    ).decode()


def _write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    return path


def test_reasoning_tokens_are_a_column_and_priced_once_as_output(
    portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(2), model="gpt-5-mini", max_tokens=2000)
    a, b = requests.index
    # OpenAI's usage: completion_tokens (500) already includes the 448 reasoning tokens;
    # prompt_tokens (1200) includes the 1024 cached ones.
    chat_usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 500,
        "total_tokens": 1700,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 448},
    }
    # The same figures in the Responses API's names.
    responses_usage = {
        "input_tokens": 1200,
        "output_tokens": 500,
        "total_tokens": 1700,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens_details": {"reasoning_tokens": 448},
    }
    out = _write(
        tmp_path / "out.jsonl",
        [
            _chat_line(a, _answer("AAPL"), chat_usage, "gpt-5-mini-2025-08-07"),
            _chat_line(b, _answer("MSFT"), responses_usage, "gpt-5-mini-2025-08-07"),
        ],
    )
    res = pb.aggregate_df(None, requests, output_files=[out], prices=PRICES)
    assert res["status"].eq("succeeded").all()
    assert res["reasoning_tokens"].tolist() == [448, 448]
    assert res["completion_tokens"].tolist() == [500, 500]
    # batch: input 0.125, cached 0.0125, output 1.0 per million; 448 is not added to the 500
    by_hand = ((1200 - 1024) * 0.125 + 1024 * 0.0125 + 500 * 1.0) / 1e6
    assert res["cost_usd"].tolist() == pytest.approx([by_hand, by_hand], rel=1e-12)
    summary = pb.summarize(res)
    assert summary.reasoning_tokens == 896 and summary.completion_tokens == 1000
    assert summary.actual_cost_usd == pytest.approx(2 * by_hand, rel=1e-12)
    assert ("reasoning_tokens", 896) in summary.to_frame().itertuples(index=False, name=None)


def test_cache_write_tokens_are_priced_at_their_own_rate(
    portfolio: pd.DataFrame, tmp_path: Path
) -> None:
    requests = pb.build_requests(portfolio.head(1), model="gpt-5.6-luna")
    usage = {
        "prompt_tokens": 18014,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 18011},
        "completion_tokens_details": {"reasoning_tokens": 60},
    }
    out = _write(
        tmp_path / "out.jsonl",
        [_chat_line(requests.index[0], _answer("AAPL"), usage, "gpt-5.6-luna")],
    )
    res = pb.aggregate_df(None, requests, output_files=[out], prices=PRICES)
    assert res["cache_write_tokens"].tolist() == [18011]
    # batch: input 0.5, cache write 0.625 (1.25x, in place of the input rate), output 2.0
    by_hand = ((18014 - 18011) * 0.5 + 18011 * 0.625 + 100 * 2.0) / 1e6
    assert res["cost_usd"].iloc[0] == pytest.approx(by_hand, rel=1e-12)
    # genai-prices has the write rate for GPT-5.6: 1.25x the input rate, batch and sync
    price = price_for("gpt-5.6-luna")
    assert price.cache_write_input == pytest.approx(1.25 * price.input)
    assert price.batch_cache_write_input == pytest.approx(1.25 * price.batch_input)
    # and none (the input rate, no extra fee) for an older model
    old = price_for("gpt-4o-mini")
    assert old.cache_write_input == old.input


def test_the_estimate_says_output_includes_reasoning(portfolio: pd.DataFrame) -> None:
    requests = pb.build_requests(portfolio, model="gpt-5-mini", max_tokens=2000)
    costs = pb.estimate_cost(requests, prices=PRICES)
    tokens = count_body_tokens(requests["body"].tolist(), model="gpt-5-mini")
    # max_completion_tokens bounds reasoning + answer: the "max" estimate is 2000 output each
    assert costs["output_tokens_est"].tolist() == [2000] * len(portfolio)
    assert costs["batch_cost_usd"].tolist() == pytest.approx(
        [(t * 0.125 + 2000 * 1.0) / 1e6 for t in tokens], rel=1e-12
    )
    assert costs.attrs["output_includes_reasoning"] is True
    assert "reasoning" in costs.attrs["notes"][0]
    plain = pb.estimate_cost(pb.build_requests(portfolio, model="gpt-4o-mini"))
    assert plain.attrs["output_includes_reasoning"] is False and plain.attrs["notes"] == []

    console = Console(record=True, width=200)
    console.print(estimate_table(costs))
    assert "Output tokens (est., max, reasoning included)" in console.export_text()
    comparison = pb.compare_models(requests, models=["gpt-4o-mini", "gpt-5-mini"])
    assert comparison["output_includes_reasoning"].tolist() == [False, True]
    console.print(compare_table(comparison))
    assert "Out tokens of gpt-5-mini include reasoning tokens" in console.export_text()
