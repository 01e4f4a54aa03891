"""report(): one self-contained, escaped HTML file with the summary, positions by risk, the error
table, embedded charts and the run's metadata."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd
import pytest
from test_charts import BAD, make_frames

from portfolio_batch.errors import InputError
from portfolio_batch.report import report
from tests import readme


@pytest.fixture
def frames(testdata):
    return make_frames(testdata)


@pytest.fixture
def jobs():
    return pd.DataFrame(
        {
            "run_id": ["run_7"] * 2,
            "shard": [0, 1],
            "batch_id": ["batch_abc", "batch_def"],
            "status": ["completed", "completed"],
            "n_requests": [20, 20],
            "completed": [19, 18],
            "failed": [1, 2],
            "est_cost_usd": [0.0024, 0.0024],
            "created_at": [1_700_000_000, 1_700_000_060],
            "model": "gpt-4.1-mini",
            "endpoint": "/v1/chat/completions",
            "backend": "local",
        }
    )


def table(doc: str, css: str) -> list[list[str]]:
    """The body rows of <table class=css> as lists of unescaped cell texts."""
    m = re.search(rf'<table class="{css}">(.*?)</table>', doc, re.S)
    assert m, f"no table {css}"
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)[1:]
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)] for r in rows]


def header(doc: str, css: str) -> list[str]:
    m = re.search(rf'<table class="{css}"><thead><tr>(.*?)</tr>', doc, re.S)
    assert m
    return re.findall(r"<th>(.*?)</th>", m.group(1))


def test_report_is_one_self_contained_file_with_charts(frames, jobs, tmp_path):
    results, costs = frames
    before = (results.copy(), costs.copy(), jobs.copy())
    out = report(results, costs, path=tmp_path / "out" / "report.html", jobs=jobs)
    assert out == tmp_path / "out" / "report.html"
    doc = out.read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    # nothing fetched from elsewhere
    assert "<script" not in doc and "<link" not in doc
    assert not re.search(r'src="(?!data:)', doc)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', doc)
    assert len(images) == 6
    for img in images:
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    for title in (
        "Request status",
        "Risk by position",
        "Risk vs weight",
        "Risk by sector",
        "Tokens per request",
        "Cost",
    ):
        assert f'alt="{title}"' in doc
    assert list(tmp_path.joinpath("out").iterdir()) == [out]  # no temp file left behind
    for got, want in zip((results, costs, jobs), before, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_positions_sorted_by_risk_with_unscored_last(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs, path=tmp_path / "r.html", charts=False).read_text()
    cols = header(doc, "positions")
    assert cols[:2] == ["ticker", "name"] and "rationale" in cols and "status" in cols
    rows = table(doc, "positions")
    assert len(rows) == 40
    scores = [r[cols.index("risk_score")] for r in rows]
    scored = [int(s) for s in scores if s]
    assert scored == sorted(scored, reverse=True) and len(scored) == 37
    assert scores[-3:] == ["", "", ""]
    assert {r[0] for r in rows[-3:]} == set(BAD)
    top = results.loc[results["risk_score"].astype(float).idxmax()]
    assert rows[0][0] == top["ticker"]
    assert rows[0][cols.index("weight")] == f"{top['weight']:.2%}"
    assert rows[0][cols.index("drivers")] == "beta; valuation"


def test_error_table_lists_every_row_that_did_not_succeed(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs, path=tmp_path / "r.html", charts=False).read_text()
    assert "<h2>Errors (3)</h2>" in doc
    cols = header(doc, "errors")
    rows = table(doc, "errors")
    got = {r[0]: (r[cols.index("status")], r[cols.index("error_code")]) for r in rows}
    assert got == {t: (s, "server_error") for t, s in BAD.items()}


def test_all_succeeded_says_so(frames, tmp_path):
    results, costs = frames
    ok = results[results["status"] == "succeeded"]
    doc = report(ok, costs.loc[ok.index], path=tmp_path / "r.html", charts=False).read_text()
    assert "<h2>Errors (0)</h2><p>Every request succeeded.</p>" in doc


def test_summary_and_run_metadata(frames, jobs, tmp_path):
    results, costs = frames
    doc = report(
        results, costs, path=tmp_path / "r.html", jobs=jobs, title="Q3 review", charts=False
    ).read_text()
    meta = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", doc))
    assert "<title>Q3 review</title>" in doc
    assert meta["positions"] == "40" and meta["succeeded"] == "37"
    assert meta["status failed"] == "1" and meta["status missing"] == "1"
    assert meta["model"] == "gpt-4.1-mini"
    assert meta["prompt version"] == "0a1b2c3d"
    assert meta["batch ids"] == "batch_abc, batch_def"
    assert meta["run id"] == "run_7"
    assert meta["price source"] == "genai-prices 0.2.3"
    assert meta["first batch created"] == "2023-11-14 22:13:20 UTC"
    assert meta["last batch created"] == "2023-11-14 22:14:20 UTC"
    assert meta["actual cost"] == f"${37 * 0.0001:,.6f}"
    assert meta["estimated batch cost"] == f"${40 * 0.00012:,.6f}"
    assert meta["same requests, synchronous"] == f"${40 * 0.00024:,.6f}"
    ok = results["status"] == "succeeded"
    w, s = results.loc[ok, "weight"], results.loc[ok, "risk_score"].astype(float)
    assert meta["weight-averaged risk score"] == f"{(w * s).sum() / w.sum():.1f}"
    assert re.search(r"report generated</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", doc)
    # the summarize() table of the aggregate stage is included
    assert "summarize()" in doc and "Failures by status and code" in doc


def test_llm_text_is_escaped_and_keys_never_written(frames, tmp_path, monkeypatch):
    key = "sk-proj-" + "THISISNOTAREALKEY0123456789"  # split: no key-shaped literal
    monkeypatch.setenv("OPENAI_API_KEY", key)
    results, costs = frames
    results = results.copy()
    first = results.index[0]
    results.loc[first, "rationale"] = f"<script>alert('x')</script> & my key is {key}"
    results.at[first, "drivers"] = ["<img src=x onerror=alert(1)>"]
    results.loc[results.index[-1], "error_message"] = "<b>bad</b> request"
    doc = report(
        results, costs, path=tmp_path / "r.html", title="<i>t</i>", charts=False
    ).read_text()
    assert "<script" not in doc and "<img src=x" not in doc and "<b>bad</b>" not in doc
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; my key is [redacted]" in doc
    assert "&lt;img src=x onerror=alert(1)&gt;" in doc
    assert "&lt;b&gt;bad&lt;/b&gt; request" in doc
    assert "<title>&lt;i&gt;t&lt;/i&gt;</title>" in doc
    assert key not in doc


def test_report_without_costs_jobs_or_charts(frames, tmp_path):
    results, _ = frames
    doc = report(results, path=tmp_path / "r.html", charts=False).read_text()
    assert "data:image/png" not in doc
    assert "price source</th><td>no cost estimate given" in doc
    assert "batch ids</th><td>batch_abc" in doc  # from the results frame


def test_chart_that_cannot_be_drawn_is_named_not_hidden(frames, tmp_path):
    results, costs = frames
    doc = report(results.drop(columns=["sector"]), costs, path=tmp_path / "r.html").read_text()
    assert (
        "Risk by sector: not drawn (sector_risk(): the results frame has no column(s) &#x27;sector&#x27;"
        in doc
    )
    assert len(re.findall(r"data:image/png", doc)) == 5


def test_bad_arguments_say_what_to_pass(frames, tmp_path):
    results, _ = frames
    with pytest.raises(InputError, match=r"aggregate_df\(\)"):
        report(results.to_dict(), path=tmp_path / "r.html")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="'status'"):
        report(results.drop(columns=["status"]), path=tmp_path / "r.html")
    with pytest.raises(InputError, match="is a directory"):
        report(results, path=tmp_path)
    with pytest.raises(InputError, match=r"estimate_cost\(\)"):
        report(results, costs=[1, 2], path=tmp_path / "r.html")  # type: ignore[arg-type]


def test_report_overwrites_atomically(frames, tmp_path):
    results, costs = frames
    path = tmp_path / "r.html"
    path.write_text("old")
    report(results, costs, path=path, charts=False)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert isinstance(report(results, path=str(path), charts=False), Path)


def test_readme_notebooks_example_runs(frames, jobs, tmp_path, monkeypatch):
    """The Python block of the README's notebooks section runs as written."""
    import portfolio_batch as pb

    blocks = readme.python_blocks(readme.section("notebooks"))
    assert blocks, "the notebooks section has a python example"
    results, costs = frames
    monkeypatch.chdir(tmp_path)
    readme.run_block(blocks[0], {"pb": pb, "results": results, "costs": costs, "jobs": jobs})
    doc = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert doc.count("data:image/png;base64") == 6


@pytest.mark.slow
def test_report_of_a_real_run_on_the_local_server(openai_client, testdata, tmp_path):
    """The whole pipeline through the real openai SDK, then the report: the metadata comes from
    the real frames (batch id, prompt hash in the custom_ids, price source)."""
    import portfolio_batch as pb

    portfolio = pb.load_portfolio(testdata / "portfolio.csv")
    requests = pb.build_requests(portfolio, model="gpt-4o-mini")
    costs = pb.estimate_cost(requests)
    manifest = pb.to_jsonl(requests, tmp_path / "requests", costs=costs)
    jobs = pb.poll(pb.submit(manifest, client=openai_client), client=openai_client, progress=False)
    results = pb.aggregate_df(jobs, requests, client=openai_client)
    doc = report(results, costs, path=tmp_path / "report.html", jobs=jobs).read_text()
    meta = dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", doc))
    assert meta["batch ids"] == jobs["batch_id"].iloc[0]
    assert meta["prompt version"] == requests.attrs["prompt_version"]
    assert meta["model"] == "local:rules" and meta["requested model"] == "gpt-4o-mini"
    assert meta["price source"].startswith(costs.attrs["price_source"])
    assert meta["positions"] == str(len(portfolio))
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", meta["first batch created"])
    rows = table(doc, "positions")
    assert len(rows) == len(portfolio)
    at = header(doc, "positions").index("risk_score")
    scores = [int(r[at]) for r in rows if r[at]]
    assert len(scores) == (results["status"] == "succeeded").sum()
    assert scores == sorted(scores, reverse=True)
    assert doc.count("data:image/png;base64") == 6
