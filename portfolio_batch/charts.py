"""Charts of a run: each takes the frame it draws first (Results from ``aggregate_df``, or Costs
from ``estimate_cost`` for ``cost_breakdown``), every option by keyword, and returns a matplotlib
``Figure``. ``ax=`` draws into an Axes of yours (a two-panel chart takes a pair, or draws its
first panel into a single Axes) and returns that Axes' Figure.

    >>> from portfolio_batch import charts
    >>> fig = charts.risk_by_position(results)      # doctest: +SKIP
    >>> fig.savefig("risk.png")                     # doctest: +SKIP
    >>> fig = Figure(figsize=(12, 4)); left, right = fig.subplots(1, 2)   # doctest: +SKIP
    >>> charts.status_breakdown(results, ax=left)   # doctest: +SKIP
    >>> charts.token_usage(results, costs=costs, ax=right)   # doctest: +SKIP

Rows without a score (failed, expired, cancelled, missing, invalid_output) are never dropped
silently: they are drawn as grey hatched bars or markers and counted in the title or a note.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so returning one from a cell
shows it exactly once and nothing piles up across calls.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from portfolio_batch._contract import (
    LEVEL_COLORS,
    OTHER_LEVEL_COLOR,
    RESULT_STATUSES,
    STATUS_COLORS,
    UNSCORED_COLOR,
)
from portfolio_batch.errors import InputError, missing_extra

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

__all__ = [
    "LEVEL_COLORS",
    "STATUS_COLORS",
    "STATUS_ORDER",
    "UNSCORED_COLOR",
    "UNSCORED_HATCH",
    "cost_breakdown",
    "risk_by_position",
    "risk_vs_weight",
    "sector_risk",
    "status_breakdown",
    "token_usage",
]

# The colours are the package's one table (_contract); results' statuses in the order bars show.
STATUS_ORDER = RESULT_STATUSES
UNSCORED_HATCH = "//"


# -- helpers ----------------------------------------------------------------------------------


class _Matplotlib(NamedTuple):
    figure: type[Figure]
    axes: type[Axes]
    patch: type[Patch]


@cache
def _mpl() -> _Matplotlib:
    """matplotlib's classes, imported on first draw: matplotlib is the ``report`` extra, and
    ``import portfolio_batch`` must work without it."""
    try:
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:
        raise missing_extra("matplotlib", "report") from exc
    return _Matplotlib(Figure, Axes, Patch)


def _require(frame: Any, columns: Iterable[str], *, name: str, fn: str, hint: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{fn}() needs the {name} DataFrame, got {type(frame).__name__}. {hint}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"{fn}(): the {name} frame has no column(s) {', '.join(map(repr, missing))}. {hint}"
        )
    return frame


_RESULTS_HINT = "Pass the frame returned by aggregate_df() or run_sync()."
_COSTS_HINT = "Pass the frame returned by estimate_cost()."


def _labels(results: pd.DataFrame, label: str | None) -> pd.Series:
    if label is not None:
        _require(results, [label], name="results", fn="chart", hint="Pick an existing column.")
        col = label
    elif "ticker" in results.columns:
        col = "ticker"
    elif "custom_id" in results.columns:
        col = "custom_id"
    else:
        return pd.Series(results.index.astype(str), index=results.index)
    return results[col].astype(str)


def _float(values: pd.Series) -> pd.Series:
    """Numbers as float64 with NaN for missing (results use nullable Int64 with pd.NA)."""
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _scored(results: pd.DataFrame) -> pd.Series:
    """Rows with a usable risk score: status succeeded and a numeric score."""
    score = _float(results["risk_score"])
    return (results["status"].astype(str) == "succeeded") & score.notna()


def _level_color(level: Any) -> str:
    key = str(level).strip().lower() if level is not None and not pd.isna(level) else ""
    return LEVEL_COLORS.get(key, OTHER_LEVEL_COLOR)


def _status_counts(statuses: pd.Series) -> str:
    counts = statuses.astype(str).value_counts()
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _new_figure(figsize: tuple[float, float] | None, default: tuple[float, float]) -> Figure:
    return _mpl().figure(figsize=figsize or default, layout="constrained")


def _root(ax: Axes) -> Figure:
    fig = ax.get_figure(root=True)
    if not isinstance(fig, _mpl().figure):
        raise InputError("ax= must be an Axes placed in a Figure (fig.add_subplot()).")
    return fig


def _axes(
    ax: Axes | None, figsize: tuple[float, float] | None, default: tuple[float, float]
) -> tuple[Figure, Axes]:
    """The Axes to draw into: the caller's (``ax=``) or one of a new Figure."""
    if ax is None:
        fig = _new_figure(figsize, default)
        return fig, fig.add_subplot()
    if not isinstance(ax, _mpl().axes):
        raise InputError(f"ax= must be a matplotlib Axes, got {type(ax).__name__}.")
    return _root(ax), ax


def _axes_pair(
    ax: Axes | Sequence[Axes] | None,
    figsize: tuple[float, float] | None,
    default: tuple[float, float],
    **subplots: Any,
) -> tuple[Figure, Axes, Axes | None]:
    """The two panels of a two-panel chart: a new Figure's, the caller's pair, or the caller's
    single Axes for the first panel only (the second is then None)."""
    if ax is None:
        fig = _new_figure(figsize, default)
        first, second = fig.subplots(1, 2, **subplots)
        return fig, first, second
    if isinstance(ax, _mpl().axes):
        return _root(ax), ax, None
    pair = list(ax) if isinstance(ax, Sequence) else []
    if len(pair) != 2 or not all(isinstance(a, _mpl().axes) for a in pair):
        raise InputError(
            "ax= takes one Axes (the first panel only) or a pair of Axes (both panels), "
            f"got {type(ax).__name__}."
        )
    return _root(pair[0]), pair[0], pair[1]


def _note(ax: Axes, text: str) -> None:
    # As the x label, so constrained layout keeps it clear of the bars.
    ax.set_xlabel(text, fontsize=8, color="#555555")


# -- risk -------------------------------------------------------------------------------------


def risk_by_position(
    results: pd.DataFrame,
    *,
    label: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars of ``risk_score`` per position, highest first, coloured by ``risk_level``.

    Positions without a score follow at the bottom as grey hatched bars labelled with their status.

        >>> fig = risk_by_position(results)    # doctest: +SKIP
    """
    _require(
        results,
        ["status", "risk_score", "risk_level"],
        name="results",
        fn="risk_by_position",
        hint=_RESULTS_HINT,
    )
    labels = _labels(results, label)
    ok = _scored(results)
    score = _float(results["risk_score"])
    order = score[ok].sort_values(ascending=False, kind="stable").index
    bad = results.index[~ok]
    n = len(order) + len(bad)
    fig, ax = _axes(ax, figsize, (8.0, max(2.5, 0.25 * n + 1.2)))
    y = np.arange(n)[::-1]
    width_bad = float(score[ok].max()) if ok.any() else 1.0
    ax.barh(
        y[: len(order)],
        score.loc[order].to_numpy(dtype=float),
        color=[_level_color(v) for v in results.loc[order, "risk_level"]],
        label="_scored",
    )
    if len(bad):
        bars = ax.barh(
            y[len(order) :],
            [width_bad] * len(bad),
            color="none",
            edgecolor=UNSCORED_COLOR,
            hatch=UNSCORED_HATCH,
            label="_unscored",
        )
        for rect, status in zip(bars, results.loc[bad, "status"].astype(str), strict=True):
            ax.text(
                rect.get_width() / 2,
                rect.get_y() + rect.get_height() / 2,
                status,
                ha="center",
                va="center",
                fontsize=8,
                color="#424242",
            )
    ax.set_yticks(y, list(labels.loc[order]) + list(labels.loc[bad]), fontsize=8)
    ax.set_xlabel("risk score")
    title = f"Risk by position ({len(order)} scored"
    title += f", {len(bad)} without a score)" if len(bad) else ")"
    ax.set_title(title)
    levels = [lv for lv in pd.unique(results.loc[order, "risk_level"].astype(str))]
    handles = [_mpl().patch(color=_level_color(lv), label=lv) for lv in levels]
    if len(bad):
        handles.append(
            _mpl().patch(
                facecolor="none",
                edgecolor=UNSCORED_COLOR,
                hatch=UNSCORED_HATCH,
                label=f"no score ({_status_counts(results.loc[bad, 'status'])})",
            )
        )
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8)
    return fig


def risk_vs_weight(
    results: pd.DataFrame,
    *,
    label: str | None = None,
    annotate: int = 8,
    highlight: pd.Series | np.ndarray | Iterable[Hashable] | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bubbles: ``weight`` on x, ``risk_score`` on y, bubble size by weight, colour by level.

    Positions without a score are drawn as grey crosses on the x axis, labelled, and counted in the
    legend. The ``annotate`` positions with the largest weight × risk are labelled.
    ``highlight`` (index labels or a boolean mask of ``results``, e.g. a dashboard's selection)
    draws those positions as usual and every other one as a faint grey bubble, so a subset is
    seen within the whole portfolio.

        >>> fig = risk_vs_weight(results)      # doctest: +SKIP
        >>> fig = risk_vs_weight(results, highlight=results["sector"] == "Energy")   # doctest: +SKIP
    """
    _require(
        results,
        ["status", "risk_score", "risk_level", "weight"],
        name="results",
        fn="risk_vs_weight",
        hint=_RESULTS_HINT,
    )
    labels = _labels(results, label)
    ok = _scored(results)
    score = _float(results["risk_score"])
    weight = _float(results["weight"]).fillna(0.0)
    # A short (negative weight) is as much exposure as a long of the same size: bubbles and labels
    # go by the absolute weight, while x keeps the sign so shorts sit left of zero.
    gross = weight.abs()
    wmax = float(gross.max()) if len(gross) and gross.max() > 0 else 1.0
    sizes = 30 + 900 * gross / wmax
    fig, ax = _axes(ax, figsize, (8.0, 5.0))
    n_all = len(results)
    if highlight is not None:
        chosen = _highlighted(results, highlight)
        faint = results.index[~chosen]
        if len(faint):
            ax.scatter(
                weight.loc[faint],
                score.loc[faint].fillna(0.0),
                s=sizes.loc[faint],
                color=UNSCORED_COLOR,
                alpha=0.35,
                edgecolors="none",
                label=f"not selected ({len(faint)})",
            )
        keep = results.index[chosen]
        results, ok, labels = results.loc[keep], ok.loc[keep], labels.loc[keep]
        score, weight, gross, sizes = (
            score.loc[keep],
            weight.loc[keep],
            gross.loc[keep],
            sizes.loc[keep],
        )
    levels = results.loc[ok, "risk_level"].astype(str)
    for lv in pd.unique(levels):
        idx = levels.index[levels == lv]
        ax.scatter(
            weight.loc[idx],
            score.loc[idx],
            s=sizes.loc[idx],
            color=_level_color(lv),
            alpha=0.6,
            edgecolors="white",
            label=lv,
        )
    bad = results.index[~ok]
    if len(bad):
        # Below the score range, on their own band, so they never read as a score of 0.
        smax = float(score[ok].max()) if ok.any() else 1.0
        y_bad = -0.12 * smax
        ax.axhline(y_bad / 2, color=UNSCORED_COLOR, linewidth=0.8, linestyle="--")
        ax.scatter(
            weight.loc[bad],
            np.full(len(bad), y_bad),
            s=60,
            marker="X",
            color=UNSCORED_COLOR,
            label=f"no score ({_status_counts(results.loc[bad, 'status'])})",
            zorder=3,
        )
        for k, i in enumerate(bad):
            ax.annotate(
                f"{labels.loc[i]} ({results.loc[i, 'status']})",
                (weight.loc[i], y_bad),
                textcoords="offset points",
                xytext=(6, -8 + 8 * (k % 3)),
                fontsize=8,
                color="#616161",
            )
    exposure = (gross[ok] * score[ok]).sort_values(ascending=False)
    for i in exposure.index[:annotate]:
        ax.annotate(
            labels.loc[i],
            (weight.loc[i], score.loc[i]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel("portfolio weight")
    ax.set_ylabel("risk score")
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    if highlight is not None:
        ax.set_title(f"Risk vs weight ({len(results)} selected of {n_all}, {int(ok.sum())} scored)")
    else:
        ax.set_title(f"Risk vs weight ({int(ok.sum())} scored of {n_all})")
    if len(results) or highlight is not None:
        ax.legend(fontsize=8, loc="best", markerscale=0.5)  # clear of the riskiest bubbles
    return fig


def _highlighted(
    results: pd.DataFrame, highlight: pd.Series | np.ndarray | Iterable[Hashable]
) -> pd.Series:
    """``highlight`` as a boolean Series on ``results.index``."""
    if isinstance(highlight, pd.Series) and highlight.dtype == bool:
        return highlight.reindex(results.index, fill_value=False).astype(bool)
    if isinstance(highlight, np.ndarray) and highlight.dtype == bool:
        if len(highlight) != len(results):
            raise InputError(
                f"highlight= is a mask of {len(highlight)} values for {len(results)} rows."
            )
        return pd.Series(highlight, index=results.index)
    wanted = pd.Index(list(highlight))
    unknown = wanted.difference(results.index)
    if len(unknown):
        raise InputError(
            f"highlight= names {len(unknown)} row(s) not in results, e.g. {unknown[0]!r}: pass "
            "index labels of results (e.g. selection.index) or a boolean mask."
        )
    return pd.Series(results.index.isin(wanted), index=results.index)


def sector_risk(
    results: pd.DataFrame,
    *,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Weight-averaged risk score per sector (left) beside the sector's portfolio weight (right).

    The weight bar is split into the scored part and a grey hatched part for positions without a
    score; a sector with no scored position shows a hatched "no scores" bar on the left.
    ``ax=`` a pair of Axes draws both panels, a single Axes the risk panel only.

        >>> fig = sector_risk(results)         # doctest: +SKIP
    """
    _require(
        results,
        ["status", "risk_score", "weight", "sector"],
        name="results",
        fn="sector_risk",
        hint=_RESULTS_HINT,
    )
    ok = _scored(results)
    frame = pd.DataFrame(
        {
            "sector": results["sector"].astype("string").fillna("(no sector)"),
            # Gross (absolute) weights: with shorts, a sector's net weight can sum to about zero,
            # which would blow its weighted score up or flip its sign.
            "weight": _float(results["weight"]).fillna(0.0).abs(),
            "score": _float(results["risk_score"]),
            "ok": ok,
        }
    )
    has_shorts = bool((_float(results["weight"]) < 0).any())
    frame["w_ok"] = frame["weight"].where(frame["ok"], 0.0)
    frame["ws"] = (frame["weight"] * frame["score"]).where(frame["ok"], 0.0)
    frame["n_bad"] = (~frame["ok"]).astype(int)
    g = frame.groupby("sector", sort=False).agg(
        weight=("weight", "sum"), w_ok=("w_ok", "sum"), ws=("ws", "sum"), n_bad=("n_bad", "sum")
    )
    g["risk"] = (g["ws"] / g["w_ok"]).where(g["w_ok"] > 0)
    g = g.sort_values(["risk", "weight"], ascending=[False, False], na_position="last")
    fig, ax_risk, ax_weight = _axes_pair(
        ax, figsize, (9.0, max(2.5, 0.4 * len(g) + 1.2)), sharey=True
    )
    y = np.arange(len(g))[::-1]
    has = g["risk"].notna().to_numpy()
    ax_risk.barh(y[has], g["risk"].to_numpy()[has], color=OTHER_LEVEL_COLOR, label="_risk")
    if (~has).any():
        fill = float(g["risk"].max()) if has.any() else 1.0
        ax_risk.barh(
            y[~has],
            [fill] * int((~has).sum()),
            color="none",
            edgecolor=UNSCORED_COLOR,
            hatch=UNSCORED_HATCH,
            label="no scores",
        )
        ax_risk.legend(fontsize=8, loc="lower right")
    ax_risk.set_yticks(y, list(g.index.astype(str)), fontsize=8)
    ax_risk.set_xlabel("weight-averaged risk score")
    ax_risk.set_title("Risk by sector")
    if ax_weight is None:
        return fig
    ax_weight.barh(y, g["w_ok"].to_numpy(), color="#90a4ae", label="scored weight")
    unscored_w = (g["weight"] - g["w_ok"]).to_numpy()
    if (unscored_w > 0).any():
        ax_weight.barh(
            y,
            unscored_w,
            left=g["w_ok"].to_numpy(),
            color="none",
            edgecolor=UNSCORED_COLOR,
            hatch=UNSCORED_HATCH,
            label="weight without a score",
        )
    for yy, (total, n_bad) in zip(y, zip(g["weight"], g["n_bad"], strict=True), strict=True):
        text = f"{total:.1%}" + (f" ({int(n_bad)} unscored)" if n_bad else "")
        ax_weight.text(total, yy, " " + text, va="center", fontsize=8)
    ax_weight.set_xlabel(
        "gross weight (shorts counted positive)" if has_shorts else "portfolio weight"
    )
    ax_weight.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax_weight.set_title("Sector weight")
    ax_weight.legend(fontsize=8, loc="lower right")
    ax_weight.set_xlim(0, max(float(g["weight"].max()) if len(g) else 0.0, 1e-9) * 1.45)
    return fig


# -- run health -------------------------------------------------------------------------------


def status_breakdown(
    results: pd.DataFrame,
    *,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Count of rows per status: every status of the contract is shown, zero counts included.

    >>> fig = status_breakdown(results)    # doctest: +SKIP
    """
    _require(results, ["status"], name="results", fn="status_breakdown", hint=_RESULTS_HINT)
    counts = results["status"].astype("string").fillna("missing").value_counts()
    names = list(STATUS_ORDER) + sorted(set(counts.index) - set(STATUS_ORDER))
    values = [int(counts.get(s, 0)) for s in names]
    fig, ax = _axes(ax, figsize, (7.0, 3.5))
    bars = ax.bar(names, values, color=[STATUS_COLORS.get(s, OTHER_LEVEL_COLOR) for s in names])
    ax.bar_label(bars, labels=[str(v) for v in values], fontsize=8)
    ax.set_ylabel("requests")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ok = values[0]
    ax.set_title(f"Request status ({ok} of {len(results)} succeeded)")
    ax.margins(y=0.15)
    return fig


def token_usage(
    results: pd.DataFrame,
    *,
    costs: pd.DataFrame | None = None,
    label: str | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Actual tokens per request (Results), beside the estimate (``costs=``, the Costs frame).

    Estimated is ``input_tokens + output_tokens_est`` from the Costs frame; actual is
    ``prompt_tokens + completion_tokens`` from the Results frame. A request with no usage
    (failed, missing) gets a grey hatched bar at its estimate and is counted in the title.

        >>> fig = token_usage(results, costs=costs)  # doctest: +SKIP
    """
    _require(
        results,
        ["prompt_tokens", "completion_tokens"],
        name="results",
        fn="token_usage",
        hint=_RESULTS_HINT,
    )
    labels = _labels(results, label)
    actual = _float(results["prompt_tokens"]) + _float(results["completion_tokens"])
    est: pd.Series | None = None
    if costs is not None:
        _require(
            costs,
            ["input_tokens", "output_tokens_est"],
            name="costs",
            fn="token_usage",
            hint=_COSTS_HINT,
        )
        est_all = _float(costs["input_tokens"]) + _float(costs["output_tokens_est"])
        est = est_all.reindex(results.index)
    x = np.arange(len(results))
    fig, ax = _axes(ax, figsize, (max(7.0, 0.22 * len(results) + 2), 4.0))
    have = actual.notna().to_numpy()
    width = 0.4 if est is not None else 0.8
    offset = width / 2 if est is not None else 0.0
    if est is not None:
        ax.bar(x - offset, est.fillna(0).to_numpy(), width, color="#90caf9", label="estimated")
    ax.bar(
        x[have] + offset,
        actual.to_numpy()[have],
        width,
        color="#1565c0",
        label="actual",
    )
    n_missing = int((~have).sum())
    if n_missing:
        placeholder = (
            est.fillna(0).to_numpy()[~have]
            if est is not None
            else np.full(n_missing, float(actual.max()) if have.any() else 1.0)
        )
        ax.bar(
            x[~have] + offset,
            placeholder,
            width,
            color="none",
            edgecolor=UNSCORED_COLOR,
            hatch=UNSCORED_HATCH,
            label=f"no usage ({_status_counts(results.loc[~have, 'status'])})"
            if "status" in results.columns
            else "no usage",
        )
    ax.set_xticks(x, list(labels), rotation=90, fontsize=8 if len(results) <= 60 else 6)
    ax.set_ylabel("tokens per request")
    title = "Tokens per request"
    if est is not None:
        total_est = float(est[have].sum())
        total_act = float(actual[have].sum())
        if total_est > 0:
            title += f": actual {total_act:,.0f} vs estimated {total_est:,.0f} ({(total_act / total_est - 1):+.0%})"
    if n_missing:
        title += f"; {n_missing} without usage"
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper center", ncols=3)
    return fig


def cost_breakdown(
    costs: pd.DataFrame,
    *,
    results: pd.DataFrame | None = None,
    figsize: tuple[float, float] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Estimated vs actual cost (left) and batch vs synchronous price (right), per model.

    A Costs frame of several models (alternatives priced side by side) gets one group of bars per
    model, never one sum. Without ``results=`` the actual bar is a hatched "not run yet"
    placeholder; requests with no ``cost_usd`` (failed, missing) are counted in a note. ``ax=`` a
    pair of Axes draws both panels, a single Axes the estimate panel only.

        >>> fig = cost_breakdown(costs, results=results)   # doctest: +SKIP
    """
    _require(
        costs,
        ["batch_cost_usd", "sync_cost_usd"],
        name="costs",
        fn="cost_breakdown",
        hint=_COSTS_HINT,
    )
    batch = _float(costs["batch_cost_usd"])
    sync = _float(costs["sync_cost_usd"])
    models = (
        costs["model"].astype("string").fillna("(model?)")
        if "model" in costs.columns
        else pd.Series("all", index=costs.index)
    )
    per = pd.DataFrame({"model": models, "batch": batch, "sync": sync}).groupby("model").sum()
    fig, ax_est, ax_sav = _axes_pair(ax, figsize, (9.0, 3.8))
    cost = None
    if results is not None:
        _require(results, ["cost_usd"], name="results", fn="cost_breakdown", hint=_RESULTS_HINT)
        cost = _float(results["cost_usd"])
    # a simulated run paid nothing: its cost_usd is what OpenAI would charge
    simulated = results is not None and bool(results.attrs.get("simulated"))
    actual_label = "at OpenAI prices\n(simulated)" if simulated else "actual"
    if len(per) == 1:
        est_total = float(batch.sum())
        bars = ax_est.bar(["estimated (batch)"], [est_total], color="#90caf9", label="estimated")
        ax_est.bar_label(bars, labels=[f"${est_total:,.4f}"], fontsize=8)
        if cost is not None:
            act_total = float(cost.sum())
            act_bars = ax_est.bar([actual_label], [act_total], color="#1565c0", label=actual_label)
            ax_est.bar_label(act_bars, labels=[f"${act_total:,.4f}"], fontsize=8)
            change = f" ({act_total / est_total - 1:+.0%})" if est_total > 0 else ""
            ax_est.set_title(f"Estimated vs actual{change}")
        else:
            placeholder = ax_est.bar(
                ["actual"],
                [est_total],
                color="none",
                edgecolor=UNSCORED_COLOR,
                hatch=UNSCORED_HATCH,
                label="not run yet",
            )
            ax_est.bar_label(placeholder, labels=["not run yet"], fontsize=8)
            ax_est.set_title("Estimated cost")
    else:
        x = np.arange(len(per))
        bars = ax_est.bar(x - 0.2, per["batch"].to_numpy(), 0.4, color="#90caf9", label="estimated")
        ax_est.bar_label(bars, labels=[f"${v:,.4f}" for v in per["batch"]], fontsize=8)
        if cost is not None and results is not None:
            by = "requested_model" if "requested_model" in results.columns else "model"
            spent = cost.groupby(results[by].astype("string")).sum()
            actual = spent.reindex(per.index).fillna(0.0).to_numpy()
            act_bars = ax_est.bar(x + 0.2, actual, 0.4, color="#1565c0", label=actual_label)
            ax_est.bar_label(act_bars, labels=[f"${v:,.4f}" for v in actual], fontsize=8)
            ax_est.set_title("Estimated vs actual, per model")
        else:
            ax_est.bar(
                x + 0.2,
                per["batch"].to_numpy(),
                0.4,
                color="none",
                edgecolor=UNSCORED_COLOR,
                hatch=UNSCORED_HATCH,
                label="not run yet",
            )
            ax_est.set_title(f"Estimated batch cost of {len(per)} models (alternatives)")
        ax_est.set_xticks(x, list(per.index.astype(str)), fontsize=8)
        ax_est.legend(fontsize=8)
    if cost is not None and results is not None:
        no_cost = results.loc[cost.isna()]
        if len(no_cost):
            detail = _status_counts(no_cost["status"]) if "status" in results.columns else ""
            _note(ax_est, f"{len(no_cost)} request(s) without a cost: {detail}")
    ax_est.set_ylabel("USD")
    ax_est.margins(y=0.2)
    if ax_sav is None:
        return fig

    x = np.arange(len(per))
    ax_sav.bar(x - 0.2, per["sync"].to_numpy(), 0.4, color="#ef9a9a", label="synchronous")
    batch_bars = ax_sav.bar(x + 0.2, per["batch"].to_numpy(), 0.4, color="#2e7d32", label="batch")
    saved = per["sync"] - per["batch"]
    ax_sav.bar_label(
        batch_bars,
        labels=[
            f"saves ${s:,.4f}" + (f" ({s / t:.0%})" if t > 0 else "")
            for s, t in zip(saved, per["sync"], strict=True)
        ],
        fontsize=8,
    )
    ax_sav.set_xticks(x, list(per.index.astype(str)), fontsize=8)
    ax_sav.set_ylabel("USD")
    if len(per) == 1:
        ax_sav.set_title(f"Batch vs sync: saves ${float(saved.sum()):,.4f}")
    else:
        # alternatives, not one run: a sum over models would mean nothing
        ax_sav.set_title("Batch vs sync, per model")
    ax_sav.legend(fontsize=8)
    ax_sav.margins(y=0.2)
    return fig


# -- the risk review (pb.report's charts) ---------------------------------------------------------
# Each draws into one Axes: ``ax=`` puts it into a figure of yours (a dashboard grid), else a new
# Figure is made. Weights are gross (|weight|): a short is exposure of its absolute size.

__all__ += ["concentration", "model_vs_proxy", "risk_contributions", "sector_view"]


def _by_level(levels: pd.Series) -> list[str]:
    """The distinct levels, least risk first (legend order)."""
    from portfolio_batch.review import level_rank

    return sorted(
        pd.unique(levels),
        key=lambda v: (level_rank(v) if level_rank(v) == level_rank(v) else 99, v),
    )


def risk_contributions(
    results: pd.DataFrame,
    *,
    top: int = 15,
    label: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The ``top`` risk contributions ``|weight| × risk_score``, largest first, coloured by
    risk level and labelled with their share of the portfolio's total contribution.

    Shorts are marked "(short)"; positions without a score are counted in the title.

        >>> fig = risk_contributions(results, top=10)     # doctest: +SKIP
    """
    from portfolio_batch.review import contributions

    _require(
        results,
        ["status", "risk_score", "weight"],
        name="results",
        fn="risk_contributions",
        hint=_RESULTS_HINT,
    )
    table = contributions(results, top=top)
    labels = _labels(results, label)
    ok = _scored(results)
    rows = results.index[ok]
    size = _float(results.loc[rows, "weight"]).abs() * _float(results.loc[rows, "risk_score"])
    order = size.sort_values(ascending=False, kind="stable").index[: len(table)]
    n = len(table)
    fig, ax = _axes(ax, figsize, (8.0, max(2.5, 0.32 * n + 1.3)))
    y = np.arange(n)[::-1]
    levels = results.loc[order, "risk_level"] if "risk_level" in results.columns else [None] * n
    bars = ax.barh(
        y,
        table["contribution"].to_numpy(dtype=float),
        color=[_level_color(v) for v in levels],
        label="_contributions",
    )
    weights = _float(results.loc[order, "weight"])
    names = [
        f"{labels.loc[i]} (short)" if w < 0 else str(labels.loc[i])
        for i, w in zip(order, weights, strict=True)
    ]
    ax.set_yticks(y, names, fontsize=8)
    ax.bar_label(
        bars,
        labels=[
            f" {s:.1%}  (w {abs(w):.1%} × {sc:.0f})"
            for s, w, sc in zip(table["share"], weights, table["risk_score"], strict=True)
        ],
        fontsize=7,
    )
    ax.set_xlabel("risk contribution = |weight| × risk score")
    if n:
        # every contribution 0 (all scores 0): a zero-width range warns, so keep a unit width
        ax.set_xlim(0, (float(table["contribution"].max()) or 1.0) * 1.45)
    cum = float(table["cum_share"].iloc[-1]) if n else 0.0
    title = f"Risk contributions: top {n} = {cum:.0%} of the total"
    unscored = int((~ok).sum())
    if unscored:
        title += f" ({unscored} without a score)"
    ax.set_title(title, fontsize=10)
    handles = [
        _mpl().patch(color=_level_color(lv), label=str(lv))
        for lv in _by_level(pd.Series(levels, dtype=object).astype(str))
    ]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    return fig


def sector_view(
    results: pd.DataFrame,
    *,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Per sector: the weighted risk score (bar, coloured by the level it falls in), the highest
    score in the sector (black tick, with its position) and the sector's gross weight, written
    beside each bar. Sectors are ordered by their share of the risk contribution.

    A sector without any scored position gets a grey hatched bar.

        >>> fig = sector_view(results)                    # doctest: +SKIP
    """
    from portfolio_batch.review import level_for, sectors

    _require(
        results,
        ["status", "risk_score", "weight", "sector"],
        name="results",
        fn="sector_view",
        hint=_RESULTS_HINT,
    )
    table = sectors(results)
    n = len(table)
    fig, ax = _axes(ax, figsize, (8.5, max(2.5, 0.42 * n + 1.4)))
    y = np.arange(n)[::-1]
    has = table["weighted_score"].notna().to_numpy() if n else np.zeros(0, dtype=bool)
    scores = table["weighted_score"].to_numpy(dtype=float) if n else np.zeros(0)
    colors = [_level_color(level_for(s, results=results)) for s in scores[has]]
    ax.barh(y[has], scores[has], color=colors, height=0.6, label="_weighted")
    if (~has).any():
        ax.barh(
            y[~has],
            [100.0] * int((~has).sum()),
            color="none",
            edgecolor=UNSCORED_COLOR,
            hatch=UNSCORED_HATCH,
            height=0.6,
            label="no scores",
        )
    top = table["max_score"].to_numpy(dtype=float) if n else np.zeros(0)
    ax.scatter(
        top[has], y[has], marker="|", s=260, linewidths=2.2, color="#212121", label="highest score"
    )
    for yy, row in zip(y, table.to_dict("records"), strict=True):
        text = f"{row['gross_weight']:.1%} of weight"
        if isinstance(row["max_position"], str):
            text += f" · max {row['max_score']:.0f} {row['max_position']}"
        if row["unscored"]:
            text += f" · {row['unscored']} unscored"
        ax.text(101, yy, text, va="center", fontsize=7)
        wscore = float(row["weighted_score"])
        if wscore == wscore:
            ax.text(
                wscore / 2,
                yy,
                f"{wscore:.0f}",
                va="center",
                ha="center",
                fontsize=7,
                color="white",
                fontweight="bold",
            )
    ax.set_yticks(y, list(table["sector"].astype(str)) if n else [], fontsize=8)
    ax.set_xlim(0, 160)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_xlabel("weighted risk score (by gross weight); | = highest score in the sector")
    ax.set_title("Sector view", fontsize=10)
    handles = [_mpl().patch(color=LEVEL_COLORS[lv], label=lv) for lv in ("low", "medium", "high")]
    # below the axes: the text beside the bars fills the right-hand side
    ax.legend(
        handles=handles,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncols=3,
        title="colour: the level the weighted score falls in",
        title_fontsize=7,
        frameon=False,
    )
    return fig


def concentration(
    results: pd.DataFrame,
    *,
    top_n: int = 10,
    label: str | None = None,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The ``top_n`` largest positions by gross weight (bars coloured by risk level, their score
    above each), the cumulative weight (line, right axis), and the portfolio's HHI, effective
    number of positions and the weighted score of the largest vs the rest in the title.

        >>> fig = concentration(results, top_n=10)        # doctest: +SKIP
    """
    from portfolio_batch.review import concentration as figures

    _require(
        results,
        ["status", "risk_score", "weight"],
        name="results",
        fn="concentration",
        hint=_RESULTS_HINT,
    )
    table = figures(results, top_n=top_n).set_index("metric")["value"]
    labels = _labels(results, label)
    w = _float(results["weight"]).fillna(0.0).abs()
    total = float(w.sum()) or 1.0
    order = (w / total).sort_values(ascending=False, kind="stable")
    shown = order.index[:top_n]
    ok = _scored(results)
    score = _float(results["risk_score"])
    fig, ax = _axes(ax, figsize, (8.5, 4.2))
    x = np.arange(len(shown))
    colors = [
        _level_color(results.at[i, "risk_level"])
        if ok.loc[i] and "risk_level" in results.columns
        else "none"
        for i in shown
    ]
    bars = ax.bar(x, order.loc[shown].to_numpy(), color=colors, edgecolor=UNSCORED_COLOR)
    for rect, i in zip(bars, shown, strict=True):
        if not ok.loc[i]:
            rect.set_hatch(UNSCORED_HATCH)
    ax.bar_label(
        bars,
        labels=[f"{score.loc[i]:.0f}" if ok.loc[i] else "n/a" for i in shown],
        fontsize=7,
    )
    ax.set_xticks(x, [str(labels.loc[i]) for i in shown], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of gross weight")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.margins(y=0.18)
    cum = ax.twinx()
    cum.plot(x, order.loc[shown].cumsum().to_numpy(), color="#455a64", marker="o", ms=3)
    cum.set_ylim(0, 1)
    cum.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    cum.set_ylabel("cumulative", fontsize=8, color="#455a64")
    hhi, eff = table["hhi"], table["effective_positions"]
    top_s, rest_s = table["top_n_score"], table["rest_score"]
    scores = (
        f"; weighted score {top_s:.0f} vs {rest_s:.0f} for the rest"
        if top_s is not None and rest_s is not None
        else ""
    )
    ax.set_title(
        f"Concentration: top {len(shown)} = {table['top_n_weight']:.0%} of gross weight; "
        f"HHI {hhi:.3f} (≈{eff:.0f} equal positions){scores}",
        fontsize=9,
    )
    ax.set_xlabel("bar label: risk score; colour: risk level", fontsize=8, color="#555555")
    return fig


def model_vs_proxy(
    results: pd.DataFrame,
    *,
    columns: tuple[str, ...] | list[str] = ("volatility", "beta"),
    annotate: int = 6,
    ax: Axes | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The model's score (y) against a quantitative proxy from the inputs (x: the mean
    percentile rank of ``columns`` in this portfolio, see ``review.quant_proxy``), with the
    straight-line fit and the ``annotate`` largest disagreements labelled (score minus fit).

        >>> fig = model_vs_proxy(results)                 # doctest: +SKIP
    """
    from portfolio_batch.review import quant_proxy

    _require(
        results,
        ["status", "risk_score"],
        name="results",
        fn="model_vs_proxy",
        hint=_RESULTS_HINT,
    )
    table = quant_proxy(results, columns=columns)
    key = next((c for c in table.columns if c not in ("risk_score", "risk_level")), None)
    fig, ax = _axes(ax, figsize, (8.0, 5.0))
    levels = (
        table["risk_level"].astype(str)
        if "risk_level" in table.columns
        else pd.Series("score", index=table.index)
    )
    for lv in _by_level(levels):
        part = table[levels == lv]
        ax.scatter(
            part["proxy"], part["risk_score"], color=_level_color(lv), alpha=0.75, s=36, label=lv
        )
    slope, intercept = table.attrs["fit"]
    xs = np.array([0.0, 100.0])
    ax.plot(xs, intercept + slope * xs, color="#757575", linestyle="--", linewidth=1, label="fit")
    for k, row in enumerate(table.head(annotate).itertuples(index=False)):
        name = getattr(row, key) if key else ""
        ax.annotate(
            f"{name} ({row.disagreement:+.0f})",
            (row.proxy, row.risk_score),
            textcoords="offset points",
            xytext=(6, 6 if k % 2 == 0 else -11),
            fontsize=7,
            fontweight="bold",
        )
    used = ", ".join(table.attrs["columns"])
    ax.set_xlabel(f"quantitative proxy: mean percentile rank of {used} in this portfolio")
    ax.set_ylabel("model's risk score")
    ax.set_xlim(-5, 110)
    rho = table.attrs["spearman"]
    rho_text = f"rank correlation {rho:.2f}" if rho == rho else "too few positions to correlate"
    ax.set_title(
        f"Model vs quantitative proxy ({rho_text}); labelled: largest disagreements",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    return fig
