"""pb.compare: what changed between two runs of a portfolio, keyed by the position key; and the
sample portfolio run twice with a changed input, end to end through the local server."""

from __future__ import annotations

import html
import re

import pandas as pd
import pytest
from test_charts import make_frames

import portfolio_batch as pb
from portfolio_batch._compare import CHANGES
from portfolio_batch.errors import InputError


@pytest.fixture
def before(testdata):
    results, _ = make_frames(testdata)
    return results


def _set(frame: pd.DataFrame, ticker: str, **values: object) -> None:
    row = frame.index[frame["ticker"] == ticker][0]
    for col, value in values.items():
        frame.at[row, col] = value


def test_each_kind_of_change_with_both_rationales(before):
    after = before.copy()
    # MSFT 37 medium -> 80 high; META 84 high -> 20 low; AMZN 10 -> 25, still low
    _set(after, "MSFT", risk_score=80, risk_level="high", rationale="now riskier")
    _set(after, "META", risk_score=20, risk_level="low")
    _set(after, "AMZN", risk_score=25)
    _set(after, "AAPL", weight=0.040)  # 6.9% -> 4.0%, score unchanged
    _set(after, "JPM", weight=0.034)  # +0.1 pp: under the weight threshold
    _set(after, "V", risk_score=float(after.loc[after["ticker"] == "V", "risk_score"].iloc[0]) + 5)
    after = after[after["ticker"] != "XOM"]  # dropped
    new = before[before["ticker"] == "LLY"].assign(ticker="NEWCO")
    after = pd.concat([after, new])
    _set(after, "CAT", status="succeeded", risk_score=50, risk_level="medium")  # failed before
    changes = pb.compare(before, after)
    got = dict(zip(changes["ticker"], changes["change"], strict=True))
    assert got == {
        "NEWCO": "new",
        "XOM": "dropped",
        "MSFT": "upgraded",
        "META": "downgraded",
        "AMZN": "moved",
        "CAT": "newly scored",
        "AAPL": "reweighted",
    }
    assert list(changes["change"]) == sorted(changes["change"], key=CHANGES.index)
    msft = changes.set_index("ticker").loc["MSFT"]
    assert msft["detail"] == "score 37 → 80 (+43); level medium → high"
    assert msft["previous_rationale"] == "fine" and msft["rationale"] == "now riskier"
    assert msft["score_change"] == 43 and not msft["reweighted"]
    aapl = changes.set_index("ticker").loc["AAPL"]
    assert aapl["detail"] == "weight 6.9% → 4.0%" and aapl["weight_change"] == pytest.approx(-0.029)
    assert changes.attrs["key"] == "ticker" and changes.attrs["threshold"] == 10.0
    # unchanged positions (and moves under the thresholds: V +5, JPM +0.1 pp) are left out
    assert "V" not in got and "JPM" not in got and len(changes) == 7


def test_thresholds_are_strict_and_zero_means_any_move(before):
    after = before.copy()
    amzn = float(before.loc[before["ticker"] == "AMZN", "risk_score"].iloc[0])
    _set(after, "AMZN", risk_score=amzn + 10)
    assert pb.compare(before, after, threshold=10).empty  # "more than" the threshold
    assert list(pb.compare(before, after, threshold=9.5)["ticker"]) == ["AMZN"]
    _set(after, "AMZN", risk_score=amzn + 1)
    assert list(pb.compare(before, after, threshold=0)["ticker"]) == ["AMZN"]
    _set(after, "AMZN", risk_score=amzn, weight=0.0491)
    assert pb.compare(before, after).empty
    assert list(pb.compare(before, after, weight_threshold=0)["ticker"]) == ["AMZN"]


def test_a_short_flipped_from_a_long_is_a_reweighting(before):
    after = before.copy()
    _set(after, "MSFT", weight=-0.066)
    changes = pb.compare(before, after)
    assert changes["ticker"].tolist() == ["MSFT"]
    assert changes["detail"].iloc[0] == "weight 6.6% → -6.6%"


def test_bad_inputs_say_what_to_pass(before):
    with pytest.raises(InputError, match="previous must be a results DataFrame"):
        pb.compare(before.to_dict(), before)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no 'status' column"):
        pb.compare(before.drop(columns=["status"]), before)
    twice = pd.concat([before, before.head(1)])
    with pytest.raises(
        InputError, match=r"current frame has ticker values more than once \('AAPL'"
    ):
        pb.compare(before, twice)
    with pytest.raises(InputError, match="no key column 'isin'"):
        pb.compare(before, before, key="isin")
    with pytest.raises(InputError, match="threshold=-1"):
        pb.compare(before, before, threshold=-1)


def _run(portfolio: pd.DataFrame, client, tmp_path, name: str):
    requests = pb.build_requests(portfolio, model="gpt-4o-mini")
    costs = pb.estimate_cost(requests)
    manifest = pb.to_jsonl(requests, tmp_path / name, costs=costs)
    jobs = pb.poll(pb.submit(manifest, client=client), client=client, progress=False)
    results = pb.aggregate_df(jobs, requests, client=client)
    return results, costs, jobs


def test_the_sample_portfolio_run_twice_names_exactly_the_changed_positions(
    openai_client, testdata, tmp_path
):
    """Done-when of issue 12: two weights and one score driver (volatility) changed; the second
    report's summary names exactly those positions, and pb.compare returns them."""
    first = pb.load_portfolio(testdata / "portfolio.csv")
    second = first.copy()
    second.loc[second["ticker"] == "AAPL", "weight"] = 0.040  # 6.9% -> 4.0%
    second.loc[second["ticker"] == "JNJ", "weight"] = 0.053  # 2.4% -> 5.3%
    second.loc[second["ticker"] == "XOM", "volatility"] = 0.55  # 27% -> 55%
    changed = {"AAPL", "JNJ", "XOM"}

    r1, c1, j1 = _run(first, openai_client, tmp_path, "one")
    pb.report(r1, costs=c1, path=tmp_path / "one.html", jobs=j1, portfolio="Sample")
    r2, c2, j2 = _run(second, openai_client, tmp_path, "two")
    doc = pb.report(
        r2, costs=c2, path=tmp_path / "two.html", jobs=j2, portfolio="Sample"
    ).read_text()

    changes = pb.compare(r1, r2)
    assert set(changes["ticker"]) == changed
    by = changes.set_index("ticker")
    assert by.loc["XOM", "change"] in ("moved", "upgraded") and by.loc["XOM", "score_change"] > 10
    assert by.loc["AAPL", "reweighted"] and by.loc["JNJ", "reweighted"]
    assert by.loc["AAPL", "previous_rationale"] != by.loc["AAPL", "rationale"]

    summary = re.search(r'<section id="summary">(.*?)</section>', doc, re.S).group(1)
    run1 = j1["run_id"].iloc[0]
    line = html.unescape(re.search(r'<p class="changes-line">(.*?)</p>', summary).group(1))
    assert line.startswith(f"3 positions changed since run {run1} (")
    named = set(re.findall(r"(\w+) \((?:new|dropped|upgraded|downgraded|moved|reweighted)\)", line))
    assert named == changed
    table = re.search(r'<table class="changes">(.*?)</table>', summary, re.S).group(1)
    rows = re.findall(r'<td class="key">(.*?)</td>', table)
    assert set(rows) == changed and len(rows) == 3
