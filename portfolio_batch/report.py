"""One self-contained HTML report of a run: summary, positions by risk, errors, charts, metadata.

    >>> import portfolio_batch as pb
    >>> pb.report(results, costs, path="out/report.html", jobs=jobs)   # doctest: +SKIP
    PosixPath('out/report.html')

Charts are embedded as base64 PNG, styles are inline: the file opens anywhere, offline. Every piece
of text (rationales come from an LLM) goes through ``html.escape``. Credentials in the environment
are redacted should any text echo them.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from portfolio_batch import charts as _charts
from portfolio_batch._version import __version__
from portfolio_batch.errors import InputError
from portfolio_batch.quality import check_answers, headline

__all__ = ["report"]

_CREDENTIAL_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
_POSITION_COLUMNS = (
    "name",
    "sector",
    "weight",
    "risk_score",
    "risk_level",
    "drivers",
    "rationale",
    "status",
)
_ERROR_COLUMNS = (
    "custom_id",
    "status",
    "http_status",
    "error_code",
    "error_message",
    "finish_reason",
    "batch_id",
)
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#212121;max-width:1200px}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
th,td{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.level-low{color:#2e7d32;font-weight:600} .level-medium{color:#f9a825;font-weight:600}
.level-high{color:#c62828;font-weight:600} .status-bad{color:#c62828}
.chart{margin:1em 0} .chart img{max-width:100%;border:1px solid #eee}
.muted{color:#757575;font-size:12px}
.degenerate{background:#ffebee;border-left:4px solid #c62828;padding:.5em .8em;font-weight:600}
.simulated{background:#fff3e0;border-left:4px solid #ef6c00;padding:.5em .8em;font-weight:600}
"""


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list | tuple | dict):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _cell_text(column: str, value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    if column == "weight":
        return f"{float(value):.2%}"
    if column.endswith("cost_usd"):
        return f"${float(value):,.6f}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(frame: pd.DataFrame, columns: Iterable[str], *, css: str = "") -> str:
    cols = [c for c in columns if c in frame.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    rows = []
    for rec in frame[cols].to_dict("records"):
        cells = []
        for c in cols:
            value = rec[c]
            text = html.escape(_cell_text(c, value))
            klass = ""
            if c == "risk_level" and text:
                klass = f' class="level-{html.escape(text.lower())}"'
            elif c == "status" and text and text != "succeeded":
                klass = ' class="status-bad"'
            elif isinstance(value, int | float) and not isinstance(value, bool):
                klass = ' class="num"'
            cells.append(f"<td{klass}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _kv(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_cell_text(k, v))}</td></tr>"
        for k, v in rows
    )
    return f'<table class="kv">{body}</table>'


def _unique(*series: pd.Series | None) -> list[str]:
    for s in series:
        if s is not None:
            values = [str(v) for v in pd.unique(s.dropna()) if str(v)]
            if values:
                return values
    return []


def _col(frame: pd.DataFrame | None, name: str) -> pd.Series | None:
    return frame[name] if frame is not None and name in frame.columns else None


def _prompt_version(results: pd.DataFrame) -> str:
    """The short prompt hash: from attrs, else the common last segment of the custom_ids."""
    if results.attrs.get("prompt_version"):
        return str(results.attrs["prompt_version"])
    ids = results["custom_id"] if "custom_id" in results.columns else results.index.to_series()
    tails = {str(cid).rsplit("-", 1)[-1] for cid in ids if "-" in str(cid)}
    return tails.pop() if len(tails) == 1 else "unknown"


def _timestamp(value: Any) -> str:
    if _is_missing(value):
        return ""
    try:
        stamp = pd.Timestamp(float(value), unit="s", tz="UTC")
    except (TypeError, ValueError):
        stamp = pd.Timestamp(value)
    return stamp.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _metadata(
    results: pd.DataFrame, costs: pd.DataFrame | None, jobs: pd.DataFrame | None
) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    run_ids = _unique(_col(jobs, "run_id"))
    if run_ids:
        rows.append(("run id", ", ".join(run_ids)))
    rows.append(
        ("model", ", ".join(_unique(_col(results, "model"), _col(costs, "model"))) or "unknown")
    )
    requested = _unique(_col(results, "requested_model"))
    if requested:
        rows.append(("requested model", ", ".join(requested)))
    rows.append(("prompt version", _prompt_version(results)))
    batch_ids = _unique(_col(jobs, "batch_id"), _col(results, "batch_id"))
    rows.append(("batch ids", ", ".join(batch_ids) or "none"))
    backends = _unique(_col(jobs, "backend")) or _unique(pd.Series([results.attrs.get("backend")]))
    if backends:
        rows.append(("backend", ", ".join(backends)))
    endpoints = _unique(_col(jobs, "endpoint"))
    if endpoints:
        rows.append(("endpoint", ", ".join(endpoints)))
    if costs is not None:
        source = costs.attrs.get("price_source", "unknown")
        version = costs.attrs.get("price_version")
        rows.append(("price source", f"{source} {version}" if version else str(source)))
        if costs.attrs.get("output_tokens"):
            rows.append(("output token estimate", costs.attrs["output_tokens"]))
    else:
        rows.append(("price source", "no cost estimate given"))
    created = _col(jobs, "created_at")
    if created is not None and created.notna().any():
        rows.append(("first batch created", _timestamp(created.min())))
        rows.append(("last batch created", _timestamp(created.max())))
    if results.attrs.get("malformed_lines"):
        rows.append(("malformed output lines", results.attrs["malformed_lines"]))
    rows.append(("report generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")))
    rows.append(("portfolio_batch", __version__))
    return rows


def _headline(results: pd.DataFrame, costs: pd.DataFrame | None) -> list[tuple[str, Any]]:
    status = results["status"].astype("string").fillna("missing")
    ok = status == "succeeded"
    rows: list[tuple[str, Any]] = [("positions", len(results)), ("succeeded", int(ok.sum()))]
    for name, count in status[~ok].value_counts().items():
        rows.append((f"status {name}", int(count)))
    if {"risk_score", "weight"} <= set(results.columns):
        score = pd.to_numeric(results["risk_score"], errors="coerce").astype("float64")
        weight = pd.to_numeric(results["weight"], errors="coerce").astype("float64")
        scored = ok & score.notna() & weight.notna()
        if scored.any() and weight[scored].sum() > 0:
            avg = float((score[scored] * weight[scored]).sum() / weight[scored].sum())
            rows.append(("weight-averaged risk score", f"{avg:.1f}"))
    if "risk_level" in results.columns:
        levels = results.loc[ok, "risk_level"].astype("string").str.lower()
        for level in ("high", "medium", "low"):
            if (levels == level).any():
                rows.append((f"{level} risk positions", int((levels == level).sum())))
    if "cost_usd" in results.columns:
        actual = pd.to_numeric(results["cost_usd"], errors="coerce").astype("float64")
        rows.append((_cost_label(results), f"${float(actual.sum()):,.6f}"))
    if costs is not None and "batch_cost_usd" in costs.columns:
        est = pd.to_numeric(costs["batch_cost_usd"], errors="coerce").astype("float64")
        rows.append(("estimated batch cost", f"${float(est.sum()):,.6f}"))
        if "sync_cost_usd" in costs.columns:
            sync = pd.to_numeric(costs["sync_cost_usd"], errors="coerce").astype("float64")
            rows.append(("same requests, synchronous", f"${float(sync.sum()):,.6f}"))
    for col in ("prompt_tokens", "completion_tokens"):
        if col in results.columns:
            total = pd.to_numeric(results[col], errors="coerce").astype("float64").sum()
            rows.append((col, int(total)))
    return rows


def _cost_label(results: pd.DataFrame) -> str:
    """The label of the cost figure: paid, or for a simulated run (nothing paid) its price."""
    if not results.attrs.get("simulated"):
        return "actual cost"
    prices = "synchronous" if results.attrs.get("mode") == "sync" else "batch"
    return f"cost at OpenAI {prices} prices (simulated run)"


def _simulated_html(results: pd.DataFrame) -> str:
    """The banner a simulated run's report starts with; empty for a real API's answers."""
    if not results.attrs.get("simulated"):
        return ""
    from portfolio_batch.backend import simulated_banner

    banner = simulated_banner(results.attrs.get("engine"), mode=results.attrs.get("mode", "batch"))
    return f'<p class="simulated" id="simulated">{html.escape(banner)}</p>'


def _summary_html(summary: Any) -> str:
    """The caller's ``summarize()`` result (or a frame / dict), shown as given."""
    if summary is None:
        return ""
    if hasattr(summary, "to_frame"):
        frame = summary.to_frame()
        out = _table(frame, frame.columns)
        failures = getattr(summary, "failures", None)
        if isinstance(failures, pd.DataFrame) and len(failures):
            out += "<p>Failures by status and code</p>" + _table(failures, failures.columns)
        return out
    if isinstance(summary, pd.DataFrame):
        return _table(summary.reset_index(), summary.reset_index().columns)
    if isinstance(summary, pd.Series):
        return _kv((str(k), v) for k, v in summary.items())
    if isinstance(summary, dict):
        return _kv((str(k), v) for k, v in summary.items())
    return f"<pre>{html.escape(str(summary))}</pre>"


def _flags_html(flags: pd.DataFrame) -> str:
    """check_answers' flags, or a line saying none was raised."""
    if not len(flags):
        return (
            f"<p>No answer flagged: {flags.attrs.get('checked', 0)} answers checked for one "
            "shared value, echoes of the prompt, out-of-range or contradicting scores, "
            "refusals, cut answers and key mismatches.</p>"
        )
    shown = flags.assign(examples=flags["examples"].map(lambda e: "; ".join(map(str, e))))
    return _table(
        shown, ["severity", "check", "field", "count", "message", "advice", "examples"], css="flags"
    )


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _chart_specs(
    results: pd.DataFrame, costs: pd.DataFrame | None
) -> list[tuple[str, Callable[[], Any]]]:
    specs: list[tuple[str, Callable[[], Any]]] = [
        ("Request status", lambda: _charts.status_breakdown(results)),
        ("Risk by position", lambda: _charts.risk_by_position(results)),
        ("Risk vs weight", lambda: _charts.risk_vs_weight(results)),
        ("Risk by sector", lambda: _charts.sector_risk(results)),
        ("Tokens per request", lambda: _charts.token_usage(results, costs)),
    ]
    if costs is not None:
        specs.append(("Cost", lambda: _charts.cost_breakdown(costs, results)))
    return specs


def _charts_html(results: pd.DataFrame, costs: pd.DataFrame | None) -> Iterator[str]:
    for title, make in _chart_specs(results, costs):
        try:
            fig = make()
        except InputError as exc:
            # A frame without e.g. a sector column still gets a report; say which chart and why.
            yield f'<p class="muted">{html.escape(title)}: not drawn ({html.escape(str(exc))})</p>'
            continue
        yield (
            f'<div class="chart"><h3>{html.escape(title)}</h3>'
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{_png(fig)}"></div>'
        )


def _key_columns(results: pd.DataFrame) -> list[str]:
    """The portfolio key: attrs["key"] if known, else the first data column (the contract puts
    the key right after custom_id)."""
    key = results.attrs.get("key")
    if key in results.columns:
        return [str(key)]
    data = [c for c in results.columns if c != "custom_id"]
    if data and data[0] not in ("status", *_POSITION_COLUMNS):
        return [str(data[0])]
    return []


def _sorted_positions(results: pd.DataFrame) -> pd.DataFrame:
    if "risk_score" not in results.columns:
        return results
    score = pd.to_numeric(results["risk_score"], errors="coerce").astype("float64")
    order = score.sort_values(ascending=False, na_position="last", kind="stable").index
    return results.loc[order]


def _redactor() -> Callable[[str], str]:
    secrets = [v for v in (os.environ.get(n, "") for n in _CREDENTIAL_VARS) if len(v) >= 8]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "[redacted]")
            escaped = html.escape(secret)
            if escaped != secret:
                text = text.replace(escaped, "[redacted]")
        return text

    return redact


def report(
    results: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    *,
    path: str | os.PathLike[str],
    jobs: pd.DataFrame | None = None,
    title: str = "Portfolio risk review",
    summary: Any = None,
    charts: bool = True,
) -> Path:
    """Write the run's report to ``path`` (one HTML file, charts embedded) and return the path.

    ``results`` is the ``aggregate_df``/``run_sync`` frame, ``costs`` the ``estimate_cost`` frame
    (for estimated vs actual and the price source), ``jobs`` the ``submit``/``poll`` frame (batch
    ids, timestamps), ``summary`` a ``summarize()`` result to include as is.

        >>> report(results, costs, path="out/report.html", jobs=jobs)   # doctest: +SKIP
        PosixPath('out/report.html')
    """
    if not isinstance(results, pd.DataFrame):
        raise InputError(
            f"report() needs the results DataFrame from aggregate_df() or run_sync(), "
            f"got {type(results).__name__}"
        )
    if "status" not in results.columns:
        raise InputError(
            "report(): the results frame has no 'status' column; pass the frame returned by "
            "aggregate_df() or run_sync()"
        )
    if costs is not None and not isinstance(costs, pd.DataFrame):
        raise InputError(
            f"report(costs=...) must be the estimate_cost() DataFrame or None, got {type(costs).__name__}"
        )
    if jobs is not None and not isinstance(jobs, pd.DataFrame):
        raise InputError(
            f"report(jobs=...) must be the submit()/poll() DataFrame or None, got {type(jobs).__name__}"
        )
    out = Path(path)
    if out.is_dir():
        raise InputError(
            f"report(path={str(out)!r}) is a directory; give a file name such as {str(out / 'report.html')!r}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if summary is None:
        from portfolio_batch.summary import summarize

        try:
            summary = summarize(results, costs)
        except InputError:
            summary = None  # the headline table below covers a frame summarize() cannot read

    flags = getattr(summary, "flags", None)
    if not isinstance(flags, pd.DataFrame):
        flags = check_answers(results)
    key_cols = _key_columns(results)
    positions = _sorted_positions(results)
    errors = results[results["status"].astype("string").fillna("missing") != "succeeded"]
    redact = _redactor()

    def parts() -> Iterator[str]:
        yield (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>"
        )
        yield _simulated_html(results)
        line = headline(flags)
        if line:
            yield f'<p class="degenerate">{html.escape(line)}</p>'
        yield "<h2>Summary</h2>" + _kv(_headline(results, costs))
        if summary is not None:
            yield (
                "<details open><summary>summarize()</summary>"
                + _summary_html(summary)
                + "</details>"
            )
        yield f"<h2>Answer checks ({len(flags)})</h2>" + _flags_html(flags)
        yield "<h2>Run</h2>" + _kv(_metadata(results, costs, jobs))
        yield (
            f"<h2>Positions by risk ({len(positions)})</h2>"
            + _table(
                positions,
                [*key_cols, *(c for c in _POSITION_COLUMNS if c not in key_cols)],
                css="positions",
            )
        )
        yield f"<h2>Errors ({len(errors)})</h2>"
        if len(errors):
            yield _table(errors, [*key_cols, *_ERROR_COLUMNS], css="errors")
        else:
            yield "<p>Every request succeeded.</p>"
        if charts:
            yield "<h2>Charts</h2>"
            yield from _charts_html(results, costs)
        yield "</body></html>\n"

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for chunk in parts():
                fh.write(redact(chunk))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
