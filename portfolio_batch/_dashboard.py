"""``dashboard(results)``: the interactive view of a results frame in a notebook.

    >>> import portfolio_batch as pb
    >>> dash = pb.dashboard(results)                                  # doctest: +SKIP
    >>> dash.filter(sector="Energy", level="high").selection          # doctest: +SKIP
    >>> dash.export_csv("energy-high.csv")                            # doctest: +SKIP

Filters (sector, risk level, status, a text search), a table sorted by any of its columns with
risk scores coloured green to red, a chart of the selection within the whole portfolio, the
selection's weight-weighted summary and an export of the selection to CSV. Built from standard
ipywidgets only (dropdowns, a text box, HTML and an image), so it works in JupyterLab, Notebook 7
and VS Code, and every update sets widget values from the kernel's main thread. Without widgets
(nbconvert, GitHub, a console) it renders as static HTML: the summary, the table and the chart.
The same filters and sort work from code (``filter``, ``sort_by``, ``selection``).
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from portfolio_batch.errors import InputError, missing_extra

__all__ = ["ALL", "NO_SCORE", "Dashboard", "dashboard"]

ALL = "(all)"
NO_SCORE = "(no score)"
_LEVEL_ORDER = ("critical", "very high", "high", "elevated", "medium", "moderate", "low")
_TEXT_COLUMNS = ("custom_id", "name", "sector", "rationale", "drivers", "error_code", "status")
_DEFAULT_COLUMNS = (
    "name",
    "sector",
    "weight",
    "risk_score",
    "risk_level",
    "drivers",
    "rationale",
    "status",
)
_SORTS = {
    "risk score": "risk_score",
    "exposure (|weight| × score)": "_exposure",
    "weight (gross)": "_gross",
}
_STATIC_ROWS = 500  # rows of the static HTML table (a saved notebook must stay small)


def _joined(value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "__iter__") and not isinstance(value, str | bytes | dict):
        return "; ".join(map(str, value))
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


class Dashboard:
    """Filters, a sorted table, a linked chart, a summary and a CSV export over one results frame.

    ``filter()`` and ``sort_by()`` change what is shown (and the widgets, when displayed);
    ``selection`` is the filtered, sorted frame; ``summary()`` its weight-weighted figures.

        >>> dash = Dashboard(results)                                  # doctest: +SKIP
        >>> dash.filter(search="china").sort_by("weight").selection    # doctest: +SKIP
    """

    def __init__(
        self,
        results: pd.DataFrame,
        *,
        key: str | None = None,
        columns: Sequence[str] | None = None,
        page_size: int = 25,
        chart: bool = True,
        export_dir: str | Path = ".",
    ) -> None:
        if not isinstance(results, pd.DataFrame):
            raise InputError(
                f"dashboard() needs the results DataFrame from aggregate_df() or "
                f"run.results(), got {type(results).__name__}."
            )
        if "status" not in results.columns:
            raise InputError(
                "dashboard(): the results frame has no 'status' column; pass the frame "
                "aggregate_df() or run.results() returned."
            )
        if not isinstance(page_size, int) or page_size < 1:
            raise InputError(f"page_size={page_size!r} must be a positive number of rows.")
        self.results = results
        self.key = key or next(
            (c for c in ("ticker", "position_key", "custom_id") if c in results.columns),
            str(results.columns[0]),
        )
        if self.key not in results.columns:
            raise InputError(
                f"key={self.key!r} is not a column of the results; pick one of "
                f"{list(map(str, results.columns))[:10]}."
            )
        wanted = list(columns) if columns is not None else [self.key, *_DEFAULT_COLUMNS]
        unknown = [c for c in wanted if c not in results.columns and columns is not None]
        if unknown:
            raise InputError(
                f"columns={unknown} are not in the results; it has {list(map(str, results.columns))}."
            )
        self.columns = [c for c in dict.fromkeys(wanted) if c in results.columns]
        self.page_size = page_size
        self.chart = chart
        self.export_dir = Path(export_dir)
        self._filters: dict[str, str] = {"sector": ALL, "level": ALL, "status": ALL, "search": ""}
        scored = "risk_score" in results.columns
        self._sort: tuple[str, bool] = ("risk_score", False) if scored else (self.key, True)
        self._frame = self._prepared(results)
        self._ui: dict[str, Any] | None = None
        self._syncing = False
        self.last_export: Path | None = None

    # -- data -----------------------------------------------------------------------------------
    def _prepared(self, results: pd.DataFrame) -> pd.DataFrame:
        """Helper columns for sorting and summaries, computed once."""
        out = pd.DataFrame(index=results.index)
        weight = (
            pd.to_numeric(results["weight"], errors="coerce").astype(float)
            if "weight" in results.columns
            else pd.Series(np.nan, index=results.index)
        )
        score = (
            pd.to_numeric(results["risk_score"], errors="coerce").astype(float)
            if "risk_score" in results.columns
            else pd.Series(np.nan, index=results.index)
        )
        out["_gross"] = weight.abs()
        out["_score"] = score
        out["_scored"] = (results["status"].astype(str) == "succeeded") & score.notna()
        out["_exposure"] = (weight.abs() * score).where(out["_scored"])
        text = [results[c].map(_joined).str.lower() for c in self._text_columns(results)]
        out["_text"] = (
            pd.concat(text, axis=1).agg(" ".join, axis=1)
            if text
            else pd.Series("", index=out.index)
        )
        return out

    def _text_columns(self, results: pd.DataFrame) -> list[str]:
        return [c for c in dict.fromkeys((self.key, *_TEXT_COLUMNS)) if c in results.columns]

    def sectors(self) -> list[str]:
        """The sector filter's choices: ``(all)`` then every sector, sorted."""
        if "sector" not in self.results.columns:
            return [ALL]
        return [ALL, *sorted(map(str, self.results["sector"].dropna().unique()))]

    def levels(self) -> list[str]:
        """The level filter's choices: ``(all)``, the levels present (most risk first), ``(no score)``."""
        if "risk_level" not in self.results.columns:
            return [ALL, NO_SCORE]
        present = [str(v) for v in self.results["risk_level"].dropna().unique()]
        ordered = sorted(
            present,
            key=lambda v: (_LEVEL_ORDER.index(v.lower()) if v.lower() in _LEVEL_ORDER else 99, v),
        )
        return [ALL, *ordered, NO_SCORE]

    def statuses(self) -> list[str]:
        """The status filter's choices: ``(all)`` then the statuses present."""
        return [ALL, *sorted(map(str, self.results["status"].dropna().unique()))]

    def sort_columns(self) -> dict[str, str]:
        """The sort choices: label → column (shown columns, plus exposure and gross weight)."""
        out = {label: col for label, col in _SORTS.items() if col != "risk_score"}
        if "risk_score" in self.results.columns:
            out = {"risk score": "risk_score", **out}
        if "weight" not in self.results.columns:
            out = {k: v for k, v in out.items() if v not in ("_exposure", "_gross")}
        for col in self.columns:
            if col not in out.values() and col not in ("drivers", "rationale"):
                out[col.replace("_", " ")] = col
        return out

    @property
    def filters(self) -> dict[str, str]:
        """The filters in force (``(all)`` means none)."""
        return dict(self._filters)

    @property
    def sort(self) -> tuple[str, bool]:
        """``(column, ascending)`` of the table."""
        return self._sort

    @property
    def mask(self) -> pd.Series:
        """True for the rows the filters keep."""
        r, f = self.results, self._filters
        keep = pd.Series(True, index=r.index)
        if f["sector"] != ALL and "sector" in r.columns:
            keep &= r["sector"].astype("string").fillna("") == f["sector"]
        if f["level"] == NO_SCORE:
            keep &= ~self._frame["_scored"]
        elif f["level"] != ALL and "risk_level" in r.columns:
            keep &= (r["risk_level"].astype("string").fillna("") == f["level"]) & self._frame[
                "_scored"
            ]
        if f["status"] != ALL:
            keep &= r["status"].astype("string").fillna("") == f["status"]
        words = f["search"].lower().split()
        for word in words:
            keep &= self._frame["_text"].str.contains(word, regex=False)
        return keep.astype(bool)

    @property
    def selection(self) -> pd.DataFrame:
        """The rows the filters keep, sorted as the table shows them (unscored rows last)."""
        keep = self.mask
        column, ascending = self._sort
        helper = self._frame.loc[keep]
        if column in ("_exposure", "_gross"):
            values = helper[column]
        elif column == "risk_score":
            values = helper["_score"]
        else:
            values = self.results.loc[keep, column].map(
                lambda v: v if isinstance(v, int | float | np.number) else _joined(v).lower()
            )
        order = pd.Series(values, index=helper.index)
        ranked = order.sort_values(ascending=ascending, na_position="last", kind="stable")
        return self.results.loc[ranked.index]

    # -- changes --------------------------------------------------------------------------------
    def filter(
        self,
        *,
        sector: str | None = None,
        level: str | None = None,
        status: str | None = None,
        search: str | None = None,
    ) -> Dashboard:
        """Set filters (``"(all)"`` clears one); returns the dashboard.

        >>> dash.filter(sector="Energy", level="(no score)")   # doctest: +SKIP
        """
        for name, value, choices in (
            ("sector", sector, self.sectors()),
            ("level", level, self.levels()),
            ("status", status, self.statuses()),
        ):
            if value is None:
                continue
            if value not in choices:
                raise InputError(f"{name}={value!r} is not one of the choices {choices}.")
            self._filters[name] = value
        if search is not None:
            self._filters["search"] = str(search)
        self._refresh(widgets_too=True)
        return self

    def sort_by(self, column: str, *, ascending: bool = False) -> Dashboard:
        """Sort the table by a column (or a ``sort_columns()`` label); highest first by default."""
        choices = self.sort_columns()
        col = choices.get(column, column)
        if col not in choices.values():
            raise InputError(f"Cannot sort by {column!r}; choose one of {list(choices)}.")
        self._sort = (col, bool(ascending))
        self._refresh(widgets_too=True)
        return self

    def summary(self) -> dict[str, Any]:
        """The selection in figures: positions, gross and net weight (share of the portfolio's
        gross weight), the gross-weight-weighted risk score of its scored positions, positions
        per level and those without a score.

        >>> dash.summary()["weighted_risk"]   # doctest: +SKIP
        57.3
        """
        keep = self.mask
        f = self._frame
        gross_all = float(f["_gross"].sum())
        sel = f.loc[keep]
        scored = sel[sel["_scored"]]
        w = float(scored["_gross"].sum())
        levels = (
            self.results.loc[scored.index, "risk_level"].astype(str).value_counts().to_dict()
            if "risk_level" in self.results.columns
            else {}
        )
        weights = (
            pd.to_numeric(self.results.loc[keep, "weight"], errors="coerce")
            if "weight" in self.results.columns
            else pd.Series(dtype=float)
        )
        return {
            "positions": int(keep.sum()),
            "of": len(self.results),
            "gross_weight": float(sel["_gross"].sum()),
            "net_weight": float(weights.sum()),
            "share_of_gross": float(sel["_gross"].sum()) / gross_all if gross_all else None,
            "weighted_risk": float((scored["_gross"] * scored["_score"]).sum()) / w if w else None,
            "mean_risk": float(scored["_score"].mean()) if len(scored) else None,
            "levels": {str(k): int(v) for k, v in levels.items()},
            "unscored": int((~sel["_scored"]).sum()),
            "unscored_weight": float(sel.loc[~sel["_scored"], "_gross"].sum()),
        }

    def export_csv(self, path: str | Path | None = None) -> Path:
        """Write the selection (as sorted, lists joined with "; ") to CSV; returns the path.
        By default ``<export_dir>/selection-<time>.csv``."""
        target = (
            Path(path)
            if path is not None
            else self.export_dir / time.strftime("selection-%Y%m%d-%H%M%S.csv")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        self._csv_frame().to_csv(target, index=False)
        self.last_export = target
        return target

    def _csv_frame(self) -> pd.DataFrame:
        out = self.selection.drop(columns=["content"], errors="ignore").copy()
        for col in out.columns:
            if out[col].map(lambda v: isinstance(v, list | tuple | np.ndarray)).any():
                out[col] = out[col].map(_joined)
        return out

    # -- rendering ------------------------------------------------------------------------------
    def summary_html(self) -> str:
        s = self.summary()
        parts = [f"<b>{s['positions']}</b> of {s['of']} positions"]
        if "weight" in self.results.columns:
            share = f" ({s['share_of_gross']:.0%} of the portfolio)" if s["share_of_gross"] else ""
            parts.append(f"gross weight {s['gross_weight']:.1%}{share}")
            if abs(s["net_weight"] - s["gross_weight"]) > 1e-9:
                parts.append(f"net {s['net_weight']:.1%}")
        if s["weighted_risk"] is not None:
            from portfolio_batch._widgets import score_style

            parts.append(
                f'weight-weighted risk <span style="{score_style(s["weighted_risk"])};'
                f'padding:0 4px">{s["weighted_risk"]:.1f}</span>'
            )
        if s["levels"]:
            parts.append(
                " / ".join(f"{html.escape(k)} {v}" for k, v in sorted(s["levels"].items()))
            )
        if s["unscored"]:
            parts.append(
                f'<span style="color:#757575">{s["unscored"]} without a score '
                f"({s['unscored_weight']:.1%} weight)</span>"
            )
        return '<div class="pb-dash-summary">' + " · ".join(parts) + "</div>"

    def table_html(self, limit: int | None = None) -> str:
        from portfolio_batch._widgets import results_table_html

        sel = self.selection
        rows = sel if limit is None else sel.head(limit)
        column, ascending = self._sort
        label = next((k for k, v in self.sort_columns().items() if v == column), column)
        caption = (
            f"showing {len(rows)} of {len(sel)} selected, by {label} "
            f"({'lowest' if ascending else 'highest'} first)"
        )
        return results_table_html(rows, self.columns, css_class="pb-dash", caption=caption)

    def chart_png(self, *, dpi: int = 80) -> bytes:
        """The linked chart as PNG: the selection within the whole portfolio (risk vs weight),
        or the selection's status counts when there are no weights."""
        from portfolio_batch import charts

        keep = self.mask
        if {"weight", "risk_score", "risk_level"} <= set(self.results.columns):
            fig = charts.risk_vs_weight(
                self.results, highlight=keep, annotate=5, figsize=(6.0, 4.0)
            )
        else:
            fig = charts.status_breakdown(self.results.loc[keep], figsize=(6.0, 3.5))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()

    def to_html(self) -> str:
        """The dashboard as static HTML (no widgets): summary, table (first 500 rows), chart."""
        chart = ""
        if self.chart:
            data = base64.b64encode(self.chart_png()).decode()
            chart = f'<img alt="risk vs weight" src="data:image/png;base64,{data}"/>'
        f = self._filters
        active = ", ".join(f"{k} {html.escape(v)!s}" for k, v in f.items() if v not in (ALL, ""))
        note = (
            "<p style='color:#757575'>Static view"
            + (f" (filters: {active})" if active else "")
            + ": the filters and sorting need a live kernel with ipywidgets.</p>"
        )
        return (
            '<div class="pb-dashboard">'
            + self.summary_html()
            + note
            + chart
            + self.table_html(limit=_STATIC_ROWS)
            + "</div>"
        )

    def __repr__(self) -> str:
        s = self.summary()
        risk = f", weight-weighted risk {s['weighted_risk']:.1f}" if s["weighted_risk"] else ""
        return f"<Dashboard: {s['positions']} of {s['of']} positions selected{risk}>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from portfolio_batch._widgets import in_notebook

        if not in_notebook():
            display({"text/html": self.to_html(), "text/plain": repr(self)}, raw=True)
            return
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/html"] = self.to_html()  # saved notebooks, nbconvert, GitHub
        bundle["text/plain"] = repr(self)
        display(bundle, raw=True)

    # -- widgets --------------------------------------------------------------------------------
    @property
    def widget(self) -> Any:
        """The ipywidgets box (built on first use)."""
        if self._ui is None:
            self._ui = self._build()
            self._refresh(widgets_too=True)
        return self._ui["box"]

    def _build(self) -> dict[str, Any]:
        try:
            import ipywidgets as w
        except ImportError as exc:
            raise missing_extra("ipywidgets", "notebook") from exc
        narrow = w.Layout(width="230px")
        ui: dict[str, Any] = {
            "sector": w.Dropdown(options=self.sectors(), description="Sector", layout=narrow),
            "level": w.Dropdown(options=self.levels(), description="Level", layout=narrow),
            "status": w.Dropdown(options=self.statuses(), description="Status", layout=narrow),
            "search": w.Text(
                description="Search",
                placeholder="ticker, name, rationale… (Enter)",
                continuous_update=False,
                layout=w.Layout(width="320px"),
            ),
            "sort": w.Dropdown(
                options=list(self.sort_columns()), description="Sort by", layout=narrow
            ),
            "order": w.ToggleButtons(
                options=["highest first", "lowest first"], style={"button_width": "100px"}
            ),
            "export": w.Button(description="Export CSV", icon="download"),
            "summary": w.HTML(),
            "table": w.HTML(layout=w.Layout(max_height="520px", overflow="auto")),
            "chart": w.Image(format="png", layout=w.Layout(width="480px")),
            "message": w.HTML(),
        }
        for name in ("sector", "level", "status", "search", "sort", "order"):
            ui[name].observe(self._on_change, names="value")
        ui["export"].on_click(lambda _b: self._on_export())
        ui["box"] = w.VBox(
            [
                w.HBox([ui["sector"], ui["level"], ui["status"], ui["search"]]),
                w.HBox([ui["sort"], ui["order"], ui["export"]]),
                ui["summary"],
                ui["message"],
                *([ui["chart"]] if self.chart else []),
                ui["table"],
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        ui["box"].add_class("pb-dashboard")
        return ui

    def _on_change(self, _change: Any) -> None:
        if self._syncing or self._ui is None:
            return
        ui = self._ui
        for name in ("sector", "level", "status"):
            self._filters[name] = ui[name].value
        self._filters["search"] = ui["search"].value
        column = self.sort_columns().get(ui["sort"].value, self._sort[0])
        self._sort = (column, ui["order"].value == "lowest first")
        self._refresh(widgets_too=False)

    def _on_export(self) -> None:
        # a button callback: no cell shows its output, so the outcome goes in the message line
        ui = self._ui
        if ui is None:
            return
        try:
            path = self.export_csv()
        except (OSError, InputError) as exc:
            ui["message"].value = f'<span style="color:#c62828">{html.escape(str(exc))}</span>'
            return
        data = self._csv_frame().to_csv(index=False).encode()
        link = (
            f' · <a download="{html.escape(path.name)}" '
            f'href="data:text/csv;base64,{base64.b64encode(data).decode()}">download</a>'
            if len(data) <= 2 * 2**20
            else ""
        )
        ui[
            "message"
        ].value = (
            f"Exported {len(self.selection)} row(s) to {html.escape(str(path.resolve()))}{link}"
        )

    def _refresh(self, *, widgets_too: bool) -> None:
        ui = self._ui
        if ui is None:
            return
        if widgets_too:
            # the controls follow a change made from code, without firing _on_change
            self._syncing = True
            try:
                for name in ("sector", "level", "status", "search"):
                    ui[name].value = self._filters[name]
                label = next(
                    (k for k, v in self.sort_columns().items() if v == self._sort[0]),
                    ui["sort"].value,
                )
                ui["sort"].value = label
                ui["order"].value = "lowest first" if self._sort[1] else "highest first"
            finally:
                self._syncing = False
        ui["summary"].value = self.summary_html()
        ui["table"].value = self.table_html(limit=self.page_size)
        if self.chart:
            ui["chart"].value = self.chart_png()


def dashboard(
    results: pd.DataFrame,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
    page_size: int = 25,
    chart: bool = True,
    export_dir: str | Path = ".",
) -> Dashboard:
    """The interactive view of a results frame: filters (sector, risk level, status, text
    search), a sortable table with colour-coded scores, a chart of the selection within the
    portfolio, the selection's weight-weighted summary and an export to CSV. Displays itself as
    widgets in a notebook, as static HTML elsewhere.

        >>> pb.dashboard(results)                                   # doctest: +SKIP
        >>> pb.dashboard(results).filter(level="high").summary()    # doctest: +SKIP
    """
    return Dashboard(
        results,
        key=key,
        columns=columns,
        page_size=page_size,
        chart=chart,
        export_dir=export_dir,
    )
