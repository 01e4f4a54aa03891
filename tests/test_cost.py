"""estimate_cost / compare_models / check_budget / price_for / cost_usd against hand-computed cases."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from portfolio_batch import (
    BudgetExceededError,
    InputError,
    PricingError,
    build_requests,
    check_budget,
    compare_models,
    estimate_cost,
    load_portfolio,
)
from portfolio_batch._contract import COST_COLUMNS
from portfolio_batch._cost import cost_usd, price_for
from portfolio_batch._tokens import count_chat_tokens, response_format_tokens


@pytest.fixture
def requests(testdata: Path) -> pd.DataFrame:
    return build_requests(load_portfolio(testdata / "portfolio.csv"))


def _frame(bodies: list[dict]) -> pd.DataFrame:
    ids = [f"r{i}" for i in range(len(bodies))]
    return pd.DataFrame(
        {"custom_id": ids, "method": "POST", "url": "/v1/chat/completions", "body": bodies},
        index=pd.Index(ids, name="custom_id"),
    )


def test_costs_frame_shape(requests: pd.DataFrame) -> None:
    costs = estimate_cost(requests)
    assert list(costs.columns) == list(COST_COLUMNS)
    assert costs.index.name == "custom_id"
    assert costs.index.tolist() == requests.index.tolist()
    assert set(costs.model) == {"gpt-4o-mini"}
    assert costs.attrs["price_source"] == "genai-prices"
    assert costs.attrs["price_version"].startswith("genai-prices ")
    assert costs.attrs["output_tokens"] == "max"
    assert (costs.output_tokens_est == 400).all()


def test_input_tokens_are_cookbook_counts_plus_the_schema_estimate(requests: pd.DataFrame) -> None:
    costs = estimate_cost(requests)
    body = requests.body.iloc[7]
    expected = count_chat_tokens(body["messages"], model="gpt-4o-mini") + response_format_tokens(
        body["response_format"], model="gpt-4o-mini"
    )
    assert costs.input_tokens.iloc[7] == expected


def test_hand_computed_costs_with_a_price_dict() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Rate AAPL."},
    ]
    frame = _frame([{"model": "house-model", "messages": messages, "max_tokens": 100}])
    tokens = count_chat_tokens(messages, model="house-model")
    prices = {"house-model": {"input": 2.0, "output": 8.0}}
    costs = estimate_cost(frame, prices=prices)
    assert costs.input_tokens.iloc[0] == tokens
    # batch defaults to half the standard price
    assert costs.batch_cost_usd.iloc[0] == pytest.approx((tokens * 1.0 + 100 * 4.0) / 1e6)
    assert costs.sync_cost_usd.iloc[0] == pytest.approx((tokens * 2.0 + 100 * 8.0) / 1e6)
    assert costs.attrs["price_source"] == "override"
    explicit = {
        "house-model": {"input": 2.0, "output": 8.0, "batch_input": 0.5, "batch_output": 3.0}
    }
    costs = estimate_cost(frame, prices=explicit, output_tokens=10)
    assert costs.batch_cost_usd.iloc[0] == pytest.approx((tokens * 0.5 + 10 * 3.0) / 1e6)


def test_genai_prices_for_gpt_4o_mini(requests: pd.DataFrame) -> None:
    price = price_for("gpt-4o-mini")
    assert (price.input, price.output) == (0.15, 0.60)
    assert (price.batch_input, price.batch_output) == (0.075, 0.30)
    assert price_for("openai/gpt-4o-mini").batch_input == 0.075
    costs = estimate_cost(requests)
    tokens = int(costs.input_tokens.sum())
    assert costs.batch_cost_usd.sum() == pytest.approx((tokens * 0.075 + 40 * 400 * 0.30) / 1e6)
    assert costs.sync_cost_usd.sum() == pytest.approx((tokens * 0.15 + 40 * 400 * 0.60) / 1e6)


def test_output_token_modes(requests: pd.DataFrame) -> None:
    assert (estimate_cost(requests, output_tokens=120).output_tokens_est == 120).all()
    half = estimate_cost(requests, output_tokens=0.5)
    assert (half.output_tokens_est == 200).all()
    assert half.attrs["output_tokens"] == 0.5
    for bad in ("min", 1.5, -3, True):
        with pytest.raises(InputError, match="output_tokens="):
            estimate_cost(requests, output_tokens=bad)
    no_limit = _frame([{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(
        InputError, match=r"custom_id 'r0': its body has no max_tokens.*output_tokens="
    ):
        estimate_cost(no_limit)
    assert estimate_cost(no_limit, output_tokens=7).output_tokens_est.iloc[0] == 7


def test_unknown_model_says_how_to_pass_a_price(testdata: Path) -> None:
    requests = build_requests(
        load_portfolio(testdata / "portfolio.csv"), model="my-azure-deployment"
    )
    with pytest.raises(
        PricingError, match=r"No price is known for model 'my-azure-deployment'.*prices=\{"
    ):
        estimate_cost(requests)
    costs = estimate_cost(requests, prices={"my-azure-deployment": {"input": 0.15, "output": 0.6}})
    assert costs.batch_cost_usd.gt(0).all()


def test_prices_from_csv(requests: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text("model,input,output,batch_input,batch_output\ngpt-4o-mini,1,2,0.25,0.5\n")
    costs = estimate_cost(requests, prices=path)
    tokens = costs.input_tokens.to_numpy()
    assert np.allclose(costs.batch_cost_usd, (tokens * 0.25 + 400 * 0.5) / 1e6)
    assert costs.attrs["price_source"] == "override"
    assert costs.attrs["price_version"].startswith("prices.csv sha256:")
    bad = tmp_path / "bad.csv"
    bad.write_text("model,input,output\ngpt-4o-mini,1,2\nother,1,\n")
    with pytest.raises(PricingError, match=r"bad.csv, line 3: model 'other' has no 'output' price"):
        estimate_cost(requests, prices=bad)
    with pytest.raises(PricingError, match="no such CSV file"):
        estimate_cost(requests, prices=str(tmp_path / "missing.csv"))
    with pytest.raises(
        PricingError, match=r"price input='cheap' for model 'gpt-4o-mini' is not a number"
    ):
        estimate_cost(requests, prices={"gpt-4o-mini": {"input": "cheap", "output": 1}})
    with pytest.raises(PricingError, match=r"unknown price field\(s\) \['inptu'\]"):
        estimate_cost(requests, prices={"gpt-4o-mini": {"inptu": 1, "output": 1}})


def test_cost_usd_prices_actual_usage_with_cached_tokens() -> None:
    prices = {"m": {"input": 2.0, "output": 8.0, "cached_input": 0.5}}
    # batch: input 1.0, cached 0.25, output 4.0 per million
    assert cost_usd("m", 1000, 200, 400, prices=prices) == pytest.approx(
        (600 * 1.0 + 400 * 0.25 + 200 * 4.0) / 1e6
    )
    assert cost_usd("m", 1000, 200, 400, batch=False, prices=prices) == pytest.approx(
        (600 * 2.0 + 400 * 0.5 + 200 * 8.0) / 1e6
    )
    assert isinstance(cost_usd("m", 1, 1, prices=prices), float)
    many = cost_usd("m", pd.Series([1000, 0]), np.array([0, 1_000_000]), prices=prices)
    assert many.tolist() == pytest.approx([0.001, 4.0])
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.375)


def test_compare_models(requests: pd.DataFrame) -> None:
    table = compare_models(requests, models=["gpt-4o-mini", "gpt-4o", "gpt-4"])
    assert table.model.tolist() == ["gpt-4o-mini", "gpt-4o", "gpt-4"]
    assert (table.n_requests == 40).all()
    assert table.loc["gpt-4o-mini", "batch_cost_usd"] == pytest.approx(
        estimate_cost(requests).batch_cost_usd.sum()
    )
    assert table.loc["gpt-4o", "batch_cost_usd"] > table.loc["gpt-4o-mini", "batch_cost_usd"]
    assert np.allclose(table.savings_usd, table.sync_cost_usd - table.batch_cost_usd)
    assert np.allclose(table.batch_cost_usd, table.sync_cost_usd / 2)
    # gpt-4 counts with cl100k_base, gpt-4o with o200k_base: different token totals
    assert table.loc["gpt-4", "input_tokens"] != table.loc["gpt-4o", "input_tokens"]
    with pytest.raises(InputError, match="non-empty list"):
        compare_models(requests, models="gpt-4o")  # type: ignore[arg-type]


def test_check_budget(requests: pd.DataFrame) -> None:
    costs = estimate_cost(requests)
    total = float(costs.batch_cost_usd.sum())
    assert check_budget(costs, budget_usd=1.0) == pytest.approx(total)
    assert check_budget(0.5, budget_usd=None) == 0.5
    with pytest.raises(
        BudgetExceededError, match=r"over budget_usd=\$0\.0010; nothing was sent"
    ) as info:
        check_budget(costs, budget_usd=0.001)
    assert info.value.estimate_usd == pytest.approx(total)
    assert info.value.budget_usd == 0.001
    with pytest.raises(InputError, match="budget_usd=-1"):
        check_budget(costs, budget_usd=-1)


def test_requests_frame_is_not_mutated(requests: pd.DataFrame) -> None:
    before = requests.drop(columns="body").copy(deep=True)
    bodies = [repr(b) for b in requests.body]
    estimate_cost(requests, output_tokens=0.3)
    pd.testing.assert_frame_equal(requests.drop(columns="body"), before)
    assert [repr(b) for b in requests.body] == bodies


@pytest.mark.slow
def test_prices_50k_requests_in_under_3_seconds() -> None:
    n = 50_000
    df = pd.DataFrame(
        {
            "ticker": [f"T{i:05d}" for i in range(n)],
            "name": "Example Holdings Inc.",
            "sector": "Information Technology",
            "weight": 1 / n,
            "beta": 1.1,
            "volatility": 0.3,
            "notes": "Services growth offsets slower hardware upgrades",
        }
    )
    requests = build_requests(df)
    estimate_cost(requests.iloc[:1])  # load the vocabulary once, as any session would
    # CPU time, not wall time: other processes on a shared 2-core machine must not fail this.
    # estimate_cost is single-threaded, so on an idle machine the two are the same.
    start, wall = time.process_time(), time.perf_counter()
    costs = estimate_cost(requests)
    elapsed, wall = time.process_time() - start, time.perf_counter() - wall
    assert len(costs) == n and costs.input_tokens.gt(200).all()
    assert elapsed < 3.0, (
        f"estimate_cost took {elapsed:.2f} CPU s ({wall:.2f} s wall) for {n} requests"
    )


# Anthropic's and Google's list prices, USD per million tokens (standard; batch is half), as in
# genai-prices 0.2.3 and the providers' pricing pages:
HAIKU_45 = {"input": 1.00, "output": 5.00, "cache_read": 0.10}
SONNET_45 = {"input": 3.00, "output": 15.00}  # prompts up to 200k tokens
FLASH_25 = {"input": 0.30, "output": 2.50}
PRO_25 = {"input": 1.25, "output": 10.00}  # prompts up to 200k tokens


def test_claude_and_gemini_are_priced_at_their_providers_batch_rates() -> None:
    h = HAIKU_45
    assert cost_usd("claude-haiku-4-5", 1000, 200) == pytest.approx(
        (1000 * h["input"] + 200 * h["output"]) * 0.5 / 1e6
    )
    assert cost_usd("claude-haiku-4-5", 1000, 200, batch=False) == pytest.approx(
        (1000 * h["input"] + 200 * h["output"]) / 1e6
    )
    # 400 of the 1,000 prompt tokens read from the cache
    assert cost_usd("claude-haiku-4-5", 1000, 200, 400) == pytest.approx(
        (600 * h["input"] + 400 * h["cache_read"] + 200 * h["output"]) * 0.5 / 1e6
    )
    # a dated snapshot, as Anthropic's responses name it, has the same price
    assert cost_usd("claude-haiku-4-5-20251001", 1000, 200) == cost_usd(
        "claude-haiku-4-5", 1000, 200
    )
    s, f, p = SONNET_45, FLASH_25, PRO_25
    assert cost_usd("claude-sonnet-4-5", 1000, 200) == pytest.approx(
        (1000 * s["input"] + 200 * s["output"]) * 0.5 / 1e6
    )
    assert cost_usd("gemini-2.5-flash", 1000, 200) == pytest.approx(
        (1000 * f["input"] + 200 * f["output"]) * 0.5 / 1e6
    )
    assert cost_usd("models/gemini-2.5-flash", 1000, 200) == cost_usd("gemini-2.5-flash", 1000, 200)
    # per-million rates of tiered models are the ordinary tier's, not the >200k-token prompt's
    assert price_for("claude-sonnet-4-5").batch_input == s["input"] / 2
    assert price_for("gemini-2.5-pro").batch_input == p["input"] / 2
    assert price_for("claude-haiku-4-5").source == "genai-prices"


# Models genai-prices 0.2.3 prices at standard rates only (it answers them for
# processing="batch" too): claude-opus-4-1 $15/$75 per M, gemini-2.0-flash $0.10/$0.40.
OPUS_41 = {"input": 15.00, "output": 75.00, "cache_read": 1.50}
FLASH_20 = {"input": 0.10, "output": 0.40}


def test_a_model_without_batch_rates_in_the_table_is_priced_at_half_its_standard_ones() -> None:
    o, f = OPUS_41, FLASH_20
    # 1,000 prompt tokens and 200 answer tokens: (1000 x 15 + 200 x 75) / 1e6 = $0.030 sync,
    # $0.015 in a batch (not $0.030: that would show batch saving nothing)
    assert cost_usd("claude-opus-4-1", 1000, 200, batch=False) == pytest.approx(0.030)
    assert cost_usd("claude-opus-4-1", 1000, 200) == pytest.approx(0.015)
    # 400 cached: (600 x 15 + 400 x 1.5 + 200 x 75) / 2 / 1e6 = $0.0123
    assert cost_usd("claude-opus-4-1", 1000, 200, 400) == pytest.approx(0.0123)
    assert price_for("gemini-2.0-flash").batch_output == f["output"] / 2 == 0.20
    assert price_for("claude-opus-4-1").batch_input == o["input"] / 2
    assert "half its standard" in price_for("claude-opus-4-1").source
    # a model the table has batch rates for keeps them, and says so plainly
    assert price_for("gpt-4o-mini").source == "genai-prices"


def test_estimate_cost_of_a_claude_run_is_marked_approximate(requests: pd.DataFrame) -> None:
    portfolio = requests.drop(columns=["custom_id", "method", "url", "body"]).reset_index(drop=True)
    claude = build_requests(portfolio, model="claude-haiku-4-5")
    costs = estimate_cost(claude)
    h = HAIKU_45
    expected = (costs.input_tokens * h["input"] + 400 * h["output"]) * 0.5 / 1e6
    assert costs.batch_cost_usd.to_numpy() == pytest.approx(expected.to_numpy())
    assert costs.attrs["token_count"] == "approx"
    assert costs.attrs["token_count_error"] == "unmeasured"
    assert costs.attrs["token_count_method"] == "o200k_base"
    assert any("claude-haiku-4-5" in n and "approximate" in n for n in costs.attrs["notes"])
    # the count is o200k's: the same prompt tokens as gpt-4o-mini's exact count
    exact = estimate_cost(requests)
    assert exact.attrs["token_count"] == "exact" and "token_count_error" not in exact.attrs
    assert costs.input_tokens.tolist() == exact.input_tokens.tolist()


def test_aggregate_prices_a_claude_answer_from_its_returned_usage(tmp_path: Path) -> None:
    import orjson

    import portfolio_batch as pb

    claude = build_requests(
        pd.DataFrame({"ticker": ["AAPL"], "weight": [1.0]}), model="claude-haiku-4-5"
    )
    answer = {"position_key": "AAPL", "risk_score": 10, "risk_level": "low", "drivers": [],
              "rationale": "ok"}  # fmt: skip
    body = {
        "id": "msg_1", "object": "chat.completion", "model": "claude-haiku-4-5-20251001",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": orjson.dumps(answer).decode()}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                  "prompt_tokens_details": {"cached_tokens": 400}},
    }  # fmt: skip
    line = {"id": "r1", "custom_id": claude.index[0], "error": None,
            "response": {"status_code": 200, "request_id": "q1", "body": body}}  # fmt: skip
    path = tmp_path / "output.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    results = pb.aggregate_df(None, claude, output_files=[path])
    h = HAIKU_45
    assert results["cost_usd"].iloc[0] == pytest.approx(
        (600 * h["input"] + 400 * h["cache_read"] + 200 * h["output"]) * 0.5 / 1e6
    )
