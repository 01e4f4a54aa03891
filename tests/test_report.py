"""report(): one self-contained, escaped HTML risk review, in the issue's section order, with the
tables of portfolio_batch.review and the charts of portfolio_batch.charts, each also callable
on its own."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from test_charts import BAD, make_frames, texts

import portfolio_batch as pb
from portfolio_batch import charts, review
from portfolio_batch._report import SECTIONS, report
from portfolio_batch.errors import InputError
from tests import readme

SIMULATED = "Simulated: answers from the offline local rules engine, not an LLM."


@pytest.fixture
def frames(testdata):
    """make_frames' results with varied drivers and rationales: answers the checks trust (the
    degenerate case has its own tests)."""
    results, costs = make_frames(testdata)
    ok = results["status"] == "succeeded"
    kinds = [["beta", "valuation"], ["rates"], ["FX", "liquidity"]]
    results["drivers"] = [kinds[i % 3] if o else None for i, o in enumerate(ok)]
    results["rationale"] = [
        f"Rated on its beta and sector ({t})." if o else None
        for t, o in zip(results["ticker"], ok, strict=True)
    ]
    return results, costs


def degenerate(results: pd.DataFrame) -> pd.DataFrame:
    """Every answer the same zero score and rationale: what a broken engine returns."""
    bad = results.copy()
    ok = bad["status"] == "succeeded"
    bad.loc[ok, "risk_score"] = 0
    bad.loc[ok, "risk_level"] = "low"
    bad.loc[ok, "rationale"] = "n/a"
    return bad


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
    """The body rows of <table class=css> as lists of unescaped cell texts (a cell's second,
    small line left out)."""
    m = re.search(rf'<table class="{css}">(.*?)</table>', doc, re.S)
    assert m, f"no table {css}"
    body = m.group(1).split("<tbody>", 1)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    return [[html.unescape(re.sub(r"<small>.*?</small>", "", c)) for c in row] for row in cells]


def header(doc: str, css: str) -> list[str]:
    m = re.search(rf'<table class="{css}">.*?<thead><tr>(.*?)</tr>', doc, re.S)
    assert m
    return [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", m.group(1))]


def kv(doc: str, css: str) -> dict[str, str]:
    return {r[0]: r[1] for r in table(doc, css)}


def section(doc: str, name: str) -> str:
    m = re.search(rf'<section id="{name}">(.*?)</section>', doc, re.S)
    assert m, f"no section {name}"
    return m.group(1)


# -- the file -----------------------------------------------------------------------------------


def test_report_is_one_self_contained_file_with_charts(frames, jobs, tmp_path):
    results, costs = frames
    before = (results.copy(), costs.copy(), jobs.copy())
    out = report(results, costs=costs, path=tmp_path / "out" / "report.html", jobs=jobs)
    assert out == tmp_path / "out" / "report.html"
    doc = out.read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    # nothing fetched from elsewhere: one inline script (the table sorter), no link, no src URL
    assert doc.count("<script") == 1 and "<script>" in doc and "<link" not in doc
    assert not re.search(r'src="(?!data:)', doc)
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', doc)
    assert len(images) == 7
    for img in images:
        assert base64.b64decode(img).lstrip().startswith(b"<?xml")
    for title in (
        "Risk contributions",
        "Sector view",
        "Concentration",
        "Model vs quantitative proxy",
        "Request status",
        "Tokens per request",
        "Cost",
    ):
        assert f'alt="{title}"' in doc
    assert list(tmp_path.joinpath("out").iterdir()) == [out]  # no temp file left behind
    for got, want in zip((results, costs, jobs), before, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_sections_in_the_issue_order_risk_charts_before_run_charts(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs=costs, path=tmp_path / "r.html").read_text()
    at = [doc.index(f'<section id="{name}">') for name in SECTIONS]
    assert SECTIONS == ("header", "summary", "charts", "positions", "appendix")
    assert at == sorted(at)
    # the risk charts are in the charts section, the operational ones in the appendix
    assert 'alt="Risk contributions"' in section(doc, "charts")
    assert 'alt="Request status"' not in section(doc, "charts")
    assert 'alt="Request status"' in section(doc, "appendix")
    # the summary comes before any table of positions
    assert doc.index('<table class="positions sortable">') > doc.index('<section id="charts">')
    # no raw float noise anywhere in the text (charts are base64, sort keys are not shown)
    text = re.sub(r'(src|data-sort)="[^"]*"', "", doc)
    assert not re.search(r"\d\.\d{9,}", text)


def test_header_has_portfolio_as_of_model_coverage_cost_and_disclaimer(frames, jobs, tmp_path):
    results, costs = frames
    doc = report(
        results,
        costs=costs,
        path=tmp_path / "r.html",
        jobs=jobs,
        portfolio="Core equity",
        as_of="2026-11-13",
    ).read_text()
    head = section(doc, "header")
    assert "<strong>Core equity</strong> · as of 2026-11-13 · run <code>run_7</code>" in head
    assert "LLM opinion, not investment advice." in head
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", head))
    assert facts["Model"] == "gpt-4.1-mini" and facts["Prompt version"] == "0a1b2c3d"
    assert facts["Coverage"] == "37 of 40 reviewed (96.4% of gross weight)"
    coverage_note = re.search(r"<dt>Coverage</dt>.*?<small>(.*?)</small>", head, re.S).group(1)
    assert (
        "1 failed (server_error)" in coverage_note and "1 missing (server_error)" in coverage_note
    )
    assert "not trusted by the answer checks" in coverage_note
    assert facts["Cost, estimated vs actual"] == "estimated $0.0048 · actual $0.0037"
    assert 'id="simulated"' not in doc  # a real API's answers get no banner


def test_a_local_run_starts_with_the_simulated_banner(openai_client, testdata, tmp_path):
    """The whole pipeline on the local server (rules engine), then the report read as HTML."""
    portfolio = pb.load_portfolio(testdata / "portfolio.csv")
    requests = pb.build_requests(portfolio, model="gpt-4o-mini")
    costs = pb.estimate_cost(requests)
    manifest = pb.to_jsonl(requests, tmp_path / "requests", costs=costs)
    jobs = pb.poll(pb.submit(manifest, client=openai_client), client=openai_client, progress=False)
    results = pb.aggregate_df(jobs, requests, client=openai_client)
    doc = report(
        results, costs=costs, path=tmp_path / "report.html", jobs=jobs, requests=requests
    ).read_text()
    head = section(doc, "header")
    assert f'<p class="simulated" id="simulated">{SIMULATED}' in head
    assert head.index('id="simulated"') < head.index('<dl class="facts">')
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", head))
    assert facts["Model"] == "simulated: local rules engine"
    assert facts["Requested model"] == "gpt-4o-mini"
    assert facts["Cost at OpenAI batch prices"].startswith("estimated $0.")
    prov = kv(doc, "kv provenance")
    assert prov["run id"] == jobs["run_id"].iloc[0]
    assert prov["batch ids"] == jobs["batch_id"].iloc[0]
    assert prov["engine"] == "rules (simulated answers)"
    assert prov["prompt version"] == requests.attrs["prompt_version"]
    assert (
        prov["price table"] == costs.attrs["price_version"]
    )  # said once, not "genai-prices genai-prices"
    assert "max_tokens=400" in prov["parameters"]
    assert prov["input sha256"] == review.frame_sha256(results, columns=list(portfolio.columns))
    assert "System prompt" in doc and "Answer schema" in doc
    rows = table(doc, "positions sortable")
    assert len(rows) == len(portfolio)


# -- summary ------------------------------------------------------------------------------------


def test_summary_figures_match_the_review_functions(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs=costs, path=tmp_path / "r.html").read_text()
    summary = section(doc, "summary")
    score = review.weighted_score(results)
    assert f'<span class="big level-medium">{score:.1f}</span>' in summary
    shares = review.level_shares(results)
    assert shares["share"].sum() == pytest.approx(1.0)
    for rec in shares.to_dict("records"):
        assert f"{rec['risk_level']}: <b>{rec['share']:.1%}</b> of gross weight" in summary
    top = review.contributions(results, top=10)
    rows = table(doc, "contributions")
    assert [r[0] for r in rows] == top["ticker"].tolist()
    assert rows[0][5] == f"{top['share'].iloc[0]:.1%}"
    assert "No previous run of this portfolio is recorded" in summary
    assert "Definitions: weights are gross (|weight|)" in summary


def test_positions_sorted_by_risk_sortable_with_unscored_last(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs=costs, path=tmp_path / "r.html", charts=False).read_text()
    cols = header(doc, "positions sortable")
    assert cols[:2] == ["ticker", "sector"] and "rationale" in cols and "status" in cols
    rows = table(doc, "positions sortable")
    assert len(rows) == 40
    scores = [r[cols.index("score")] for r in rows]
    scored = [int(s) for s in scores if s]
    assert scored == sorted(scored, reverse=True) and len(scored) == 37
    assert scores[-3:] == ["", "", ""]
    assert {r[0] for r in rows[-3:]} == set(BAD)
    top = results.loc[results["risk_score"].astype(float).idxmax()]
    assert rows[0][0] == top["ticker"]
    assert f"<small>{html.escape(top['name'])}</small>" in doc  # the name under the ticker
    assert rows[0][cols.index("weight")] == f"{top['weight']:.1%}"
    assert rows[0][cols.index("drivers")] == "beta; valuation"
    # numbers sort by value: a data-sort attribute per numeric cell
    assert f'data-sort="{float(top["weight"]):.10g}"' in doc


def test_error_table_lists_every_row_that_did_not_succeed(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs=costs, path=tmp_path / "r.html", charts=False).read_text()
    assert '<h3 id="errors">Errors (3)</h3>' in doc
    cols = header(doc, "errors")
    rows = table(doc, "errors")
    got = {r[0]: (r[cols.index("status")], r[cols.index("error_code")]) for r in rows}
    assert got == {t: (s, "server_error") for t, s in BAD.items()}


def test_all_succeeded_says_so_and_leaves_the_status_column_out(frames, tmp_path):
    results, costs = frames
    ok = results[results["status"] == "succeeded"]
    doc = report(ok, costs=costs.loc[ok.index], path=tmp_path / "r.html", charts=False).read_text()
    assert '<h3 id="errors">Errors (0)</h3>\n<p>Every request succeeded.</p>' in doc
    assert "status" not in header(doc, "positions sortable")


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
        results,
        costs=costs,
        path=tmp_path / "r.html",
        title="<i>t</i>",
        portfolio="<b>P</b>",
        charts=False,
    ).read_text()
    assert doc.count("<script") == 1  # ours only
    assert "<img src=x" not in doc and "<b>bad</b>" not in doc and "<b>P</b>" not in doc
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; my key is [redacted]" in doc
    assert "&lt;img src=x onerror=alert(1)&gt;" in doc
    assert "&lt;b&gt;bad&lt;/b&gt; request" in doc
    assert "<title>&lt;i&gt;t&lt;/i&gt;</title>" in doc
    assert key not in doc


def test_report_without_costs_jobs_or_charts(frames, tmp_path):
    results, _ = frames
    doc = report(results, path=tmp_path / "r.html", charts=False).read_text()
    assert "data:image" not in doc
    assert kv(doc, "kv provenance")["price table"] == "no cost estimate given"
    assert kv(doc, "kv provenance")["batch ids"] == "batch_abc"  # from the results frame


def test_chart_that_cannot_be_drawn_is_named_not_hidden(frames, tmp_path):
    results, costs = frames
    doc = report(
        results.drop(columns=["sector"]), costs=costs, path=tmp_path / "r.html"
    ).read_text()
    assert (
        "Sector view: not drawn (sector_view(): the results frame has no column(s) &#39;sector&#39;"
        in doc
    )
    assert len(re.findall(r"data:image/svg", doc)) == 6


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
    with pytest.raises(InputError, match="as_of='13/11/2026' is not a date"):
        report(results, path=tmp_path / "r.html", as_of="13/11/2026")
    with pytest.raises(InputError, match="needs fx_rate="):
        report(results, path=tmp_path / "r.html", currency="EUR")


def test_report_overwrites_atomically(frames, tmp_path):
    results, costs = frames
    path = tmp_path / "r.html"
    path.write_text("old")
    report(results, costs=costs, path=path, charts=False)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert isinstance(report(results, path=str(path), charts=False), Path)


# -- previous run, currency, shorts -------------------------------------------------------------


def test_the_previous_run_of_the_same_portfolio_is_found_in_the_registry(frames, tmp_path):
    results, costs = frames
    first = results.copy()
    first.attrs = {**results.attrs, "run_at": 1_700_000_000}
    report(
        first, costs=costs, path=tmp_path / "a.html", portfolio="Core", run_id="run-a", charts=False
    )
    report(
        first,
        costs=costs,
        path=tmp_path / "x.html",
        portfolio="Other",
        run_id="run-x",
        charts=False,
    )
    second = results.copy()
    second.attrs = {**results.attrs, "run_at": 1_700_100_000}
    second.loc[second["ticker"] == "MSFT", "weight"] = 0.02
    doc = report(
        second,
        costs=costs,
        path=tmp_path / "b.html",
        portfolio="Core",
        run_id="run-b",
        charts=False,
    ).read_text()
    assert "1 position changed since run run-a (2023-11-14): MSFT (reweighted)." in doc
    assert [r[0] for r in table(doc, "changes")] == ["MSFT"]
    assert kv(doc, "kv provenance")["compared with"].startswith("run run-a")
    cols = header(doc, "positions sortable")
    msft = next(r for r in table(doc, "positions sortable") if r[0] == "MSFT")
    assert msft[cols.index("Δ weight")] == "−4.60 pp" and msft[cols.index("change")] == "reweighted"
    # reporting run-b again compares with run-a still, not with itself
    again = report(
        second,
        costs=costs,
        path=tmp_path / "b.html",
        portfolio="Core",
        run_id="run-b",
        charts=False,
    )
    assert "since run run-a" in again.read_text()
    # previous=False: no comparison; another portfolio's runs are never taken
    none = report(
        second,
        costs=costs,
        path=tmp_path / "c.html",
        portfolio="Core",
        previous=False,
        charts=False,
    )
    assert "No previous run of this portfolio is recorded" in none.read_text()
    new = report(
        second, costs=costs, path=tmp_path / "d.html", portfolio="New", run_id="run-n", charts=False
    )
    assert "No previous run of this portfolio is recorded" in new.read_text()


def test_costs_in_another_currency_print_the_rate_and_its_date(frames, tmp_path):
    results, costs = frames
    doc = report(
        results,
        costs=costs,
        path=tmp_path / "r.html",
        currency="EUR",
        fx_rate=0.5,
        fx_date="2026-11-13",
        charts=False,
    ).read_text()
    note = "EUR at 0.5 per USD (rate of 2026-11-13, given by the user)"
    facts = re.search(r"<dt>Cost, estimated vs actual</dt><dd>(.*?)</dd><small>(.*?)</small>", doc)
    assert (
        facts.group(1) == f"estimated €{40 * 0.00012 * 0.5:.4f} · actual €{37 * 0.0001 * 0.5:.4f}"
    )
    assert facts.group(2) == "the estimate counts max_tokens of output per answer; " + note
    assert kv(doc, "kv requests")["currency"] == note
    assert kv(doc, "kv provenance")["currency"] == note


def test_estimate_cost_in_eur_adds_columns_and_attrs(testdata):
    requests = pb.build_requests(pb.load_portfolio(testdata / "portfolio.csv").head(3))
    costs = pb.estimate_cost(requests, currency="eur", fx_rate=0.9, fx_date="2026-11-13")
    assert costs.attrs["currency"] == "EUR" and costs.attrs["fx_rate"] == 0.9
    assert costs.attrs["fx_date"] == "2026-11-13"
    np.testing.assert_allclose(costs["batch_cost_eur"], costs["batch_cost_usd"] * 0.9)
    np.testing.assert_allclose(costs["sync_cost_eur"], costs["sync_cost_usd"] * 0.9)
    assert "batch_cost_eur" not in pb.estimate_cost(requests).columns
    with pytest.raises(InputError, match="needs fx_rate="):
        pb.estimate_cost(requests, currency="EUR")
    with pytest.raises(InputError, match="positive"):
        pb.estimate_cost(requests, currency="EUR", fx_rate=-1)


def test_shorts_count_by_their_gross_weight(frames):
    results, _ = frames
    r = results.copy()
    r.loc[r["ticker"] == "NVDA", "weight"] = -0.060  # a short of the same size
    nvda = r.index[r["ticker"] == "NVDA"][0]
    score = float(r.at[nvda, "risk_score"])
    c = review.contributions(r, top=None).set_index("ticker")
    assert c.at["NVDA", "contribution"] == pytest.approx(0.060 * score)  # magnitude, not -0.06×
    assert review.weighted_score(r) == pytest.approx(review.weighted_score(results))
    hhi = review.concentration(r).set_index("metric")["value"]["hhi"]
    w = results["weight"].abs() / results["weight"].abs().sum()
    assert hhi == pytest.approx(float((w**2).sum()))
    sectors = review.sectors(r).set_index("sector")
    it = r[r["sector"] == "Information Technology"]["weight"]
    assert sectors.at["Information Technology", "gross_weight"] == pytest.approx(it.abs().sum())
    assert sectors.at["Information Technology", "net_weight"] == pytest.approx(it.sum())
    fig = charts.risk_contributions(r)
    assert "NVDA (short)" in [t.get_text() for t in fig.axes[0].get_yticklabels()]


# -- the charts, each on its own ------------------------------------------------------------------


@pytest.mark.parametrize(
    "draw",
    [charts.risk_contributions, charts.sector_view, charts.concentration, charts.model_vs_proxy],
)
def test_each_review_chart_draws_alone_or_into_a_given_axes(frames, draw):
    results, _ = frames
    fig = draw(results)
    assert isinstance(fig, Figure)
    mine = Figure()
    ax = mine.add_subplot(2, 1, 2)
    assert draw(results, ax=ax) is mine
    assert ax.has_data()


def test_contribution_chart_labels_each_share(frames):
    results, _ = frames
    fig = charts.risk_contributions(results, top=5)
    top = review.contributions(results, top=5)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == top["ticker"].tolist()
    labels = [t.get_text() for t in ax.texts]
    assert labels[0].startswith(f" {top['share'].iloc[0]:.1%}")
    assert "3 without a score" in ax.get_title()


def test_sector_view_writes_weight_and_highest_score(frames):
    results, _ = frames
    fig = charts.sector_view(results)
    words = texts(fig)
    table = review.sectors(results)
    top = table.iloc[0]
    assert (
        f"{top['gross_weight']:.1%} of weight · max {top['max_score']:.0f} {top['max_position']}"
        in words
    )
    assert "2 unscored" in words  # Industrials: CAT and GE have no score


def test_concentration_chart_gives_hhi_and_top_weights(frames):
    results, _ = frames
    fig = charts.concentration(results, top_n=5)
    title = fig.axes[0].get_title()
    hhi = review.concentration(results).set_index("metric")["value"]["hhi"]
    assert f"HHI {hhi:.3f}" in title and "top 5" in title


def test_model_vs_proxy_labels_the_largest_disagreements(frames):
    results, _ = frames
    proxy = review.quant_proxy(results)
    assert proxy.attrs["columns"] == ["volatility", "beta"]
    assert proxy["proxy"].between(0, 100).all()
    fig = charts.model_vs_proxy(results, annotate=3)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == [
        f"{t} ({d:+.0f})" for t, d in proxy[["ticker", "disagreement"]].head(3).values
    ]
    with pytest.raises(InputError, match="none of the input columns"):
        review.quant_proxy(results.drop(columns=["volatility", "beta"]))


def test_readme_report_example_runs(frames, jobs, tmp_path, monkeypatch):
    """The README's report example (notebooks section, "The report") runs as written."""
    blocks = [b for b in readme.python_blocks(readme.section("notebooks")) if "review." in b]
    assert len(blocks) == 1, "the notebooks section has one python example of the report"
    results, costs = frames
    monkeypatch.chdir(tmp_path)
    readme.run_block(blocks[0], {"pb": pb, "results": results, "costs": costs, "jobs": jobs})
    doc = (tmp_path / "out" / "review.html").read_text(encoding="utf-8")
    assert doc.count("data:image/svg+xml;base64") == 7
    assert "<strong>Core equity</strong> · as of 2026-11-13" in doc


# -- review fixes: simulated wording, degenerate answers, precision, paths ----------------------


def test_a_simulated_report_says_no_llm_and_what_the_run_would_cost(frames, tmp_path):
    results, costs = frames
    results.attrs.update(simulated=True, engine="rules", mode="batch")
    head = section(report(results, costs=costs, path=tmp_path / "r.html").read_text(), "header")
    # no "LLM opinion" badge right above the "not an LLM" banner
    assert "LLM opinion, not investment advice." not in head
    assert "Simulated answers, not an LLM's opinion; not investment advice." in head
    facts = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", head))
    assert facts["Cost at OpenAI batch prices"] == (
        "estimated $0.0048 · this run would cost $0.0037 at OpenAI batch prices"
    )


def test_degenerate_answers_grey_the_score_and_level_shares(frames, tmp_path):
    results, costs = frames
    bad = degenerate(results)
    doc = report(bad, costs=costs, path=tmp_path / "r.html").read_text()
    assert "The answers look degenerate" in section(doc, "header")
    summary = section(doc, "summary")
    # no green "0.0 (low)" or 100 % green bar that reads as a safe portfolio
    assert '<span class="big">0.0</span>' in summary
    assert "not trusted: see Answer checks" in summary
    assert "level-bg-low" not in summary and "level-bg-untrusted" in summary
    assert "weighted risk score / 100 (low)" not in summary  # no level word for untrusted
    assert '<div id="contributions" class="untrusted">' in summary  # greyed levels (CSS)
    headline = re.search(r'id="headline">(.*?)</p>', summary).group(1)
    assert "Top contributor" not in headline and "not trusted" in headline
    # trusted answers keep their colours
    good = section(report(results, costs=costs, path=tmp_path / "g.html").read_text(), "summary")
    assert "not trusted: see Answer checks" not in good and "level-bg-low" in good


def test_contribution_total_has_the_headline_precision(frames, tmp_path):
    results, costs = frames
    doc = report(results, costs=costs, path=tmp_path / "r.html", charts=False).read_text()
    total = review.contributions(results, top=10).attrs["total"]
    caption = re.search(r"<caption>(.*?)</caption>", section(doc, "summary")).group(1)
    assert f"of the total contribution ({total:.1f}) in these 10" in caption


def test_zero_contributions_draw_without_a_warning(frames):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked UserWarning ends up in the CLI's output
        fig = charts.risk_contributions(degenerate(frames[0]))
    assert isinstance(fig, Figure)


def test_a_report_path_under_a_file_is_an_input_error(frames, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"path .*afile.*report\(path=\.\.\.\)"):
        report(frames[0], path=tmp_path / "afile" / "report.html")
