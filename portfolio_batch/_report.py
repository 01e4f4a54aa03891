"""The risk review of a run as one self-contained HTML file a portfolio manager can forward.

    >>> import portfolio_batch as pb
    >>> pb.report(results, costs=costs, path="out/report.html", jobs=jobs,
    ...           portfolio="Core equity", as_of="2026-11-13")          # doctest: +SKIP
    PosixPath('out/report.html')

Sections, in this order: the header (portfolio, as-of date, run id, model or the simulated
banner, prompt version, coverage, estimated vs actual cost, "LLM opinion, not investment
advice"); the summary (weighted score, share of the portfolio per risk level, top 10 risk
contributions, what changed since the previous run); the charts (contributions, sector view,
concentration, the model against a quantitative proxy); the positions (sortable, with Δ vs the
previous run); the appendix (request status, tokens, cost, errors, answer checks, provenance).
Each table is a function of ``portfolio_batch.review``, each chart one of
``portfolio_batch.charts``: a notebook can show any of them alone.

The HTML is rendered by Jinja2 with autoescaping (rationales come from an LLM); charts are
embedded SVG, styles and the small sorting script inline: the file opens anywhere, offline.
Credentials in the environment are redacted should any text echo them. The run is recorded
(``portfolio_batch._history``) so the next report of the same portfolio finds it as "the previous
run".
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from portfolio_batch import charts as _charts
from portfolio_batch import review as rv
from portfolio_batch._contract import (
    ANSWER_COLUMNS,
    LEVEL_COLORS,
    OTHER_LEVEL_COLOR,
    UNSCORED_COLOR,
)
from portfolio_batch._currency import USD, Money, fx, money_from_attrs
from portfolio_batch._home import writable_dir
from portfolio_batch._quality import check_answers, headline
from portfolio_batch._version import __version__
from portfolio_batch.errors import InputError, missing_extra

if TYPE_CHECKING:
    from portfolio_batch._summary import Summary

__all__ = ["SECTIONS", "cost_figures", "prompt_version", "report"]

# the report's sections, in order (their HTML ids)
SECTIONS = ("header", "summary", "charts", "positions", "appendix")
_CREDENTIAL_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
DEFINITIONS = (
    "Definitions: weights are gross (|weight|), so a short counts as exposure of its absolute "
    "size. Weighted risk score = Σ|w|·score / Σ|w| over scored positions. Risk contribution = "
    "|w| × score; its share is of the total over scored positions. Share per risk level is of "
    "the portfolio's gross weight. Concentration (HHI) = Σ of squared gross weight shares."
)


# -- cells and tables -------------------------------------------------------------------------


@dataclass
class Cell:
    text: str
    sort: Any = None
    cls: str = ""
    sub: str = ""  # a second, smaller line (a position's name under its key)


@dataclass
class Head:
    label: str
    cls: str = ""
    title: str = ""


@dataclass
class Table:
    css: str
    headers: list[Head]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list | tuple | dict):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _num(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sk(value: float) -> str:
    """A sort key without float noise (0.30000000000000004 → 0.3)."""
    return f"{value:.10g}"


def _pct(value: Any, digits: int = 1) -> Cell:
    v = _num(value)
    return Cell("" if v is None else f"{v:.{digits}%}", "" if v is None else _sk(v), "num")


def _score(value: Any) -> Cell:
    v = _num(value)
    return Cell("" if v is None else f"{v:.0f}", "" if v is None else _sk(v), "num")


def _fixed(value: Any, digits: int = 1) -> Cell:
    v = _num(value)
    return Cell("" if v is None else f"{v:,.{digits}f}", "" if v is None else _sk(v), "num")


def _delta(value: Any, *, points: bool = False) -> Cell:
    """A signed change: score points, or weight in percentage points; red up, green down."""
    v = _num(value)
    if v is None:
        return Cell("", "", "num")
    if abs(v) < 1e-12:
        return Cell("", 0.0, "num")  # unchanged: left blank so the moves stand out
    text = f"{v * 100:+.2f} pp" if points else f"{v:+.0f}"
    cls = "num up" if v > 0 else "num down" if v < 0 else "num"
    return Cell(text.replace("-", "−"), _sk(v), cls)


def _text(value: Any, cls: str = "") -> Cell:
    if _missing(value):
        return Cell("", None, cls)
    if isinstance(value, list | tuple):
        return Cell("; ".join(map(str, value)), None, cls)
    if isinstance(value, float) and value.is_integer():
        return Cell(str(int(value)), None, cls)
    return Cell(str(value), None, cls)


def _level(value: Any) -> Cell:
    if _missing(value) or not str(value):
        return Cell("", None)
    text = str(value)
    rank = rv.level_rank(text)
    return Cell(text, rank if rank == rank else text, f"lvl level-{_level_css(text)}")


def _level_css(level: Any) -> str:
    text = str(level).strip().lower() if isinstance(level, str) else ""
    if text in ("low", "medium", "high"):
        return text
    if text in ("moderate",):
        return "medium"
    if text in ("elevated", "very high", "critical"):
        return "high"
    return "none" if text in ("", rv.NO_SCORE) else "other"


def _status(value: Any) -> Cell:
    text = "" if _missing(value) else str(value)
    return Cell(text, None, "" if text == "succeeded" else "bad")


def _kv(rows: Iterable[tuple[str, Any]], css: str = "kv") -> Table:
    return Table(css, [], [[Cell(k, None, "item"), _text(v)] for k, v in rows])


# -- the sections -----------------------------------------------------------------------------


def _unique(*series: pd.Series | None) -> list[str]:
    for s in series:
        if s is not None:
            values = [str(v) for v in pd.unique(s.dropna()) if str(v)]
            if values:
                return values
    return []


def _col(frame: pd.DataFrame | None, name: str) -> pd.Series | None:
    return frame[name] if frame is not None and name in frame.columns else None


def prompt_version(results: pd.DataFrame) -> str:
    """The short prompt hash: from attrs, else the common last segment of the custom_ids.

    >>> prompt_version(pd.DataFrame({"custom_id": ["risk-KO-3f2a9c", "risk-PEP-3f2a9c"]}))
    '3f2a9c'
    """
    if results.attrs.get("prompt_version"):
        return str(results.attrs["prompt_version"])
    ids = results["custom_id"] if "custom_id" in results.columns else results.index.to_series()
    tails = {str(cid).rsplit("-", 1)[-1] for cid in ids if "-" in str(cid)}
    return tails.pop() if len(tails) == 1 else "unknown"


def _price_table(costs: pd.DataFrame | None) -> str:
    if costs is None:
        return "no cost estimate given"
    source = str(costs.attrs.get("price_source") or "")
    version = str(costs.attrs.get("price_version") or "")
    # genai-prices' version string already names it ("genai-prices 0.2.3")
    return version if source and source in version else f"{source} {version}".strip() or "unknown"


def _timestamp(value: Any) -> str:
    if _missing(value):
        return ""
    try:
        stamp = pd.Timestamp(float(value), unit="s", tz="UTC")
    except (TypeError, ValueError):
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
    return stamp.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def cost_figures(
    results: pd.DataFrame, costs: pd.DataFrame | None, money: Money
) -> tuple[str, str]:
    """(label, "estimated X · actual Y") in the report's currency."""
    simulated = bool(results.attrs.get("simulated"))
    sync = results.attrs.get("mode") == "sync"
    actual = (
        float(pd.to_numeric(results["cost_usd"], errors="coerce").sum())
        if "cost_usd" in results.columns
        else None
    )
    est = None
    col = "sync_cost_usd" if sync else "batch_cost_usd"
    if costs is not None and col in costs.columns:
        est = float(pd.to_numeric(costs[col], errors="coerce").sum())
    label = "Cost, estimated vs actual"
    parts = [f"estimated {money.format(est)}" if est is not None else "no estimate"]
    if simulated:
        # nothing was paid: the tokens used, priced as the provider would have
        from portfolio_batch._backend import provider_of_backend, provider_shown

        name = provider_shown(provider_of_backend(results.attrs.get("backend")))[0]
        prices = f"{name} {'synchronous' if sync else 'batch'} prices"
        label = f"Cost at {prices}"
        parts.append(
            f"this run would cost {money.format(actual)} at {prices}"
            if actual is not None
            else "no usage"
        )
        return label, " · ".join(parts)
    parts.append(f"actual {money.format(actual)}" if actual is not None else "no usage")
    return label, " · ".join(parts)


def _header(
    results: pd.DataFrame,
    costs: pd.DataFrame | None,
    *,
    flags: pd.DataFrame,
    portfolio: str | None,
    as_of: str,
    run_id: str | None,
    money: Money,
) -> dict[str, Any]:
    from portfolio_batch._backend import banner_of

    simulated = bool(results.attrs.get("simulated"))
    engine = results.attrs.get("engine")
    facts: list[dict[str, Any]] = []
    if simulated:
        facts.append({"label": "Model", "value": f"simulated: local {engine or 'server'} engine"})
    else:
        models = ", ".join(_unique(_col(results, "model"), _col(costs, "model"))) or "unknown"
        facts.append({"label": "Model", "value": models})
    requested = _unique(_col(results, "requested_model"))
    if requested:
        facts.append({"label": "Requested model", "value": ", ".join(requested)})
    facts.append({"label": "Prompt version", "value": prompt_version(results)})
    table = rv.coverage(results, flags=flags)
    reviewed = int(table.iloc[0]["positions"])
    untrusted = int(table.iloc[1]["positions"])
    others = [
        f"{r['positions']} {r['outcome']}" + (f" ({r['reasons']})" if r["reasons"] else "")
        for r in table.iloc[2:].to_dict("records")
    ]
    share = table.iloc[0]["gross_weight_share"]
    facts.append(
        {
            "label": "Coverage",
            "value": f"{reviewed} of {len(results)} reviewed"
            + (f" ({share:.1%} of gross weight)" if _num(share) is not None else ""),
            "note": "; ".join(
                [*others, f"{untrusted} not trusted by the answer checks"]
                + ([f"see the answer checks: {len(flags)} flag(s)"] if untrusted else [])
            ),
            "cls": "wide" + (" warn" if others or untrusted else ""),
        }
    )
    label, value = cost_figures(results, costs, money)
    notes = [money.note] if money.note else []
    if costs is not None and costs.attrs.get("output_tokens") == "max":
        notes.insert(0, "the estimate counts max_tokens of output per answer")
    facts.append({"label": label, "value": value, "note": "; ".join(notes), "cls": "wide"})
    return {
        "portfolio": portfolio or "Unnamed portfolio",
        "as_of": as_of,
        "run_id": run_id or "not recorded",
        "simulated": banner_of(results.attrs) if simulated else "",
        "degenerate": headline(flags) or "",
        "facts": [{"note": "", "cls": "", **f} for f in facts],
    }


def _contrib_table(results: pd.DataFrame) -> Table:
    frame = rv.contributions(results, top=10)
    key = rv.key_column(results)
    heads = [Head(key or "position"), Head("weight", "num"), Head("score", "num")]
    heads += [Head("level"), Head("contribution", "num", "|weight| × score"), Head("share", "num")]
    rows = []
    for rec in frame.to_dict("records"):
        rows.append(
            [
                _text(rec.get(key) if key else "", "key"),
                _pct(rec["weight"]),
                _score(rec["risk_score"]),
                _level(rec.get("risk_level")),
                _fixed(rec["contribution"], 2),
                _pct(rec["share"]),
            ]
        )
    total = frame.attrs.get("total", 0.0)
    cum = float(frame["cum_share"].iloc[-1]) if len(frame) else 0.0
    return Table(
        "contributions",
        heads,
        rows,
        # one decimal, as the headline's weighted score (the total is that score x gross weight)
        f"{cum:.0%} of the total contribution ({total:.1f}) in these {len(frame)}",
    )


def _changes_table(changes: pd.DataFrame) -> Table:
    key = str(changes.attrs.get("key") or changes.columns[0])
    heads = [Head(key), Head("change"), Head("what moved"), Head("Δ score", "num")]
    heads += [Head("previous rationale"), Head("rationale")]
    rows = []
    for rec in changes.to_dict("records"):
        rows.append(
            [
                _text(rec[key], "key"),
                _text(rec["change"]),
                _text(rec["detail"]),
                _delta(rec["score_change"]),
                _text(rec["previous_rationale"], "text"),
                _text(rec["rationale"], "text"),
            ]
        )
    return Table("changes", heads, rows)


def _summary(
    results: pd.DataFrame,
    *,
    flags: pd.DataFrame,
    changes: pd.DataFrame | None,
    previous_label: str | None,
) -> dict[str, Any]:
    score = rv.weighted_score(results) if {"risk_score", "weight"} <= set(results.columns) else None
    level = rv.level_for(score, results=results) if score is not None else None
    shares = []
    if {"risk_score", "risk_level", "weight"} <= set(results.columns):
        for rec in rv.level_shares(results).to_dict("records"):
            shares.append(
                {
                    "label": rec["risk_level"],
                    "css": _level_css(rec["risk_level"]),
                    "width": f"{100 * float(rec['share']):.3f}",
                    "share": f"{float(rec['share']):.1%}",
                    "positions": f"{rec['positions']} position{'s' if rec['positions'] != 1 else ''}",
                }
            )
    if changes is None:
        line = (
            "No previous run of this portfolio is recorded: this is its first review "
            "(pass previous= to compare with a given run)."
        )
    else:
        line = rv.changes_line(changes, since=previous_label)
    # Severe flags: the answers as a whole are not a risk assessment, so a green "0.0 (low)"
    # would read as a safe portfolio; the figures are greyed and said to be untrusted.
    untrusted = "not trusted: see Answer checks" if headline(flags) else ""
    if untrusted or score is None:
        lead = rv.coverage_line(results, flags=flags) + "."
        if untrusted:
            lead += " The score and level shares below are not trusted: see Answer checks."
        if changes is not None:
            lead += " " + rv.changes_line(changes, since=previous_label)
    else:
        lead = rv.summary_line(results, changes=changes, flags=flags, since=previous_label)
    return {
        "headline": lead,
        "untrusted": untrusted,
        "score": "-" if score is None else f"{score:.1f}",
        "level": level or "no score",
        "level_css": _level_css(level),
        "shares": shares,
        "contributions": _contrib_table(results)
        if score is not None
        else Table("contributions", [Head("position")]),
        "changes": _changes_table(changes) if changes is not None and len(changes) else None,
        "changes_line": line,
        "definitions": DEFINITIONS,
    }


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.BytesIO()
    # text as <text>, not outlines: a third of the time and size, and selectable in the PDF
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _draw(id_: str, title: str, make: Callable[[], Any], caption: str = "") -> dict[str, Any]:
    try:
        fig = make()
    except InputError as exc:
        # A frame without e.g. a sector column still gets a report; say which chart and why.
        return {"id": id_, "title": title, "src": None, "error": str(exc), "caption": ""}
    return {"id": id_, "title": title, "src": _svg(fig), "error": "", "caption": caption}


def _positions(
    results: pd.DataFrame, previous: pd.DataFrame | None, threshold: float
) -> tuple[Table, str]:
    frame = rv.positions(results, previous=previous, threshold=threshold)
    key = rv.key_column(results)
    if key and "name" in frame.columns:
        # the name under the key: one column less, so drivers and rationale get the width
        frame[key] = pd.Series(
            [
                Cell(str(k), str(k), "key", "" if _missing(n) else str(n))
                for k, n in zip(frame[key], frame["name"], strict=True)
            ],
            index=frame.index,
            dtype=object,
        )
    if "change" in frame.columns:
        levels = (
            [
                f"{p} → {c}" if not _missing(p) and str(p) != str(c) else ""
                for p, c in zip(frame["previous_level"], frame["risk_level"], strict=True)
            ]
            if {"previous_level", "risk_level"} <= set(frame.columns)
            else [""] * len(frame)
        )
        frame["change"] = pd.Series(
            [
                Cell(str(c), str(c), "change", lv)
                for c, lv in zip(frame["change"], levels, strict=True)
            ],
            index=frame.index,
            dtype=object,
        )

    def keep(cell: Any) -> Cell:
        return cell if isinstance(cell, Cell) else _text(cell, "key")

    spec: list[tuple[str, str, Callable[[Any], Cell], str]] = [
        (key or "", key or "position", keep, ""),
        ("sector", "sector", _text, ""),
        ("weight", "weight", _pct, "num"),
        ("risk_score", "score", _score, "num"),
        ("risk_level", "level", _level, ""),
        ("contribution", "contrib.", lambda v: _fixed(v, 2), "num"),
        ("Δ score", "Δ score", _delta, "num"),
        ("Δ weight", "Δ weight", lambda v: _delta(v, points=True), "num"),
        ("change", "change", lambda v: v if isinstance(v, Cell) else _text(v), ""),
        ("drivers", "drivers", lambda v: _text(v, "drivers"), ""),
        ("rationale", "rationale", lambda v: _text(v, "text"), ""),
        ("status", "status", _status, ""),
    ]
    spec = [s for s in spec if s[0] and s[0] in frame.columns]
    if "status" in frame.columns and (frame["status"].astype(str) == "succeeded").all():
        spec = [s for s in spec if s[0] != "status"]  # a column of "succeeded" says nothing
    titles = {"contribution": "|weight| × score"}
    table = Table(
        "positions sortable",
        [Head(label, cls, titles.get(name, "")) for name, label, _, cls in spec],
    )
    cols = [s[0] for s in spec]
    for values in frame[cols].itertuples(index=False):
        table.rows.append([fmt(v) for (_, _, fmt, _), v in zip(spec, values, strict=True)])
    note = ""
    if previous is not None:
        note = "Δ columns compare with the previous run (weight in percentage points)."
    return table, note


def _requests_table(results: pd.DataFrame, costs: pd.DataFrame | None, money: Money) -> Table:
    status = results["status"].astype("string").fillna("missing")
    rows: list[tuple[str, Any]] = [("requests", len(results))]
    for name, count in status.value_counts().items():
        rows.append((f"status {name}", int(count)))
    for col, label in (
        ("prompt_tokens", "input tokens"),
        ("completion_tokens", "output tokens"),
        ("reasoning_tokens", "of them reasoning"),
        ("cached_tokens", "cached input tokens"),
    ):
        if col in results.columns:
            total = pd.to_numeric(results[col], errors="coerce").sum()
            if total or col != "reasoning_tokens":  # only reasoning models have any
                rows.append((label, f"{int(total):,}"))
    if costs is not None and "input_tokens" in costs.columns:
        rows.append(("estimated input tokens", f"{int(costs['input_tokens'].sum()):,}"))
    if costs is not None and "output_tokens_est" in costs.columns:
        mode = costs.attrs.get("output_tokens", "max")
        rows.append(
            (f"estimated output tokens ({mode})", f"{int(costs['output_tokens_est'].sum()):,}")
        )
    label, value = cost_figures(results, costs, money)
    rows.append((label, value))
    if costs is not None and "sync_cost_usd" in costs.columns and "batch_cost_usd" in costs.columns:
        batch, sync = float(costs["batch_cost_usd"].sum()), float(costs["sync_cost_usd"].sum())
        rows.append(
            (
                "same requests, batch vs synchronous",
                f"{money.format(batch)} vs {money.format(sync)}",
            )
        )
    if money.note:
        rows.append(("currency", money.note))
    return _kv(rows, "kv requests")


def _errors_table(results: pd.DataFrame) -> Table:
    key = rv.key_column(results)
    bad = results[results["status"].astype("string").fillna("missing") != "succeeded"]
    # what happened to the request (not the answer text, which an error row has none of)
    what = [c for c in ANSWER_COLUMNS if c != "content"]
    named = dict.fromkeys([key, "custom_id", *what, "batch_id"])
    cols = [c for c in named if c and c in results.columns]
    table = Table("errors", [Head(c) for c in cols])
    for rec in bad[cols].to_dict("records"):
        table.rows.append([_status(rec[c]) if c == "status" else _text(rec[c]) for c in cols])
    return table


def _flags_table(flags: pd.DataFrame) -> Table:
    cols = ["severity", "check", "field", "count", "message", "advice", "examples"]
    table = Table("flags", [Head(c) for c in cols])
    for rec in flags.to_dict("records"):
        table.rows.append(
            [
                Cell(str(rec["severity"]), None, "bad" if rec["severity"] == "severe" else ""),
                *(_text(rec[c]) for c in cols[1:6]),
                _text("; ".join(map(str, rec["examples"] or []))),
            ]
        )
    return table


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _parameters(results: pd.DataFrame, requests: pd.DataFrame | None) -> dict[str, Any]:
    """The request parameters that shape the answers (from the first request body)."""
    if requests is not None and "body" in requests.columns and len(requests):
        body = requests["body"].iloc[0]
        if isinstance(body, dict):
            keep = {}
            for k, v in body.items():
                if k in ("messages", "input"):
                    continue
                if k == "response_format" and isinstance(v, dict):
                    v = v.get("type", "") + (
                        f" ({v['json_schema'].get('name')})"
                        if isinstance(v.get("json_schema"), dict)
                        else ""
                    )
                keep[k] = v
            return keep
    params = results.attrs.get("parameters")
    return dict(params) if isinstance(params, dict) else {}


def _provenance(
    results: pd.DataFrame,
    costs: pd.DataFrame | None,
    *,
    jobs: pd.DataFrame | None,
    run_id: str | None,
    portfolio: str | None,
    source: str | None,
    input_hash: str,
    as_of: str,
    parameters: dict[str, Any],
    money: Money,
    previous: pd.DataFrame | None,
    threshold: float,
    weight_threshold: float,
) -> tuple[Table, list[dict[str, str]]]:
    rows: list[tuple[str, Any]] = [
        ("run id", run_id or "not recorded"),
        ("portfolio", portfolio or "unnamed"),
        ("input file" if source else "input", source or "the results' portfolio columns"),
        ("input sha256", input_hash),
        ("as of", as_of),
    ]
    batch_ids = _unique(_col(jobs, "batch_id"), _col(results, "batch_id"))
    rows.append(("batch ids", ", ".join(batch_ids) or "none"))
    created = _col(jobs, "created_at")
    if created is not None and created.notna().any():
        rows.append(("first batch created", _timestamp(created.min())))
        rows.append(("last batch created", _timestamp(created.max())))
    backends = _unique(_col(jobs, "backend")) or _unique(pd.Series([results.attrs.get("backend")]))
    rows.append(("backend", ", ".join(backends) or "unknown"))
    if results.attrs.get("simulated"):
        rows.append(("engine", f"{results.attrs.get('engine')} (simulated answers)"))
    rows.append(("model (what answered)", ", ".join(_unique(_col(results, "model"))) or "unknown"))
    requested = _unique(_col(results, "requested_model"))
    if requested:
        rows.append(("requested model", ", ".join(requested)))
    endpoints = _unique(_col(jobs, "endpoint"))
    if endpoints:
        from portfolio_batch._backend import provider_api, provider_of_backend

        # the lines are written for OpenAI's endpoint and translated for another provider's API
        apis = _unique(pd.Series([provider_api(provider_of_backend(b)) for b in backends]))
        sent = f"; sent to {', '.join(apis)}" if apis else ""
        rows.append(("endpoint", ", ".join(endpoints) + sent))
    rows.append(("prompt version", prompt_version(results)))
    rows.append(
        (
            "parameters",
            ", ".join(f"{k}={v}" for k, v in parameters.items()) or "not recorded (pass requests=)",
        )
    )
    rows.append(("price table", _price_table(costs)))
    if costs is not None and costs.attrs.get("output_tokens") is not None:
        rows.append(("output token estimate", costs.attrs["output_tokens"]))
    rows.append(("currency", money.note or "USD"))
    if results.attrs.get("malformed_lines"):
        rows.append(("malformed output lines", results.attrs["malformed_lines"]))
    if previous is not None:
        rows.append(
            (
                "compared with",
                f"run {previous.attrs.get('run_id') or 'given as previous='} "
                f"(score moves over {threshold:g} points, weight moves over "
                f"{weight_threshold * 100:g} percentage points)",
            )
        )
    rows.append(
        (
            "libraries",
            f"portfolio_batch {__version__}, openai {_version('openai')}, pandas "
            f"{pd.__version__}, matplotlib {_version('matplotlib')}, jinja2 {_version('jinja2')}, "
            f"genai-prices {_version('genai-prices')}",
        )
    )
    details = []
    prompt = results.attrs.get("system_prompt")
    if prompt:
        details.append({"title": "System prompt", "text": str(prompt)})
    schema = results.attrs.get("schema")
    if schema:
        details.append(
            {"title": "Answer schema", "text": json.dumps(schema, indent=2, default=str)}
        )
    return _kv(rows, "kv provenance"), details


# -- rendering --------------------------------------------------------------------------------


def _require_report_extra(*, charts: bool) -> None:
    """Raise MissingDependencyError before any work when the ``report`` extra is missing:
    Jinja2 renders the page, matplotlib draws the charts (only with ``charts=True``)."""
    try:
        import jinja2  # noqa: F401

        if charts:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        raise missing_extra(exc.name or "jinja2", "report") from exc


@lru_cache(maxsize=1)
def _environment() -> Any:
    _require_report_extra(charts=False)
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)
    files = resources.files("portfolio_batch") / "templates"
    # the risk levels' colours come from _contract, the one table charts and widgets use too
    palette = {
        "low": LEVEL_COLORS["low"],
        "medium": LEVEL_COLORS["medium"],
        "high": LEVEL_COLORS["high"],
        "none": UNSCORED_COLOR,
        "other": OTHER_LEVEL_COLOR,
    }
    root = ":root{" + ";".join(f"--{k}:{v}" for k, v in palette.items()) + "}\n"
    env.globals["css"] = root + (files / "report.css").read_text(encoding="utf-8")
    env.globals["script"] = (files / "sort.js").read_text(encoding="utf-8")
    return env.from_string((files / "report.html.j2").read_text(encoding="utf-8"))


def _redactor() -> Callable[[str], str]:
    import html

    secrets = [v for v in (os.environ.get(n, "") for n in _CREDENTIAL_VARS) if len(v) >= 8]

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "[redacted]")
            escaped = html.escape(secret)
            if escaped != secret:
                text = text.replace(escaped, "[redacted]")
        return text

    return redact


def _as_of(value: Any, run_at: float) -> str:
    if value is None:
        day = dt.datetime.fromtimestamp(run_at, dt.UTC).date().isoformat()
        return f"{day} (date of the run)"
    from portfolio_batch._currency import iso_day

    return iso_day(value, name="as_of", meaning="the holdings date")


def _check_frames(results: Any, costs: Any, jobs: Any, requests: Any) -> None:
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
    for name, value, what in (
        ("costs", costs, "the estimate_cost() DataFrame"),
        ("jobs", jobs, "the submit()/poll() DataFrame"),
        ("requests", requests, "the build_requests() DataFrame"),
    ):
        if value is not None and not isinstance(value, pd.DataFrame):
            raise InputError(
                f"report({name}=...) must be {what} or None, got {type(value).__name__}"
            )


def _previous(
    previous: pd.DataFrame | str | Literal[False] | None,
    results: pd.DataFrame,
    *,
    portfolio: str | None,
    run_id: str | None,
    run_at: float,
) -> pd.DataFrame | None:
    from portfolio_batch import _history as history

    if previous is False:
        return None
    if previous is None:
        return history.previous_results(results, portfolio=portfolio, run_id=run_id, run_at=run_at)
    if isinstance(previous, str):
        return history.load(previous)[0]
    if isinstance(previous, pd.DataFrame):
        return previous
    raise InputError(
        f"report(previous=...) takes the previous run's results frame, its run id, None (find it "
        f"in the registry) or False (no comparison), got {type(previous).__name__}"
    )


@dataclass
class Gathered:
    """What a report (or its Excel twin) is made of, besides the frames given."""

    money: Money
    portfolio: str | None
    source: str | None
    run_id: str | None
    review_id: str
    run_at: float
    as_of: str
    as_of_given: bool
    input_sha256: str
    previous: pd.DataFrame | None
    previous_label: str | None
    changes: pd.DataFrame | None
    flags: pd.DataFrame
    parameters: dict[str, Any]


def gather(
    results: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    *,
    jobs: pd.DataFrame | None = None,
    requests: pd.DataFrame | None = None,
    portfolio: str | None = None,
    as_of: str | dt.date | None = None,
    source: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    previous: pd.DataFrame | str | Literal[False] | None = None,
    threshold: float = 10.0,
    weight_threshold: float = 0.0025,
    currency: str | None = None,
    fx_rate: float | None = None,
    fx_date: str | dt.date | None = None,
    summary: Summary | None = None,
) -> Gathered:
    """Check the arguments of ``report`` / ``export.to_excel`` and find what they need: the run
    id, the previous run and the changes since, the answer checks, the currency."""
    from portfolio_batch import _history as history

    _check_frames(results, costs, jobs, requests)
    money = (
        fx(currency, fx_rate=fx_rate, fx_date=fx_date)
        if currency is not None or fx_rate is not None
        else money_from_attrs(costs.attrs)
        if costs is not None
        else USD
    )
    for name, value in (("threshold", threshold), ("weight_threshold", weight_threshold)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise InputError(f"report({name}={value!r}): pass a number of 0 or more")
    portfolio = portfolio or results.attrs.get("portfolio") or None
    src = str(source) if source is not None else results.attrs.get("source")
    run_id = run_id or history.find_run_id(results, jobs)
    # results no run recorded (run_sync) are kept under an id of their content: reporting them
    # again replaces that review rather than comparing them with themselves
    review_id = run_id or "results-" + rv.frame_sha256(results)[:12]
    run_at = history.run_time(results, jobs)
    given = as_of if as_of is not None else results.attrs.get("as_of")
    prev = _previous(previous, results, portfolio=portfolio, run_id=review_id, run_at=run_at)
    changes = None
    if prev is not None:
        from portfolio_batch._compare import compare

        changes = compare(prev, results, threshold=threshold, weight_threshold=weight_threshold)
    flags = getattr(summary, "flags", None)
    if not isinstance(flags, pd.DataFrame):
        flags = check_answers(results, requests=requests)
    previous_label = None
    if prev is not None and prev.attrs.get("run_id"):
        when = prev.attrs.get("as_of") or (
            dt.datetime.fromtimestamp(float(prev.attrs["run_at"]), dt.UTC).date().isoformat()
            if prev.attrs.get("run_at")
            else None
        )
        rid = str(prev.attrs["run_id"])
        name = "the previous review" if rid.startswith("results-") else f"run {rid}"
        previous_label = name + (f" ({when})" if when else "")
    return Gathered(
        money=money,
        portfolio=portfolio,
        source=src,
        run_id=run_id,
        review_id=review_id,
        run_at=run_at,
        as_of=_as_of(given, run_at),
        as_of_given=given is not None,
        input_sha256=history.input_sha256(results, src),
        previous=prev,
        previous_label=previous_label,
        changes=changes,
        flags=flags,
        parameters=_parameters(results, requests),
    )


def report(
    results: pd.DataFrame,
    *,
    costs: pd.DataFrame | None = None,
    path: str | os.PathLike[str],
    jobs: pd.DataFrame | None = None,
    requests: pd.DataFrame | None = None,
    title: str = "Portfolio risk review",
    portfolio: str | None = None,
    as_of: str | dt.date | None = None,
    source: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
    previous: pd.DataFrame | str | Literal[False] | None = None,
    threshold: float = 10.0,
    weight_threshold: float = 0.0025,
    currency: str | None = None,
    fx_rate: float | None = None,
    fx_date: str | dt.date | None = None,
    summary: Summary | None = None,
    charts: bool = True,
    record: bool = True,
    pdf: bool = False,
) -> Path:
    """Write the run's risk review to ``path`` (one HTML file) and return the path.

    ``results`` is the ``aggregate_df``/``run_sync`` frame, ``costs`` the ``estimate_cost`` frame
    (estimated vs actual, price table), ``jobs`` the ``submit``/``poll`` frame (run and batch ids,
    times), ``requests`` the ``build_requests`` frame (the parameters in the provenance).
    ``portfolio`` names the portfolio (also how its previous run is found), ``as_of`` is the
    holdings date (default: the run's date, said so), ``source`` the input file (hashed).

    ``previous``: None finds the latest earlier run of the same portfolio in the registry;
    a results frame or a run id compares with that; False compares with nothing. Changes are
    ``pb.compare``'s with ``threshold`` (score points) and ``weight_threshold``.
    ``currency="EUR", fx_rate=0.92, fx_date=...`` shows costs in EUR with the rate (default: the
    currency ``costs`` was estimated in). ``summary`` is a ``summarize()`` result whose answer
    checks to reuse. ``record=False`` keeps this run out of the history; ``pdf=True`` also
    prints the report to ``path`` with ``.pdf`` (headless Chromium, see ``export.to_pdf``).

        >>> report(results, costs=costs, path="out/report.html", jobs=jobs, portfolio="Core")  # doctest: +SKIP
        PosixPath('out/report.html')
    """
    _require_report_extra(charts=charts)
    from portfolio_batch import _history as history

    out = Path(path)
    if out.is_dir():
        raise InputError(
            f"report(path={str(out)!r}) is a directory; give a file name such as {str(out / 'report.html')!r}"
        )
    g = gather(
        results,
        costs,
        jobs=jobs,
        requests=requests,
        portfolio=portfolio,
        as_of=as_of,
        source=source,
        run_id=run_id,
        previous=previous,
        threshold=threshold,
        weight_threshold=weight_threshold,
        currency=currency,
        fx_rate=fx_rate,
        fx_date=fx_date,
        summary=summary,
    )
    # a parent that is a file, or one we may not write to, is an InputError naming path=
    writable_dir(
        out.parent, what="path", fix="give report(path=...) a file in a folder you can write to"
    )
    money = g.money
    positions, positions_note = _positions(results, g.previous, threshold)
    provenance, details = _provenance(
        results,
        costs,
        jobs=jobs,
        run_id=g.run_id,
        portfolio=g.portfolio,
        source=g.source,
        input_hash=g.input_sha256,
        as_of=g.as_of,
        parameters=g.parameters,
        money=money,
        previous=g.previous,
        threshold=threshold,
        weight_threshold=weight_threshold,
    )
    risk_charts: list[dict[str, Any]] = []
    run_charts: list[dict[str, Any]] = []
    if charts:
        risk_charts = [
            _draw(
                "contributions", "Risk contributions", lambda: _charts.risk_contributions(results)
            ),
            _draw("sectors", "Sector view", lambda: _charts.sector_view(results)),
            _draw("concentration", "Concentration", lambda: _charts.concentration(results)),
            _draw("proxy", "Model vs quantitative proxy", lambda: _charts.model_vs_proxy(results)),
        ]
        run_charts = [
            _draw("status", "Request status", lambda: _charts.status_breakdown(results)),
            _draw(
                "tokens", "Tokens per request", lambda: _charts.token_usage(results, costs=costs)
            ),
        ]
        if costs is not None:
            run_charts.append(
                _draw(
                    "cost",
                    "Cost",
                    lambda: _charts.cost_breakdown(costs, results=results),
                    "in USD (the price table's currency)" if money.converted else "",
                )
            )
    flags = g.flags
    context = {
        "title": title,
        "version": __version__,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "header": _header(
            results,
            costs,
            flags=flags,
            portfolio=g.portfolio,
            as_of=g.as_of,
            run_id=g.run_id,
            money=money,
        ),
        "summary": _summary(
            results, flags=flags, changes=g.changes, previous_label=g.previous_label
        ),
        "charts": risk_charts,
        "positions": positions,
        "positions_note": positions_note,
        "appendix": {
            "requests": _requests_table(results, costs, money),
            "charts": run_charts,
            "errors": _errors_table(results),
            "flags": _flags_table(flags),
            "flags_none": (
                f"No answer flagged: {flags.attrs.get('checked', 0)} answers checked for one "
                "shared value, echoes of the prompt, out-of-range or contradicting scores, "
                "refusals, cut answers and key mismatches."
            ),
            "provenance": provenance,
            "details": details,
        },
    }
    text = _redactor()(_environment().render(**context))
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if record:
        snapshot = results.copy()
        snapshot.attrs = {**results.attrs, "parameters": g.parameters}
        history.record(
            snapshot,
            costs,
            run_id=g.review_id,
            portfolio=g.portfolio,
            source=g.source,
            input_sha256=g.input_sha256,
            as_of=g.as_of if g.as_of_given else None,
            run_at=g.run_at,
        )
    if pdf:
        from portfolio_batch._export import to_pdf

        to_pdf(out, out.with_suffix(".pdf"))
    return out
