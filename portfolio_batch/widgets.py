"""Notebook display: the progress panel ``poll(..., progress=True)`` shows, and a rich jobs table.

    >>> from portfolio_batch.widgets import ProgressPanel, in_notebook
    >>> panel = ProgressPanel(jobs, est_cost_usd=0.42)   # doctest: +SKIP
    >>> panel.update(refreshed_jobs)                     # doctest: +SKIP
    >>> panel.close()                                    # doctest: +SKIP

The panel is one ipywidgets ``VBox`` (a line per shard, the overall counts, elapsed, ETA and cost).
It is displayed with a bundle holding both the live widget and a plain HTML/text rendering, so a
saved notebook or an ``nbconvert`` export without widget state still shows the last known state.
ipywidgets is imported lazily; without it the panel raises an install hint.
"""

from __future__ import annotations

import html
import importlib.util
import math
import numbers
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd

from portfolio_batch.errors import InputError, missing_extra

__all__ = [
    "STATUS_STYLES",
    "JobsFrame",
    "ProgressPanel",
    "in_notebook",
    "jobs_table",
    "jobs_table_html",
]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

# status -> (badge colour, IntProgress bar_style). Terminal states each get their own colour and
# `finalizing` is distinct from `completed`: its counts are final but the output file is not ready.
STATUS_STYLES: dict[str, tuple[str, str]] = {
    "queued": ("#9e9e9e", ""),
    "validating": ("#607d8b", ""),
    "in_progress": ("#1e88e5", "info"),
    "finalizing": ("#8e24aa", "info"),
    "cancelling": ("#f57c00", "warning"),
    "completed": ("#2e7d32", "success"),
    "failed": ("#c62828", "danger"),
    "expired": ("#ef6c00", "warning"),
    "cancelled": ("#6d4c41", "danger"),
}
_UNKNOWN_STYLE = ("#757575", "")


def in_notebook() -> bool:
    """True inside a Jupyter kernel with ipywidgets importable (where the panel can render).

    >>> in_notebook()
    False
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return False
    return importlib.util.find_spec("ipywidgets") is not None


def _num(value: Any) -> int:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0
    return 0 if math.isnan(out) else int(out)


def _text(value: Any, default: str = "") -> str:
    if value is None:
        return default
    try:
        if pd.isna(value):
            return default
    except (TypeError, ValueError):
        pass
    return str(value)


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "–"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _badge(status: str) -> str:
    colour = STATUS_STYLES.get(status, _UNKNOWN_STYLE)[0]
    return (
        f'<span class="pb-status pb-status-{html.escape(status)}" style="background:{colour};'
        'color:#fff;border-radius:3px;padding:0 6px;font-size:90%;font-family:monospace">'
        f"{html.escape(status)}</span>"
    )


def _shard_rows(jobs: pd.DataFrame) -> list[dict[str, Any]]:
    """One plain dict per shard, with totals that make sense before the server reports any."""
    if not isinstance(jobs, pd.DataFrame):
        raise InputError(
            f"ProgressPanel needs the jobs DataFrame from submit()/poll(), got {type(jobs).__name__}"
        )
    if "status" not in jobs.columns:
        raise InputError(
            "the jobs frame has no 'status' column; pass the frame returned by submit() or poll()"
        )
    rows = []
    for position, rec in enumerate(jobs.to_dict("records")):
        completed, failed = _num(rec.get("completed")), _num(rec.get("failed"))
        # request_counts.total stays 0 while validating: fall back to the shard's own size.
        total = max(_num(rec.get("n_requests")), completed + failed)
        rows.append(
            {
                "key": (_text(rec.get("run_id")), _text(rec.get("shard"), str(position))),
                "shard": _text(rec.get("shard"), str(position)),
                "batch_id": _text(rec.get("batch_id"), "(waiting for queue capacity)"),
                "status": _text(rec.get("status"), "queued"),
                "completed": completed,
                "failed": failed,
                "total": total,
                "est_cost_usd": rec.get("est_cost_usd"),
            }
        )
    return rows


class ProgressPanel:
    """One live panel for a whole run: a line per shard plus overall counts, elapsed, ETA, cost.

    Construct it with the jobs frame (it displays itself in the notebook), call ``update`` with each
    refreshed frame and ``close`` when polling ends. ``update`` only sets widget values; it never
    waits on the frontend.

        >>> panel = ProgressPanel(jobs, est_cost_usd=1.25)   # doctest: +SKIP
        >>> panel.update(pb.jobs(run_id))                    # doctest: +SKIP
    """

    def __init__(
        self,
        jobs: pd.DataFrame,
        *,
        est_cost_usd: float | None = None,
        display: bool = True,
        title: str = "Batch progress",
    ) -> None:
        try:
            import ipywidgets as w
        except ImportError as exc:
            raise missing_extra("ipywidgets", "notebook") from exc
        self._w = w
        self._title = title
        self._est_cost_usd = est_cost_usd
        self._started = time.monotonic()
        self._finished: float | None = None
        self._rows: list[dict[str, Any]] = []
        self._lines: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._statuses: tuple[str, ...] = ()
        self._header = w.HTML()
        self._overall_bar = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="320px"))
        self._overall_text = w.HTML()
        self._shard_box = w.VBox()
        self._footer = w.HTML()
        self.widget = w.VBox(
            [
                self._header,
                self._shard_box,
                w.HBox([self._overall_bar, self._overall_text]),
                self._footer,
            ],
            layout=w.Layout(border="1px solid #ddd", padding="6px"),
        )
        self._handle: Any = None
        self._apply(jobs)
        if display:
            from IPython.display import display as ipy_display

            self._handle = ipy_display(self, display_id=True)

    # -- state ---------------------------------------------------------------------------------

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The shard lines as last shown (``batch_id``, ``status``, ``completed``, ``failed``, ``total``)."""
        return [dict(r) for r in self._rows]

    @property
    def totals(self) -> dict[str, int]:
        """Overall ``completed``, ``failed`` and ``total`` across shards."""
        return {
            "completed": sum(r["completed"] for r in self._rows),
            "failed": sum(r["failed"] for r in self._rows),
            "total": sum(r["total"] for r in self._rows),
        }

    @property
    def done(self) -> bool:
        """Every shard is in a terminal state (completed, failed, expired, cancelled)."""
        return bool(self._rows) and all(r["status"] in TERMINAL for r in self._rows)

    def elapsed(self) -> float:
        end = self._finished if self._finished is not None else time.monotonic()
        return end - self._started

    def eta(self) -> float | None:
        """Seconds left, from the rate so far; None before the first request finishes."""
        t = self.totals
        finished = t["completed"] + t["failed"]
        if self.done:
            return 0.0
        if finished == 0 or t["total"] == 0:
            return None
        return self.elapsed() * (t["total"] - finished) / finished

    def cost_estimate(self) -> float | None:
        if self._est_cost_usd is not None:
            return float(self._est_cost_usd)
        costs = [r["est_cost_usd"] for r in self._rows if r["est_cost_usd"] is not None]
        costs = [float(c) for c in costs if not pd.isna(c)]
        return sum(costs) if costs else None

    # -- updates -------------------------------------------------------------------------------

    def update(self, jobs: pd.DataFrame) -> None:
        """Show a refreshed jobs frame. Cheap: sets widget values, rebuilds lines only for new shards."""
        self._apply(jobs)

    def close(self) -> None:
        """Stop the clock and write the final state into the saved output (the text fallback).

        The widget itself stays open so the notebook keeps showing it.
        """
        if self._finished is None:
            self._finished = time.monotonic()
        self._render_summary()
        self._refresh_output()

    def _apply(self, jobs: pd.DataFrame) -> None:
        rows = _shard_rows(jobs)
        self._rows = rows
        if [r["key"] for r in rows] != list(self._lines):
            self._lines = {r["key"]: self._make_line() for r in rows}
            self._shard_box.children = [
                self._w.HBox(list(parts), layout=self._w.Layout(align_items="center"))
                for parts in self._lines.values()
            ]
        for row in rows:
            label, bar, counts = self._lines[row["key"]]
            label.value = (
                f'<span style="font-family:monospace">shard {html.escape(row["shard"])} · '
                f"{html.escape(row['batch_id'])}</span> {_badge(row['status'])}"
            )
            bar.max = max(row["total"], 1)
            bar.value = min(row["completed"] + row["failed"], bar.max)
            bar.bar_style = STATUS_STYLES.get(row["status"], _UNKNOWN_STYLE)[1]
            counts.value = self._counts_html(row)
        if self.done and self._finished is None:
            self._finished = time.monotonic()
        self._render_summary()
        statuses = tuple(r["status"] for r in rows)
        # Re-send the saved bundle only when a status changes: keeps the fallback current without
        # re-rendering the frontend view on every count tick.
        if statuses != self._statuses:
            self._statuses = statuses
            self._refresh_output()

    def _make_line(self) -> tuple[Any, Any, Any]:
        w = self._w
        return (
            w.HTML(layout=w.Layout(width="420px")),
            w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="220px")),
            w.HTML(),
        )

    @staticmethod
    def _counts_html(row: Mapping[str, Any]) -> str:
        failed = (
            f' <span style="color:#c62828">{row["failed"]} failed</span>' if row["failed"] else ""
        )
        return f"{row['completed']} done{failed} / {row['total']}"

    def _render_summary(self) -> None:
        t = self.totals
        n_done = sum(r["status"] in TERMINAL for r in self._rows)
        self._header.value = (
            f"<b>{html.escape(self._title)}</b>: {len(self._rows)} shard(s), {n_done} finished"
        )
        self._overall_bar.max = max(t["total"], 1)
        self._overall_bar.value = min(t["completed"] + t["failed"], self._overall_bar.max)
        self._overall_bar.bar_style = (
            "success"
            if self.done and t["failed"] == 0
            else "danger"
            if self.done
            else "info"
            if t["completed"] + t["failed"]
            else ""
        )
        self._overall_text.value = (
            f"<b>overall</b> {t['completed']} completed, {t['failed']} failed / {t['total']}"
        )
        self._footer.value = html.escape(self._footer_text())

    def _footer_text(self) -> str:
        cost = self.cost_estimate()
        cost_text = f"${cost:,.4f}" if cost is not None else "–"
        return (
            f"elapsed {_duration(self.elapsed())} · ETA {_duration(self.eta())} · "
            f"estimated cost {cost_text}"
        )

    # -- display -------------------------------------------------------------------------------

    def _refresh_output(self) -> None:
        if self._handle is not None:
            self._handle.update(self)

    def to_text(self) -> str:
        """The panel as plain text (what a terminal, a log or a widget-less viewer sees)."""
        t = self.totals
        lines = [f"{self._title}: {len(self._rows)} shard(s)"]
        for r in self._rows:
            lines.append(
                f"  shard {r['shard']}  {r['batch_id']}  {r['status']:<11}  "
                f"{r['completed']} done, {r['failed']} failed / {r['total']}"
            )
        lines.append(f"  overall: {t['completed']} completed, {t['failed']} failed / {t['total']}")
        lines.append("  " + self._footer_text())
        return "\n".join(lines)

    def to_html(self) -> str:
        """The panel as static HTML: the fallback for saved notebooks and nbconvert exports."""
        t = self.totals
        body = []
        for r in self._rows:
            pct = 100.0 * (r["completed"] + r["failed"]) / r["total"] if r["total"] else 0.0
            ok = 100.0 * r["completed"] / r["total"] if r["total"] else 0.0
            body.append(
                "<tr>"
                f"<td>{html.escape(r['shard'])}</td>"
                f"<td style='font-family:monospace'>{html.escape(r['batch_id'])}</td>"
                f"<td>{_badge(r['status'])}</td>"
                "<td><div style='width:160px;height:10px;background:#eee;position:relative'>"
                f"<div style='position:absolute;left:0;width:{pct:.1f}%;height:10px;background:#c62828'></div>"
                f"<div style='position:absolute;left:0;width:{ok:.1f}%;height:10px;background:#2e7d32'></div>"
                "</div></td>"
                f"<td>{self._counts_html(r)}</td>"
                "</tr>"
            )
        return (
            '<div class="pb-progress-panel" style="border:1px solid #ddd;padding:6px">'
            f"<b>{html.escape(self._title)}</b>"
            "<table><tr><th>shard</th><th>batch</th><th>status</th><th>progress</th>"
            "<th>requests</th></tr>" + "".join(body) + "</table>"
            f"<div><b>overall</b> {t['completed']} completed, {t['failed']} failed / {t['total']}</div>"
            f"<div>{html.escape(self._footer_text())}</div></div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        # The widget view renders live in Jupyter; text/html and text/plain are what a saved
        # notebook, nbconvert (no widget state) or a plain console show instead.
        bundle = dict(self.widget._repr_mimebundle_())
        bundle["text/plain"] = self.to_text()
        bundle["text/html"] = self.to_html()
        return bundle

    def __repr__(self) -> str:
        return self.to_text()


# -- jobs table -------------------------------------------------------------------------------

_JOBS_COLUMNS = (
    "run_id",
    "shard",
    "batch_id",
    "status",
    "completed",
    "failed",
    "n_requests",
    "est_cost_usd",
    "model",
    "backend",
    "created_at",
)


def jobs_table_html(jobs: pd.DataFrame) -> str:
    """An HTML table of a jobs frame: status badges and a progress column; all text escaped.

    >>> "<table" in jobs_table_html(pd.DataFrame({"batch_id": ["batch_1"], "status": ["completed"]}))
    True
    """
    columns = [c for c in _JOBS_COLUMNS if c in jobs.columns]
    extra = [c for c in jobs.columns if c not in columns and c not in ("path", "sha256")]
    columns += [c for c in extra if c not in {"input_file_id", "output_file_id", "error_file_id"}]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    if {"completed", "n_requests"} <= set(jobs.columns):
        head += "<th>progress</th>"
    body = []
    for rec in jobs.to_dict("records"):
        cells = []
        for col in columns:
            value = rec.get(col)
            if col == "status":
                cells.append(f"<td>{_badge(_text(value, 'queued'))}</td>")
            elif col == "est_cost_usd" and _text(value):
                cells.append(f"<td>${_float_or_nan(value):,.4f}</td>")
            elif col == "created_at" and _text(value) and isinstance(value, numbers.Real):
                stamp = pd.Timestamp(float(value), unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
                cells.append(f"<td>{stamp}</td>")
            elif isinstance(value, pd.Timestamp):
                cells.append(f"<td>{value.strftime('%Y-%m-%d %H:%M:%S')}</td>")
            else:
                cells.append(f"<td>{html.escape(_text(value, '–'))}</td>")
        if {"completed", "n_requests"} <= set(jobs.columns):
            total = max(_num(rec.get("n_requests")), 1)
            pct = 100.0 * (_num(rec.get("completed")) + _num(rec.get("failed"))) / total
            cells.append(
                "<td><div style='width:100px;height:8px;background:#eee'>"
                f"<div style='width:{min(pct, 100.0):.0f}%;height:8px;background:#1e88e5'></div>"
                "</div></td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="pb-jobs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<p>{len(jobs)} job(s)</p>"
    )


class JobsFrame(pd.DataFrame):
    """A jobs DataFrame that displays as a rich table in a notebook; otherwise a plain DataFrame.

    >>> JobsFrame({"batch_id": ["batch_1"], "status": ["completed"]})._repr_html_().startswith("<table")
    True
    """

    @property
    def _constructor(self) -> type[JobsFrame]:
        return JobsFrame

    def _repr_html_(self) -> str:  # type: ignore[override]
        return jobs_table_html(pd.DataFrame(self))


def jobs_table(jobs: pd.DataFrame) -> JobsFrame:
    """A copy of ``jobs`` that displays as a rich table (``_repr_html_``) in a notebook.

    >>> jobs_table(pd.DataFrame({"status": ["in_progress"]}))._repr_html_().count("<tr>")
    2
    """
    if not isinstance(jobs, pd.DataFrame):
        raise InputError(f"jobs_table needs a DataFrame, got {type(jobs).__name__}")
    out = JobsFrame(jobs.copy())
    out.attrs = dict(jobs.attrs)
    return out
