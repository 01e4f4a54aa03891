"""Notebook display: the progress panel ``poll(..., progress=True)`` shows, and a rich jobs table.

    >>> from portfolio_batch._widgets import ProgressPanel, in_notebook
    >>> panel = ProgressPanel(jobs, est_cost_usd=0.42)   # doctest: +SKIP
    >>> panel.update(refreshed_jobs)                     # doctest: +SKIP
    >>> panel.close()                                    # doctest: +SKIP

The panel is one ipywidgets ``VBox`` (a line per shard, the overall counts, elapsed, ETA and cost),
under a banner when the batches run on a local server (simulated answers, not OpenAI's).
It is displayed with a bundle holding both the live widget and a plain HTML/text rendering, so a
saved notebook or an ``nbconvert`` export without widget state still shows the last known state.
ipywidgets is imported lazily; without it the panel raises an install hint.
"""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import math
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from portfolio_batch._contract import (
    JOBS_TABLE_COLUMNS,
    LEVEL_COLORS,
    OTHER_LEVEL_COLOR,
    OTHER_STATUS_COLOR,
    STATUS_COLORS,
    TERMINAL,
)
from portfolio_batch._poll import Progress, TextProgress
from portfolio_batch._registry import open_registry
from portfolio_batch.errors import InputError, missing_extra

__all__ = [
    "STATUS_STYLES",
    "JobsFrame",
    "ProgressPanel",
    "RunCard",
    "RunView",
    "RunsFrame",
    "backend_banner",
    "in_notebook",
    "jobs",
    "jobs_table",
    "jobs_table_html",
    "progress_display",
    "results_table_html",
    "run_card_html",
    "run_card_text",
    "runs_table_html",
    "score_style",
]

# status -> ipywidgets IntProgress bar_style (the widget's own few styles; others get none)
_BAR_STYLES = {
    "in_progress": "info",
    "finalizing": "info",
    "cancelling": "warning",
    "completed": "success",
    "failed": "danger",
    "expired": "warning",
    "cancelled": "danger",
}
# status -> (badge colour, IntProgress bar_style); the colours are _contract's STATUS_COLORS
STATUS_STYLES: dict[str, tuple[str, str]] = {
    status: (colour, _BAR_STYLES.get(status, "")) for status, colour in STATUS_COLORS.items()
}
_UNKNOWN_STYLE = (OTHER_STATUS_COLOR, "")


# -- the widgets the progress panel, the run card and the dashboard share ----------------------


def _ipywidgets() -> Any:
    """``ipywidgets``, or the error naming the ``notebook`` extra."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise missing_extra("ipywidgets", "notebook") from exc
    return ipywidgets


def _card_layout(w: Any) -> Any:
    """The frame around a panel, a run card or a dashboard."""
    return w.Layout(border="1px solid #ddd", padding="6px")


def _bar(w: Any, width: str) -> Any:
    """An empty progress bar ``width`` wide."""
    return w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width=width))


def _fill_bar(bar: Any, finished: int, total: int, status: str) -> None:
    """Show ``finished`` of ``total`` requests in ``status``'s style."""
    bar.max = max(total, 1)
    bar.value = min(finished, bar.max)
    bar.bar_style = STATUS_STYLES.get(status, _UNKNOWN_STYLE)[1]


_Line = tuple[Any, Any, Any]  # a shard's (label, bar, counts) widgets


def _shard_lines(
    w: Any, box: Any, lines: dict[Any, _Line], keys: list[Any], label_width: str, bar_width: str
) -> dict[Any, _Line]:
    """The shards' lines: ``lines`` while the shards are the same, else new ones, shown in ``box``."""
    if keys == list(lines):
        return lines
    lines = {
        k: (w.HTML(layout=w.Layout(width=label_width)), _bar(w, bar_width), w.HTML()) for k in keys
    }
    box.children = [
        w.HBox(list(line), layout=w.Layout(align_items="center")) for line in lines.values()
    ]
    return lines


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


def backend_banner(jobs: pd.DataFrame) -> str | None:
    """What the panel says first when the jobs' ``backend`` is not OpenAI or Azure, else None.

    >>> print(backend_banner(pd.DataFrame({"backend": ["local:embedded:rules"]})))  # doctest: +ELLIPSIS
    Simulated: these batches run on the offline local server (engine rules); answers are ...
    """
    from portfolio_batch._backend import (
        engine_of,
        is_local_backend,
        provider_of_backend,
        provider_shown,
    )

    if "backend" not in jobs.columns:
        return None
    names = [str(b) for b in pd.unique(jobs["backend"].dropna())]
    engines = [e for e in map(engine_of, names) if e is not None]
    if engines:
        name, key = provider_shown(provider_of_backend(names[0]))
        return (
            f"Simulated: these batches run on the offline local server (engine "
            f"{', '.join(engines)}); answers are simulated, not an LLM's judgement. Set "
            f"{key} to use {name}."
        )
    # a `serve` server, reached by OPENAI_BASE_URL (local:<url>) or a provider's base URL
    # (anthropic:local:<url>)
    others = [b.split("local:", 1)[1] for b in names if is_local_backend(b)]
    if others:
        name = provider_shown(provider_of_backend(names[0]))[0]
        return (
            f"Not {name}: these batches run on the server at {', '.join(others)} (a "
            "`portfolio-batch serve` server simulates its answers)."
        )
    return None


_BANNER_STYLE = (
    "background:#fff3e0;border-left:4px solid #ef6c00;padding:4px 8px;margin-bottom:4px;"
    "font-weight:600"
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
        >>> panel.update(pb.jobs(run_id=run_id))                 # doctest: +SKIP
    """

    def __init__(
        self,
        jobs: pd.DataFrame,
        *,
        est_cost_usd: float | None = None,
        display: bool = True,
        title: str = "Batch progress",
    ) -> None:
        w = self._w = _ipywidgets()
        self._title = title
        self._est_cost_usd = est_cost_usd
        self._started = time.monotonic()
        self._finished: float | None = None
        self._rows: list[dict[str, Any]] = []
        self._lines: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._statuses: tuple[str, ...] = ()
        self._banner_text: str | None = None
        self._banner = w.HTML()
        self._header = w.HTML()
        self._overall_bar = _bar(w, "320px")
        self._overall_text = w.HTML()
        self._shard_box = w.VBox()
        self._footer = w.HTML()
        self.widget = w.VBox(
            [
                self._banner,
                self._header,
                self._shard_box,
                w.HBox([self._overall_bar, self._overall_text]),
                self._footer,
            ],
            layout=_card_layout(w),
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

    @property
    def banner(self) -> str | None:
        """The backend banner shown above the shards (``backend_banner``), or None."""
        return self._banner_text

    def _apply(self, jobs: pd.DataFrame) -> None:
        rows = _shard_rows(jobs)
        self._rows = rows
        self._banner_text = backend_banner(jobs)
        self._banner.value = self._banner_html()
        self._lines = _shard_lines(
            self._w, self._shard_box, self._lines, [r["key"] for r in rows], "420px", "220px"
        )
        for row in rows:
            label, bar, counts = self._lines[row["key"]]
            label.value = (
                f'<span style="font-family:monospace">shard {html.escape(row["shard"])} · '
                f"{html.escape(row['batch_id'])}</span> {_badge(row['status'])}"
            )
            _fill_bar(bar, row["completed"] + row["failed"], row["total"], row["status"])
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

    def _banner_html(self) -> str:
        if self._banner_text is None:
            return ""
        return (
            f'<div class="pb-banner" style="{_BANNER_STYLE}">{html.escape(self._banner_text)}</div>'
        )

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
        lines = [self._banner_text] if self._banner_text else []
        lines.append(f"{self._title}: {len(self._rows)} shard(s)")
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
            + self._banner_html()
            + f"<b>{html.escape(self._title)}</b>"
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


def progress_display(jobs: pd.DataFrame) -> Progress:
    """What ``poll(progress=True)`` shows (wired in ``portfolio_batch/__init__.py``): this panel in
    a Jupyter kernel with ipywidgets, else the pipeline's text bar.

    >>> type(progress_display(jobs)).__name__            # doctest: +SKIP
    'TextProgress'
    """
    if in_notebook():
        est = jobs["est_cost_usd"].sum(min_count=1)
        try:
            return ProgressPanel(jobs, est_cost_usd=None if pd.isna(est) else float(est))
        except ImportError:  # no ipywidgets: the text bar says the same, and tqdm says why
            pass
    return TextProgress(jobs)


# -- jobs table -------------------------------------------------------------------------------


def jobs_table_html(jobs: pd.DataFrame) -> str:
    """An HTML table of a jobs frame: status badges and a progress column; all text escaped.

    >>> "<table" in jobs_table_html(pd.DataFrame({"batch_id": ["batch_1"], "status": ["completed"]}))
    True
    """
    columns = [c for c in JOBS_TABLE_COLUMNS if c in jobs.columns]
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


def jobs(*, run_id: str | None = None) -> JobsFrame:
    """Every shard the job registry knows, newest first, or one run's shards in order. In a
    notebook it displays as a rich table (status badges, counts), elsewhere as a plain DataFrame.

    >>> import portfolio_batch as pb
    >>> pb.jobs().columns[:4].tolist()
    ['run_id', 'shard', 'batch_id', 'status']
    """
    with open_registry() as reg:
        return JobsFrame(reg.jobs_frame(run_id=run_id))


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


# -- a run's card (pb.start / pb.attach) ------------------------------------------------------


def score_style(score: Any) -> str:
    """CSS for a risk score cell: a green (0) to red (100) background, dark text.

    >>> score_style(100)
    'background:hsl(0,70%,82%);color:#212121;font-weight:600'
    """
    value = _float_or_nan(score)
    if math.isnan(value):
        return "color:#9e9e9e"
    hue = round(120 * (1 - min(max(value, 0.0), 100.0) / 100))
    return f"background:hsl({hue},70%,82%);color:#212121;font-weight:600"


_TD = "padding:2px 6px;vertical-align:top"
_LONG_TEXT = frozenset({"rationale", "drivers", "error_message", "notes", "content"})


def _cell(column: str, value: Any) -> str:
    if column == "risk_score":
        text = _text(value, "–")
        if text != "–":
            text = f"{_float_or_nan(value):.0f}"
        return f'<td style="{_TD};{score_style(value)};text-align:right">{html.escape(text)}</td>'
    if column == "risk_level":
        level = _text(value)
        colour = LEVEL_COLORS.get(level.strip().lower(), OTHER_LEVEL_COLOR) if level else None
        if colour is None:
            return f'<td style="{_TD}">–</td>'
        return (
            f'<td style="{_TD}"><span style="color:{colour};font-weight:600">'
            f"{html.escape(level)}</span></td>"
        )
    if column == "status":
        return f'<td style="{_TD}">{_badge(_text(value, "missing"))}</td>'
    if column == "weight" and not math.isnan(_float_or_nan(value)):
        return f'<td style="{_TD};text-align:right">{_float_or_nan(value):.2%}</td>'
    if column == "cost_usd" and not math.isnan(_float_or_nan(value)):
        return f'<td style="{_TD};text-align:right">${_float_or_nan(value):,.5f}</td>'
    # drivers come as lists (or arrays, read back from parquet)
    listed = hasattr(value, "__iter__") and not isinstance(value, str | bytes | Mapping)
    text = "; ".join(map(str, value)) if listed else _text(value, "–")
    if column in _LONG_TEXT:
        if len(text) > 160:
            text = text[:157] + "…"
        return f'<td style="{_TD};min-width:180px;max-width:460px">{html.escape(text)}</td>'
    return f'<td style="{_TD};white-space:nowrap">{html.escape(text)}</td>'


def results_table_html(
    frame: pd.DataFrame,
    columns: list[str] | None = None,
    *,
    css_class: str = "pb-results",
    caption: str | None = None,
) -> str:
    """An HTML table of results rows: risk scores coloured green to red, levels in their colour,
    statuses as badges, weights as percentages; every text escaped.

    >>> results_table_html(pd.DataFrame({"ticker": ["NVDA"], "risk_score": [81]})).count("hsl(")
    1
    """
    cols = [c for c in (columns or list(frame.columns)) if c in frame.columns]
    head = "".join(
        f'<th style="{_TD};text-align:left;white-space:nowrap;border-bottom:1px solid #bbb">'
        f"{html.escape(str(c).replace('_', ' '))}</th>"
        for c in cols
    )
    body = "".join(
        "<tr>" + "".join(_cell(c, rec.get(c)) for c in cols) + "</tr>"
        for rec in frame[cols].to_dict("records")
    )
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return (
        f'<table class="{html.escape(css_class)}" style="border-collapse:collapse;font-size:12px;line-height:1.35">'
        f"{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


@dataclasses.dataclass
class RunView:
    """Everything a run's card shows, computed by ``Run.view()`` (plain values, no widgets)."""

    run_id: str
    title: str
    model: str
    status: str
    done: bool
    banner: str | None
    shards: list[dict[str, Any]]
    canary_note: str | None
    total: int
    finished: int
    failed: int
    held: int
    eta_s: float | None
    est_cost_usd: float | None
    billed_usd: float | None
    simulated: bool
    as_of: float | None
    stalled: bool
    quiet_s: float
    stall_after_s: float
    reasons: str
    reviewed: int
    top: pd.DataFrame | None
    notes: list[str]
    error: str | None
    message: str | None
    watching: bool
    can_retry: bool
    prices_of: str = "OpenAI"  # whose prices a simulated run's cost is at (Anthropic, Gemini...)

    def as_of_text(self) -> str:
        if self.as_of is None:
            return "not checked yet"
        return "as of " + time.strftime("%H:%M:%S", time.localtime(self.as_of))

    def cost_text(self) -> str:
        # estimate_cost's default figure: what a user planned with, and what run.report() shows.
        # Every answer counts its whole max_tokens, so the billed cost usually ends below it.
        est = (
            f"${self.est_cost_usd:,.4f} (answers at max_tokens)"
            if self.est_cost_usd is not None
            else "–"
        )
        billed = f"${self.billed_usd:,.4f}" if self.billed_usd is not None else "$0"
        if self.simulated:  # nothing is billed: what OpenAI would charge for the answers so far
            return f"estimated {est} · so far {billed} at {self.prices_of} batch prices (simulated)"
        return f"estimated {est} · billed so far {billed}"

    def progress_text(self) -> str:
        ok = self.finished - self.failed
        eta = "" if self.done else f" · ETA {_duration(self.eta_s)}"
        return f"{ok} done, {self.failed} failed of {self.total} requests{eta}"

    def stall_text(self) -> str:
        if not self.stalled:
            return ""
        return (
            f"No movement for {_duration(self.quiet_s)}, longer than expected "
            f"({_duration(self.stall_after_s)}); the server may be busy. The run keeps going."
        )

    def reviewed_text(self) -> str:
        return f"{self.reviewed} of {self.total} reviewed"


def _shard_counts_html(s: Mapping[str, Any]) -> str:
    text = ProgressPanel._counts_html(s)
    if s.get("reasons"):
        text += f' <span style="color:#c62828">({html.escape(s["reasons"])})</span>'
    return text


def _shard_label_html(s: Mapping[str, Any]) -> str:
    tag = ' <span style="color:#6a1b9a;font-weight:600">canary</span>' if s.get("canary") else ""
    return (
        f'<span style="font-family:monospace">shard {html.escape(str(s["shard"]))} · '
        f"{html.escape(str(s['batch_id']))}</span> {_badge(str(s['status']))}{tag}"
    )


def _header_html(v: RunView) -> str:
    return (
        f"<b>{html.escape(v.title)}</b> {_badge(v.status)} "
        f'<span style="color:#616161;font-family:monospace">{html.escape(v.run_id)}</span> '
        f'<span class="pb-as-of" style="color:#616161">· {html.escape(v.model)} · '
        f"{html.escape(v.as_of_text())}</span>"
    )


def _flag_html(v: RunView) -> str:
    parts = []
    if v.stalled:
        parts.append(
            f'<div class="pb-stall" style="color:#e65100;font-weight:600">⚠ '
            f"{html.escape(v.stall_text())}</div>"
        )
    if v.canary_note:
        parts.append(
            f'<div class="pb-canary" style="color:#4a148c">{html.escape(v.canary_note)}</div>'
        )
    if v.error:
        parts.append(f'<div class="pb-error" style="color:#c62828">{html.escape(v.error)}</div>')
    for note in v.notes:
        parts.append(f'<div class="pb-note" style="color:#8d6e63">{html.escape(note)}</div>')
    return "".join(parts)


def _summary_html(v: RunView) -> str:
    reasons = (
        f'<div style="color:#c62828">without an answer: {html.escape(v.reasons)}</div>'
        if v.reasons
        else ""
    )
    return (
        f'<div class="pb-progress-text"><b>overall</b> {html.escape(v.progress_text())}</div>'
        f'<div class="pb-cost">{html.escape(v.cost_text())}</div>{reasons}'
    )


def _top_html(v: RunView) -> str:
    if v.top is None:
        return f'<div class="pb-reviewed">{html.escape(v.reviewed_text())}</div>'
    caption = f"{v.reviewed_text()} · highest risk first"
    return results_table_html(v.top, css_class="pb-run-results", caption=caption)


def run_card_html(v: RunView) -> str:
    """A run's card as static HTML: the saved-notebook, nbconvert and no-widgets rendering."""
    banner = (
        f'<div class="pb-banner" style="{_BANNER_STYLE}">{html.escape(v.banner)}</div>'
        if v.banner
        else ""
    )
    rows = "".join(
        f"<tr><td>{_shard_label_html(s)}</td><td>{_shard_counts_html(s)}</td></tr>"
        for s in v.shards
    )
    message = f"<div>{v.message}</div>" if v.message else ""  # built escaped by the Run
    return (
        '<div class="pb-run-card" style="border:1px solid #ddd;padding:6px">'
        f"{banner}<div>{_header_html(v)}</div>{_flag_html(v)}"
        f"<table>{rows}</table>{_summary_html(v)}{message}{_top_html(v)}</div>"
    )


def run_card_text(v: RunView) -> str:
    """A run's card as plain text (terminals, logs)."""
    lines = [v.banner] if v.banner else []
    lines.append(f"{v.title} [{v.status}] {v.run_id} · {v.model} · {v.as_of_text()}")
    if v.canary_note:
        lines.append("  " + v.canary_note)
    for s in v.shards:
        reasons = f" ({s['reasons']})" if s.get("reasons") else ""
        canary = " canary" if s.get("canary") else ""
        lines.append(
            f"  shard {s['shard']}  {s['batch_id']}  {s['status']:<11}  "
            f"{s['completed']} done, {s['failed']} failed / {s['total']}{reasons}{canary}"
        )
    lines.append("  overall: " + v.progress_text())
    lines.append("  " + v.cost_text())
    if v.stalled:
        lines.append("  " + v.stall_text())
    if v.error:
        lines.append("  " + v.error)
    lines.append("  " + v.reviewed_text())
    return "\n".join(lines)


class RunCard:
    """The live card of a ``Run``: widgets whose values ``show(view)`` sets, from any thread; it
    never displays or prints anything itself. Buttons call the callbacks given.

        >>> card = RunCard(on_cancel=run.cancel, on_retry=..., on_report=...)   # doctest: +SKIP
        >>> card.show(run.view())                                              # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        on_cancel: Callable[[], Any],
        on_retry: Callable[[], Any],
        on_report: Callable[[], Any],
    ) -> None:
        w = self._w = _ipywidgets()
        self.banner = w.HTML()
        self.header = w.HTML()
        self.flags = w.HTML()
        self.shard_box = w.VBox()
        self.lines: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.overall_bar = _bar(w, "320px")
        self.summary = w.HTML()
        self.message = w.HTML()
        self.cancel_button = w.Button(description="Cancel", icon="stop", button_style="danger")
        self.retry_button = w.Button(description="Retry failed", icon="redo", disabled=True)
        self.report_button = w.Button(description="Open report", icon="file", disabled=True)
        for button, callback in (
            (self.cancel_button, on_cancel),
            (self.retry_button, on_retry),
            (self.report_button, on_report),
        ):
            button.on_click(lambda _b, cb=callback: cb())
        self.table = w.HTML()
        self.children_box = w.VBox()
        self.widget = w.VBox(
            [
                self.banner,
                self.header,
                self.flags,
                self.shard_box,
                w.HBox([self.overall_bar, self.summary], layout=w.Layout(align_items="center")),
                w.HBox([self.cancel_button, self.retry_button, self.report_button]),
                self.message,
                self.table,
                self.children_box,
            ],
            layout=_card_layout(w),
        )
        self.widget.add_class("pb-run-card")

    def show(self, v: RunView) -> None:
        """Set every widget's value from ``v`` (only the ones that changed reach the frontend)."""
        w = self._w
        self._set(
            self.banner,
            f'<div class="pb-banner" style="{_BANNER_STYLE}">{html.escape(v.banner)}</div>'
            if v.banner
            else "",
        )
        self._set(self.header, _header_html(v))
        self._set(self.flags, _flag_html(v))
        keys = [(str(s["run_id"]), str(s["shard"])) for s in v.shards]
        self.lines = _shard_lines(w, self.shard_box, self.lines, keys, "460px", "200px")
        for k, s in zip(keys, v.shards, strict=True):
            label, bar, counts = self.lines[k]
            self._set(label, _shard_label_html(s))
            _fill_bar(
                bar, int(s["completed"]) + int(s["failed"]), int(s["total"]), str(s["status"])
            )
            self._set(counts, _shard_counts_html(s))
        self.overall_bar.max = max(v.total, 1)
        self.overall_bar.value = min(v.finished, self.overall_bar.max)
        self.overall_bar.bar_style = (
            ("success" if not v.reasons else "warning")
            if v.done and v.status == "completed"
            else "danger"
            if v.done
            else "info"
        )
        self._set(self.summary, _summary_html(v))
        self._set(self.message, v.message or "")
        self._set(self.table, _top_html(v))
        self.cancel_button.disabled = v.done
        self.retry_button.disabled = not v.can_retry
        self.report_button.disabled = not v.done or v.reviewed == 0

    @staticmethod
    def _set(widget: Any, value: str) -> None:
        if widget.value != value:
            widget.value = value

    def add_child(self, widget: Any) -> None:
        """Show another card (a retry's) under this one."""
        self.children_box.children = (*self.children_box.children, widget)


# -- the runs table (pb.runs) ---------------------------------------------------------------------


def runs_table_html(runs: pd.DataFrame) -> str:
    """An HTML table of ``pb.runs()``: status badges, costs, times; all text escaped.

    >>> "<table" in runs_table_html(pd.DataFrame({"run_id": ["run-1"], "status": ["completed"]}))
    True
    """
    cols = list(runs.columns)
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in cols)
    body = []
    for rec in runs.to_dict("records"):
        cells = []
        for col in cols:
            value = rec.get(col)
            if col == "status":
                cells.append(f"<td>{_badge(_text(value, 'unknown'))}</td>")
            elif col in ("est_cost_usd", "billed_usd"):
                number = _float_or_nan(value)
                cells.append(f"<td>{'–' if math.isnan(number) else f'${number:,.4f}'}</td>")
            elif isinstance(value, pd.Timestamp):
                cells.append(f"<td>{value.strftime('%Y-%m-%d %H:%M:%S')}</td>")
            else:
                cells.append(f"<td>{html.escape(_text(value, '–'))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="pb-runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table><p>{len(runs)} run(s); "
        "pb.attach(run_id) shows one again</p>"
    )


class RunsFrame(pd.DataFrame):
    """``pb.runs()``: a DataFrame that displays as a table with status badges in a notebook."""

    @property
    def _constructor(self) -> type[RunsFrame]:
        return RunsFrame

    def _repr_html_(self) -> str:  # type: ignore[override]
        return runs_table_html(pd.DataFrame(self))
