"""Charts: each returns a Figure whose artists (bars, colours, hatches, labels, texts) show every
row, scored or not. Frames are shaped like the design contract's Results and Costs frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from portfolio_batch import charts
from portfolio_batch.errors import InputError

BAD = {"CAT": "failed", "GE": "missing", "NEE": "invalid_output"}


def make_frames(testdata, n: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A Results frame (nullable dtypes as aggregate_df makes them) and a Costs frame."""
    p = pd.read_csv(testdata / "portfolio.csv").head(n)
    ids = [f"risk-{t}-0a1b2c3d" for t in p["ticker"]]
    r = p.copy()
    r.insert(0, "custom_id", ids)
    r.index = pd.Index(ids, name="custom_id")
    status = [BAD.get(t, "succeeded") for t in p["ticker"]]
    ok = np.array([s == "succeeded" for s in status])
    scores = [(i * 37) % 101 for i in range(len(p))]
    r["status"] = pd.array(status, dtype="string")
    r["http_status"] = pd.array([200 if o else None for o in ok], dtype="Int64")
    r["error_code"] = [None if o else "server_error" for o in ok]
    r["error_message"] = [None if o else "boom" for o in ok]
    r["finish_reason"] = ["stop" if o else None for o in ok]
    r["content"] = None
    r["risk_score"] = pd.array(
        [s if o else None for s, o in zip(scores, ok, strict=True)], dtype="Int64"
    )
    r["risk_level"] = [
        ("low" if s < 34 else "medium" if s <= 66 else "high") if o else None
        for s, o in zip(scores, ok, strict=True)
    ]
    r["drivers"] = [["beta", "valuation"] if o else None for o in ok]
    r["rationale"] = ["fine" if o else None for o in ok]
    r["prompt_tokens"] = pd.array([200 + i if o else None for i, o in enumerate(ok)], dtype="Int64")
    r["completion_tokens"] = pd.array([50 if o else None for o in ok], dtype="Int64")
    r["cached_tokens"] = pd.array([0 if o else None for o in ok], dtype="Int64")
    r["cost_usd"] = [0.0001 if o else np.nan for o in ok]
    r["batch_id"] = "batch_abc"
    r["model"] = "gpt-4.1-mini"
    c = pd.DataFrame(
        {
            "custom_id": ids,
            "model": "gpt-4.1-mini",
            "input_tokens": 210,
            "output_tokens_est": 60,
            "batch_cost_usd": 0.00012,
            "sync_cost_usd": 0.00024,
        },
        index=pd.Index(ids, name="custom_id"),
    )
    c.attrs = {"price_source": "genai-prices", "price_version": "0.2.3", "output_tokens": "max"}
    return r, c


@pytest.fixture
def frames(testdata):
    return make_frames(testdata)


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def texts(fig: Figure) -> str:
    out = []
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts]
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend is not None:
            out += [t.get_text() for t in legend.get_texts()]
    return "\n".join(out)


def test_risk_by_position_sorts_colours_and_keeps_unscored_rows(frames):
    results, _ = frames
    before = results.copy()
    fig = charts.risk_by_position(results)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    rects = bars(ax)
    assert len(rects) == len(results) == 40
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # top of the chart first: ticks are listed bottom-up, so reverse by y
    by_y = [
        lab
        for _, lab in sorted(
            zip([t.get_position()[1] for t in ax.get_yticklabels()], labels, strict=True),
            reverse=True,
        )
    ]
    scored = results[results["status"] == "succeeded"].sort_values(
        "risk_score", ascending=False, kind="stable"
    )
    assert by_y[: len(scored)] == list(scored["ticker"])
    assert set(by_y[len(scored) :]) == set(BAD)
    solid = [r for r in rects if not r.get_hatch()]
    hatched = [r for r in rects if r.get_hatch() == charts.UNSCORED_HATCH]
    assert len(solid) == 37 and len(hatched) == 3
    widths = [r.get_width() for r in sorted(solid, key=lambda r: -r.get_y())]
    assert widths == sorted(widths, reverse=True)
    assert widths[0] == scored["risk_score"].max()
    for rect in solid:
        level = "low" if rect.get_width() < 34 else "medium" if rect.get_width() <= 66 else "high"
        assert to_hex(rect.get_facecolor()) == charts.LEVEL_COLORS[level]
    shown = texts(fig)
    assert "3 without a score" in ax.get_title()
    for status in BAD.values():
        assert status in shown
    pd.testing.assert_frame_equal(results, before)


def test_risk_vs_weight_bubble_size_follows_weight_and_unscored_are_marked(frames):
    results, _ = frames
    fig = charts.risk_vs_weight(results)
    ax = fig.axes[0]
    cols = ax.collections
    assert sum(len(c.get_offsets()) for c in cols) == 40
    unscored = [c for c in cols if c.get_label().startswith("no score")]
    assert len(unscored) == 1 and len(unscored[0].get_offsets()) == 3
    assert "failed 1" in unscored[0].get_label()
    # unscored markers sit below every score, never at a real score
    assert unscored[0].get_offsets()[:, 1].max() < 0
    high = next(c for c in cols if c.get_label() == "high")
    w = np.asarray(high.get_offsets())[:, 0]
    s = high.get_sizes()
    assert np.all(np.diff(s[np.argsort(w)]) >= 0)
    assert "37 scored of 40" in ax.get_title()
    assert {"CAT (failed)", "GE (missing)", "NEE (invalid_output)"} <= set(texts(fig).splitlines())


def _book_with_a_short() -> pd.DataFrame:
    # a 130/30-style book: B is short 30 %; X's net weight is 0.7, its gross weight 1.3
    return pd.DataFrame(
        {
            "ticker": ["A", "B", "C"],
            "sector": ["X", "X", "Y"],
            "weight": [1.0, -0.3, 0.3],
            "status": ["succeeded"] * 3,
            "risk_score": [50, 80, 20],
            "risk_level": ["medium", "high", "low"],
        }
    )


def test_risk_vs_weight_draws_a_short_as_exposure_left_of_zero(tmp_path):
    fig = charts.risk_vs_weight(_book_with_a_short())
    fig.savefig(tmp_path / "shorts.png")  # a negative bubble size made saving fail
    ax = fig.axes[0]
    high = next(c for c in ax.collections if c.get_label() == "high")
    assert high.get_offsets()[0][0] == pytest.approx(-0.3)
    # bubble area by gross weight: 30 + 900 * 0.3 / 1.0
    assert high.get_sizes()[0] == pytest.approx(300.0)
    # the short's exposure (0.3 x 80 = 24) ranks above C's (0.3 x 20): it is labelled
    assert "B" in texts(fig).splitlines()


def test_sector_risk_averages_over_gross_weight_with_shorts():
    fig = charts.sector_risk(_book_with_a_short())
    ax_risk, ax_weight = fig.axes
    ticks = {t.get_position()[1]: t.get_text() for t in ax_risk.get_yticklabels()}
    got = {ticks[r.get_y() + r.get_height() / 2]: r.get_width() for r in bars(ax_risk)}
    # X: (1.0 x 50 + 0.3 x 80) / 1.3 = 56.92; on net weights it would be (50 - 24) / 0.7 = 37.1
    assert got["X"] == pytest.approx(74 / 1.3)
    assert got["Y"] == pytest.approx(20.0)
    assert "gross weight" in ax_weight.get_xlabel()


def test_sector_risk_is_weight_averaged_and_shows_unscored_weight(frames):
    results, _ = frames
    fig = charts.sector_risk(results)
    ax_risk, ax_weight = fig.axes
    ok = results["status"] == "succeeded"
    sub = results[ok]
    expected = (sub["risk_score"].astype(float) * sub["weight"]).groupby(sub["sector"]).sum() / sub[
        "weight"
    ].groupby(sub["sector"]).sum()
    ticks = {t.get_position()[1]: t.get_text() for t in ax_risk.get_yticklabels()}
    solid = [r for r in bars(ax_risk) if not r.get_hatch()]
    got = {ticks[r.get_y() + r.get_height() / 2]: r.get_width() for r in solid}
    assert got.keys() == set(expected.index)
    for sector, value in expected.items():
        assert got[sector] == pytest.approx(value)
    # sorted: highest weighted risk on top
    ordered = [v for _, v in sorted(((r.get_y(), r.get_width()) for r in solid), reverse=True)]
    assert ordered == sorted(ordered, reverse=True)
    # Industrials (CAT, GE) and Utilities (NEE) carry unscored weight, drawn hatched
    hatched_w = [r for r in bars(ax_weight) if r.get_hatch()]
    assert sum(r.get_width() for r in hatched_w) == pytest.approx(results.loc[~ok, "weight"].sum())
    assert "unscored" in texts(fig)


def test_sector_with_no_scored_position_gets_a_hatched_bar(frames):
    results, _ = frames
    results = results.copy()
    energy = results["sector"] == "Energy"
    results.loc[energy, "status"] = "expired"
    results.loc[energy, "risk_score"] = pd.NA
    fig = charts.sector_risk(results)
    ax_risk = fig.axes[0]
    ticks = {t.get_position()[1]: t.get_text() for t in ax_risk.get_yticklabels()}
    hatched = [ticks[r.get_y() + r.get_height() / 2] for r in bars(ax_risk) if r.get_hatch()]
    assert "Energy" in hatched
    # sectors without a score go last (bottom of the chart)
    lowest = min(ax_risk.get_yticklabels(), key=lambda t: t.get_position()[1]).get_text()
    assert lowest in hatched


def test_status_breakdown_shows_every_status_including_zeros(frames):
    results, _ = frames
    results = results.copy()
    results.loc[results.index[0], "status"] = "weird_new_status"
    fig = charts.status_breakdown(results)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_xticklabels()]
    assert names[: len(charts.STATUS_ORDER)] == list(charts.STATUS_ORDER)
    assert names[-1] == "weird_new_status"
    heights = dict(zip(names, [r.get_height() for r in bars(ax)], strict=True))
    assert heights == {
        "succeeded": 36,
        "failed": 1,
        "expired": 0,
        "cancelled": 0,
        "invalid_output": 1,
        "missing": 1,
        "weird_new_status": 1,
    }
    assert sum(heights.values()) == len(results)
    assert to_hex(bars(ax)[1].get_facecolor()) == charts.STATUS_COLORS["failed"]
    assert "36 of 40 succeeded" in ax.get_title()


def test_token_usage_estimated_vs_actual_and_missing_usage(frames):
    results, costs = frames
    fig = charts.token_usage(results, costs=costs)
    ax = fig.axes[0]
    rects = bars(ax)
    est = [r for r in rects if to_hex(r.get_facecolor()) == "#90caf9"]
    act = [r for r in rects if to_hex(r.get_facecolor()) == "#1565c0"]
    hatched = [r for r in rects if r.get_hatch()]
    assert len(est) == 40 and len(act) == 37 and len(hatched) == 3
    assert {r.get_height() for r in est} == {270}
    assert sorted(r.get_height() for r in act)[0] == 250
    assert "3 without usage" in ax.get_title()
    assert "actual" in ax.get_title() and "estimated" in ax.get_title()


def test_token_usage_without_costs_still_marks_missing(frames):
    results, _ = frames
    fig = charts.token_usage(results)
    assert len([r for r in bars(fig.axes[0]) if r.get_hatch()]) == 3


def test_cost_breakdown_estimated_vs_actual_and_savings(frames):
    results, costs = frames
    fig = charts.cost_breakdown(costs, results=results)
    ax_est, ax_sav = fig.axes
    heights = {
        t.get_text(): r.get_height()
        for t, r in zip(ax_est.get_xticklabels(), bars(ax_est), strict=True)
    }
    assert heights["estimated (batch)"] == pytest.approx(40 * 0.00012)
    assert heights["actual"] == pytest.approx(37 * 0.0001)
    assert "3 request(s) without a cost" in ax_est.get_xlabel()
    sync, batch = bars(ax_sav)
    assert sync.get_height() == pytest.approx(40 * 0.00024)
    assert batch.get_height() == pytest.approx(40 * 0.00012)
    assert "saves $0.0048" in ax_sav.get_title()
    assert "(50%)" in texts(fig)


def test_cost_breakdown_before_the_run_shows_a_placeholder(frames):
    _, costs = frames
    fig = charts.cost_breakdown(costs)
    ax_est = fig.axes[0]
    placeholder = [r for r in bars(ax_est) if r.get_hatch()]
    assert len(placeholder) == 1
    assert "not run yet" in texts(fig)


def test_cost_breakdown_groups_by_model(frames):
    _, costs = frames
    two = pd.concat(
        [costs, costs.assign(model="gpt-4.1", batch_cost_usd=0.001, sync_cost_usd=0.002)]
    )
    fig = charts.cost_breakdown(two)
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["gpt-4.1", "gpt-4.1-mini"]
    assert len(bars(fig.axes[1])) == 4


@pytest.mark.parametrize(
    ("fn", "drop", "args"),
    [
        (charts.risk_by_position, "risk_score", ()),
        (charts.risk_vs_weight, "weight", ()),
        (charts.sector_risk, "sector", ()),
        (charts.status_breakdown, "status", ()),
        (charts.token_usage, "prompt_tokens", ()),
    ],
)
def test_missing_column_names_it_and_the_fix(frames, fn, drop, args):
    results, _ = frames
    with pytest.raises(InputError, match=rf"'{drop}'.*aggregate_df"):
        fn(results.drop(columns=[drop]), *args)


def test_cost_breakdown_rejects_a_results_frame_in_place_of_costs(frames):
    results, _ = frames
    with pytest.raises(InputError, match=r"batch_cost_usd.*estimate_cost"):
        charts.cost_breakdown(results)


def test_all_unscored_run_still_draws_every_row(frames):
    results, _ = frames
    failed = results.assign(
        status="failed", risk_score=pd.array([None] * 40, dtype="Int64"), risk_level=None
    )
    assert len(bars(charts.risk_by_position(failed).axes[0])) == 40
    assert (
        sum(len(c.get_offsets()) for c in charts.risk_vs_weight(failed).axes[0].collections) == 40
    )
    assert (
        len([r for r in bars(charts.sector_risk(failed).axes[0]) if r.get_hatch()])
        == failed["sector"].nunique()
    )


# -- one calling convention: the frame drawn first, options by keyword, ax=, a Figure back ----------

SINGLE_PANEL = [
    charts.risk_by_position,
    charts.risk_vs_weight,
    charts.status_breakdown,
    charts.token_usage,
]


@pytest.mark.parametrize("fn", SINGLE_PANEL, ids=lambda f: f.__name__)
def test_single_panel_charts_draw_into_the_given_axes(frames, fn):
    results, _ = frames
    fig = Figure(figsize=(12, 4))
    left, right = fig.subplots(1, 2)
    assert fn(results, ax=right) is fig
    assert right.has_data() and not left.has_data()
    assert len(fig.axes) == 2  # nothing added beside the caller's axes


@pytest.mark.parametrize(
    ("fn", "frame"), [(charts.sector_risk, 0), (charts.cost_breakdown, 1)], ids=["sector", "cost"]
)
def test_two_panel_charts_take_a_pair_or_draw_their_first_panel(frames, fn, frame):
    drawn = frames[frame]
    fig = Figure()
    a, b = fig.subplots(1, 2)
    assert fn(drawn, ax=(a, b)) is fig
    assert a.has_data() and b.has_data()
    single = Figure()
    only = single.add_subplot()
    assert fn(drawn, ax=only) is single
    assert only.has_data() and len(single.axes) == 1
    with pytest.raises(InputError, match=r"pair of Axes"):
        fn(drawn, ax=[a])


def test_ax_in_a_subfigure_returns_the_root_figure(frames):
    results, _ = frames
    fig = Figure()
    sub = fig.subfigures(1, 2)[1]
    assert charts.status_breakdown(results, ax=sub.add_subplot()) is fig


def test_second_frames_and_options_are_keyword_only(frames):
    results, costs = frames
    with pytest.raises(TypeError):
        charts.token_usage(results, costs)  # type: ignore[misc]
    with pytest.raises(TypeError):
        charts.cost_breakdown(costs, results)  # type: ignore[misc]
    with pytest.raises(TypeError):
        charts.risk_by_position(results, "ticker")  # type: ignore[misc]


def test_alternative_models_are_priced_side_by_side_never_summed(frames):
    """03_cost_planning prices one portfolio on four models: four estimates, not one bar."""
    _, costs = frames
    models = {"gpt-4.1-mini": 0.00012, "gpt-4.1": 0.001, "gpt-4o": 0.0015}
    alt = pd.concat(
        [costs.assign(model=m, batch_cost_usd=c, sync_cost_usd=2 * c) for m, c in models.items()]
    )
    fig = charts.cost_breakdown(alt)
    ax_est, ax_sav = fig.axes
    assert [t.get_text() for t in ax_est.get_xticklabels()] == sorted(models)
    estimated = [r for r in bars(ax_est) if not r.get_hatch()]
    heights = sorted(r.get_height() for r in estimated)
    assert heights == pytest.approx(sorted(40 * c for c in models.values()))
    assert max(heights) < 40 * sum(models.values())  # no bar holds the sum
    assert "per model" in ax_sav.get_title() and "saves $" not in ax_sav.get_title()


def test_actual_cost_per_model_follows_the_requested_model(frames):
    results, costs = frames
    two = pd.concat([costs, costs.assign(model="gpt-4.1", batch_cost_usd=0.001)])
    answered = results.assign(requested_model="gpt-4.1-mini")
    ax_est = charts.cost_breakdown(two, results=answered).axes[0]
    actual = [r for r in bars(ax_est) if to_hex(r.get_facecolor()) == "#1565c0"]
    assert [r.get_height() for r in actual] == pytest.approx([0.0, 37 * 0.0001])


def test_highlight_draws_the_selection_within_the_whole_portfolio(frames):
    results, _ = frames
    energy = results["sector"] == "Energy"
    fig = charts.risk_vs_weight(results, highlight=energy)
    ax = fig.axes[0]
    faint = [c for c in ax.collections if c.get_label().startswith("not selected")]
    assert len(faint) == 1 and len(faint[0].get_offsets()) == int((~energy).sum())
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == len(results)
    assert f"{int(energy.sum())} selected of 40" in ax.get_title()
    by_index = charts.risk_vs_weight(results, highlight=results.index[energy])
    assert by_index.axes[0].get_title() == ax.get_title()
    with pytest.raises(InputError, match=r"not in results"):
        charts.risk_vs_weight(results, highlight=["nope"])


def test_labels_are_readable_at_default_size(frames):
    results, costs = frames
    for fig in (
        charts.risk_by_position(results),
        charts.risk_vs_weight(results),
        charts.token_usage(results, costs=costs),
        charts.cost_breakdown(costs, results=results),
    ):
        for ax in fig.axes:
            ticks = ax.get_xticklabels() + ax.get_yticklabels()
            small = [t.get_text() for t in [*ticks, *ax.texts] if t.get_fontsize() < 8]
            assert not small, small
