"""pb.dashboard(results): filters, sorting, the weight-weighted summary of the selection, the CSV
export, the widgets driving the same state, and the static HTML shown without widgets."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

import portfolio_batch as pb
from portfolio_batch._dashboard import ALL, NO_SCORE, Dashboard
from portfolio_batch.errors import InputError


def results_frame() -> pd.DataFrame:
    """Six positions: a short, an unscored one, text to search; numbers easy to check by hand."""
    ids = [f"risk-{t}-0a1b" for t in ("NVDA", "XOM", "TSLA", "JPM", "KO", "BAD")]
    frame = pd.DataFrame(
        {
            "custom_id": ids,
            "ticker": ["NVDA", "XOM", "TSLA", "JPM", "KO", "BAD"],
            "name": ["Nvidia", "Exxon", "Tesla", "JPMorgan", "Coca-Cola", "Bad <b>Co</b>"],
            "sector": ["Tech", "Energy", "Tech", "Financials", "Staples", "Energy"],
            "weight": [0.30, 0.20, -0.10, 0.25, 0.10, 0.05],
            "status": ["succeeded"] * 5 + ["failed"],
            "error_code": [None] * 5 + ["server_error"],
            "risk_score": pd.array([80, 60, 90, 40, 10, None], dtype="Int64"),
            "risk_level": ["high", "medium", "high", "medium", "low", None],
            "drivers": [["AI demand", "valuation"], ["oil"], ["short squeeze"], [], ["FX"], None],
            "rationale": ["Concentrated", "Commodity", "Volatile", "Rates", "Defensive", None],
        },
        index=pd.Index(ids, name="custom_id"),
    )
    return frame


def tickers(dash: Dashboard) -> list[str]:
    return dash.selection["ticker"].tolist()


def test_default_is_everything_highest_risk_first_unscored_last():
    dash = pb.dashboard(results_frame())
    assert tickers(dash) == ["TSLA", "NVDA", "XOM", "JPM", "KO", "BAD"]
    assert dash.filters == {"sector": ALL, "level": ALL, "status": ALL, "search": ""}


def test_filters_combine_and_clear():
    dash = pb.dashboard(results_frame())
    assert tickers(dash.filter(sector="Tech")) == ["TSLA", "NVDA"]
    assert tickers(dash.filter(level="high")) == ["TSLA", "NVDA"]
    assert tickers(dash.filter(sector="Energy", level=ALL)) == ["XOM", "BAD"]
    assert tickers(dash.filter(level=NO_SCORE)) == ["BAD"]
    assert tickers(dash.filter(sector=ALL, level=ALL, status="failed")) == ["BAD"]
    # search: case-insensitive, every word, over ticker, name, sector, drivers, rationale
    assert tickers(dash.filter(status=ALL, search="SQUEEZE")) == ["TSLA"]
    assert tickers(dash.filter(search="tech concentrated")) == ["NVDA"]
    assert tickers(dash.filter(search="")) == ["TSLA", "NVDA", "XOM", "JPM", "KO", "BAD"]
    with pytest.raises(InputError, match=r"sector='Retail' is not one of the choices"):
        dash.filter(sector="Retail")


def test_choices_come_from_the_frame():
    dash = pb.dashboard(results_frame())
    assert dash.sectors() == [ALL, "Energy", "Financials", "Staples", "Tech"]
    assert dash.levels() == [ALL, "high", "medium", "low", NO_SCORE]
    assert dash.statuses() == [ALL, "failed", "succeeded"]
    assert list(dash.sort_columns())[:3] == [
        "risk score",
        "exposure (|weight| × score)",
        "weight (gross)",
    ]


def test_sorting_by_any_column_both_ways():
    dash = pb.dashboard(results_frame())
    assert tickers(dash.sort_by("weight (gross)"))[:3] == ["NVDA", "JPM", "XOM"]
    # exposure |w| x score: NVDA 24, XOM 12, JPM 10, TSLA 9, KO 1; the unscored one last
    assert tickers(dash.sort_by("exposure (|weight| × score)")) == [
        "NVDA",
        "XOM",
        "JPM",
        "TSLA",
        "KO",
        "BAD",
    ]
    assert tickers(dash.sort_by("weight", ascending=True))[0] == "TSLA"  # the short
    assert tickers(dash.sort_by("ticker", ascending=True)) == sorted(tickers(dash))
    assert tickers(dash.sort_by("risk_score", ascending=True))[:2] == ["KO", "JPM"]
    with pytest.raises(InputError, match=r"Cannot sort by 'colour'"):
        dash.sort_by("colour")


def test_summary_weights_scores_by_gross_weight():
    dash = pb.dashboard(results_frame())
    s = dash.summary()
    # scored: |w| = .30 .20 .10 .25 .10 (sum .95); sum |w| x score = 24 + 12 + 9 + 10 + 1 = 56
    assert s["weighted_risk"] == pytest.approx(56 / 0.95)
    assert s["gross_weight"] == pytest.approx(1.0) and s["net_weight"] == pytest.approx(0.8)
    assert (s["positions"], s["unscored"]) == (6, 1)
    assert s["unscored_weight"] == pytest.approx(0.05)
    tech = dash.filter(sector="Tech").summary()
    assert tech["weighted_risk"] == pytest.approx((0.3 * 80 + 0.1 * 90) / 0.4)
    assert tech["share_of_gross"] == pytest.approx(0.4)
    assert tech["levels"] == {"high": 2}
    html = dash.summary_html()
    assert "2</b> of 6 positions" in html and "net 20.0%" in html and "82.5" in html


def test_export_writes_the_selection_as_shown(tmp_path):
    dash = pb.dashboard(results_frame(), export_dir=tmp_path).filter(sector="Tech")
    path = dash.export_csv()
    assert path.parent == tmp_path and path.suffix == ".csv"
    back = pd.read_csv(path)
    assert back["ticker"].tolist() == ["TSLA", "NVDA"]
    assert back["drivers"].tolist() == ["short squeeze", "AI demand; valuation"]


def test_static_html_without_widgets_is_escaped_and_complete(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    dash = pb.dashboard(results_frame())
    html = dash._repr_html_()
    assert html.count("<tr>") == 7  # a header and every row
    assert "Bad &lt;b&gt;Co&lt;/b&gt;" in html and "<b>Co</b>" not in html
    assert "data:image/png;base64," in html
    assert "hsl(" in html  # coloured scores
    assert "Static view" in html
    with pytest.raises(pb.MissingDependencyError, match=r"portfolio_batch\[notebook\]"):
        dash.widget  # noqa: B018


def test_widgets_drive_the_same_state_and_code_drives_the_widgets(tmp_path):
    dash = pb.dashboard(results_frame(), export_dir=tmp_path, page_size=3)
    box = dash.widget
    ui = dash._ui
    assert box is ui["box"] and "pb-dashboard" in box._dom_classes
    assert ui["table"].value.count("<tr>") == 4  # a page of 3
    assert "showing 3 of 6" in ui["table"].value
    first_png = ui["chart"].value
    ui["sector"].value = "Energy"  # what a click in the browser does
    assert tickers(dash) == ["XOM", "BAD"]
    assert "showing 2 of 2" in ui["table"].value and "XOM" in ui["table"].value
    assert ui["chart"].value != first_png  # the chart follows the selection
    assert "2</b> of 6 positions" in ui["summary"].value
    ui["sort"].value = "ticker"
    ui["order"].value = "lowest first"
    assert tickers(dash) == ["BAD", "XOM"]
    ui["search"].value = "oil"
    assert tickers(dash) == ["XOM"]
    dash.filter(sector=ALL, search="")  # code moves the controls back
    assert ui["sector"].value == ALL and ui["search"].value == ""
    ui["export"].click()
    assert "Exported 6 row(s)" in ui["message"].value and "download" in ui["message"].value
    assert dash.last_export is not None and dash.last_export.exists()


def test_dashboard_refuses_what_it_cannot_show():
    with pytest.raises(InputError, match=r"results DataFrame.*aggregate_df"):
        pb.dashboard([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"no 'status' column"):
        pb.dashboard(results_frame().drop(columns=["status"]))
    with pytest.raises(InputError, match=r"columns=\['nope'\]"):
        pb.dashboard(results_frame(), columns=["ticker", "nope"])
