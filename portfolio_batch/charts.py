"""Charts of a run: each takes the Results (``aggregate_df``) and/or Costs (``estimate_cost``) frames
and returns a matplotlib ``Figure``.

    >>> from portfolio_batch import charts
    >>> fig = charts.risk_by_position(results)      # doctest: +SKIP
    >>> fig.savefig("risk.png")                     # doctest: +SKIP

Rows without a score (failed, expired, cancelled, missing, invalid_output) are never dropped
silently: they are drawn as grey hatched bars or markers and counted in the title or a note.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so returning one from a cell
shows it exactly once and nothing piles up across calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from portfolio_batch.errors import InputError

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

STATUS_ORDER = ("succeeded", "failed", "expired", "cancelled", "invalid_output", "missing")
STATUS_COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "expired": "#ef6c00",
    "cancelled": "#6d4c41",
    "invalid_output": "#8e24aa",
    "missing": "#9e9e9e",
}
LEVEL_COLORS = {
    "low": "#2e7d32",
    "medium": "#f9a825",
    "moderate": "#f9a825",
    "elevated": "#ef6c00",
    "high": "#c62828",
    "critical": "#6a1b9a",
    "very high": "#6a1b9a",
}
OTHER_LEVEL_COLOR = "#1e88e5"
UNSCORED_COLOR = "#bdbdbd"
UNSCORED_HATCH = "//"


# -- helpers ----------------------------------------------------------------------------------


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
    return Figure(figsize=figsize or default, layout="constrained")


def _note(ax: Axes, text: str) -> None:
    # As the x label, so constrained layout keeps it clear of the bars.
    ax.set_xlabel(text, fontsize=8, color="#555555")


# -- risk -------------------------------------------------------------------------------------


def risk_by_position(
    results: pd.DataFrame,
    *,
    label: str | None = None,
    figsize: tuple[float, float] | None = None,
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
    fig = _new_figure(figsize, (8.0, max(2.5, 0.25 * n + 1.2)))
    ax = fig.add_subplot()
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
                fontsize=7,
                color="#424242",
            )
    ax.set_yticks(y, list(labels.loc[order]) + list(labels.loc[bad]), fontsize=7)
    ax.set_xlabel("risk score")
    title = f"Risk by position ({len(order)} scored"
    title += f", {len(bad)} without a score)" if len(bad) else ")"
    ax.set_title(title)
    levels = [lv for lv in pd.unique(results.loc[order, "risk_level"].astype(str))]
    handles = [Patch(color=_level_color(lv), label=lv) for lv in levels]
    if len(bad):
        handles.append(
            Patch(
                facecolor="none",
                edgecolor=UNSCORED_COLOR,
                hatch=UNSCORED_HATCH,
                label=f"no score ({_status_counts(results.loc[bad, 'status'])})",
            )
        )
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7)
    return fig


def risk_vs_weight(
    results: pd.DataFrame,
    *,
    label: str | None = None,
    annotate: int = 8,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Bubbles: ``weight`` on x, ``risk_score`` on y, bubble size by weight, colour by level.

    Positions without a score are drawn as grey crosses on the x axis, labelled, and counted in the
    legend. The ``annotate`` positions with the largest weight × risk are labelled.

        >>> fig = risk_vs_weight(results)      # doctest: +SKIP
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
    fig = _new_figure(figsize, (8.0, 5.0))
    ax = fig.add_subplot()
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
                fontsize=7,
                color="#616161",
            )
    exposure = (gross[ok] * score[ok]).sort_values(ascending=False)
    for i in exposure.index[:annotate]:
        ax.annotate(
            labels.loc[i],
            (weight.loc[i], score.loc[i]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=7,
        )
    ax.set_xlabel("portfolio weight")
    ax.set_ylabel("risk score")
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_title(f"Risk vs weight ({int(ok.sum())} scored of {len(results)})")
    if len(results):
        ax.legend(fontsize=7, loc="upper right", markerscale=0.5)
    return fig


def sector_risk(
    results: pd.DataFrame,
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Weight-averaged risk score per sector (left) beside the sector's portfolio weight (right).

    The weight bar is split into the scored part and a grey hatched part for positions without a
    score; a sector with no scored position shows a hatched "no scores" bar on the left.

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
    fig = _new_figure(figsize, (9.0, max(2.5, 0.4 * len(g) + 1.2)))
    ax_risk, ax_weight = fig.subplots(1, 2, sharey=True)
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
        ax_risk.legend(fontsize=7, loc="lower right")
    ax_risk.set_yticks(y, list(g.index.astype(str)), fontsize=8)
    ax_risk.set_xlabel("weight-averaged risk score")
    ax_risk.set_title("Risk by sector")
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
        ax_weight.text(total, yy, " " + text, va="center", fontsize=7)
    ax_weight.set_xlabel(
        "gross weight (shorts counted positive)" if has_shorts else "portfolio weight"
    )
    ax_weight.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax_weight.set_title("Sector weight")
    ax_weight.legend(fontsize=7, loc="lower right")
    ax_weight.set_xlim(0, max(float(g["weight"].max()) if len(g) else 0.0, 1e-9) * 1.45)
    return fig


# -- run health -------------------------------------------------------------------------------


def status_breakdown(
    results: pd.DataFrame,
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Count of rows per status: every status of the contract is shown, zero counts included.

    >>> fig = status_breakdown(results)    # doctest: +SKIP
    """
    _require(results, ["status"], name="results", fn="status_breakdown", hint=_RESULTS_HINT)
    counts = results["status"].astype("string").fillna("missing").value_counts()
    names = list(STATUS_ORDER) + sorted(set(counts.index) - set(STATUS_ORDER))
    values = [int(counts.get(s, 0)) for s in names]
    fig = _new_figure(figsize, (7.0, 3.5))
    ax = fig.add_subplot()
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
    costs: pd.DataFrame | None = None,
    *,
    label: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Estimated vs actual tokens per request.

    Estimated is ``input_tokens + output_tokens_est`` from the Costs frame; actual is
    ``prompt_tokens + completion_tokens`` from the Results frame. A request with no usage
    (failed, missing) gets a grey hatched bar at its estimate and is counted in the title.

        >>> fig = token_usage(results, costs)  # doctest: +SKIP
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
    fig = _new_figure(figsize, (max(7.0, 0.22 * len(results) + 2), 4.0))
    ax = fig.add_subplot()
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
    ax.set_xticks(x, list(labels), rotation=90, fontsize=6)
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
    ax.legend(fontsize=7, loc="upper center", ncols=3)
    return fig


def cost_breakdown(
    costs: pd.DataFrame,
    results: pd.DataFrame | None = None,
    *,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Estimated vs actual cost (left) and batch vs synchronous price per model (right).

    Without ``results`` the actual bar is a hatched "not run yet" placeholder; requests with no
    ``cost_usd`` (failed, missing) are counted in a note.

        >>> fig = cost_breakdown(costs, results)   # doctest: +SKIP
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
    fig = _new_figure(figsize, (9.0, 3.8))
    ax_est, ax_sav = fig.subplots(1, 2)
    est_total = float(batch.sum())
    bars = ax_est.bar(["estimated (batch)"], [est_total], color="#90caf9", label="estimated")
    labels = [f"${est_total:,.4f}"]
    if results is not None:
        _require(results, ["cost_usd"], name="results", fn="cost_breakdown", hint=_RESULTS_HINT)
        cost = _float(results["cost_usd"])
        act_total = float(cost.sum())
        # a simulated run paid nothing: its cost_usd is what OpenAI would charge
        actual = "at OpenAI prices\n(simulated)" if results.attrs.get("simulated") else "actual"
        act_bars = ax_est.bar([actual], [act_total], color="#1565c0", label=actual)
        ax_est.bar_label(act_bars, labels=[f"${act_total:,.4f}"], fontsize=8)
        no_cost = results.loc[cost.isna()]
        if len(no_cost):
            detail = _status_counts(no_cost["status"]) if "status" in results.columns else ""
            _note(ax_est, f"{len(no_cost)} request(s) without a cost: {detail}")
        if est_total > 0:
            ax_est.set_title(f"Estimated vs actual ({act_total / est_total - 1:+.0%})")
        else:
            ax_est.set_title("Estimated vs actual")
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
    ax_est.bar_label(bars, labels=labels, fontsize=8)
    ax_est.set_ylabel("USD")
    ax_est.margins(y=0.2)

    models = (
        costs["model"].astype("string").fillna("(model?)")
        if "model" in costs.columns
        else pd.Series("all", index=costs.index)
    )
    per = pd.DataFrame({"model": models, "batch": batch, "sync": sync}).groupby("model").sum()
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
        fontsize=7,
    )
    ax_sav.set_xticks(x, list(per.index.astype(str)), fontsize=8)
    ax_sav.set_ylabel("USD")
    ax_sav.set_title(f"Batch vs sync: saves ${float(saved.sum()):,.4f}")
    ax_sav.legend(fontsize=7)
    ax_sav.margins(y=0.2)
    return fig
