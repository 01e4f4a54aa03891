"""Rich renderings of the pipeline's frames: the cost estimate, the model comparison, the jobs
list and the aggregated report (summary, positions by risk, errors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from portfolio_batch._contract import LEVEL_COLORS, STATUS_COLORS
from portfolio_batch._currency import money_from_attrs

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "changes_table",
    "compare_table",
    "errors_table",
    "estimate_table",
    "flags_text",
    "frame_table",
    "positions_table",
    "summary_table",
]

# status / risk level -> rich style: _contract's colour, bold where the eye must stop
_BOLD = frozenset({"failed", "finalizing", "high"})
_STATUS_STYLE = {s: f"bold {c}" if s in _BOLD else c for s, c in STATUS_COLORS.items()}
_LEVEL_STYLE = {lv: f"bold {c}" if lv in _BOLD else c for lv, c in LEVEL_COLORS.items()}


def usd(value: Any) -> str:
    """Dollars with enough digits for sub-cent batch costs."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    return f"${value:,.2f}" if abs(value) >= 10 else f"${value:,.4f}"


def _int(value: Any) -> str:
    try:
        if value is None or math.isnan(float(value)):
            return "-"
    except (TypeError, ValueError):
        return str(value)
    return f"{int(value):,}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    return str(value)


def status_text(status: Any) -> Text:
    return Text(str(status), style=_STATUS_STYLE.get(str(status), ""))


def estimate_table(costs: pd.DataFrame, manifest: pd.DataFrame | None = None) -> RenderableType:
    """The estimate shown before anything is sent: requests, tokens, batch vs sync, shards."""
    batch = float(costs["batch_cost_usd"].sum())
    sync = float(costs["sync_cost_usd"].sum())
    models = ", ".join(sorted({str(m) for m in costs["model"].unique()}))
    table = Table(title="Cost estimate", box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("Model", models)
    table.add_row("Requests", _int(len(costs)))
    approx = costs.attrs.get("token_count") == "approx"  # Claude/Gemini: o200k's count
    table.add_row(
        f"Input tokens{' (approx.)' if approx else ''}", _int(costs["input_tokens"].sum())
    )
    mode = costs.attrs.get("output_tokens", "max")
    if costs.attrs.get("output_includes_reasoning"):
        mode = f"{mode}, reasoning included"  # reasoning tokens are billed as output
    table.add_row(f"Output tokens (est., {mode})", _int(costs["output_tokens_est"].sum()))
    money = money_from_attrs(costs.attrs)
    fmt = money.format if money.converted else usd
    table.add_row("Batch cost", fmt(batch))
    table.add_row("Sync cost", fmt(sync))
    saved = sync - batch
    pct = f" ({saved / sync:.0%})" if sync else ""
    table.add_row("Batch saves", f"{fmt(saved)}{pct}")
    if money.converted:
        table.add_row("Currency", money.note or "")
    source = str(costs.attrs.get("price_source") or "")
    version = str(costs.attrs.get("price_version") or "")
    if source or version:
        table.add_row("Prices", version if source in version else f"{source} {version}".strip())
    parts: list[RenderableType] = [table]
    if manifest is not None and len(manifest) > 1:
        folder = Path(str(manifest["path"].iloc[0])).parent
        shards = Table(
            title=f"{len(manifest)} shards in {folder}", box=box.SIMPLE, title_justify="left"
        )
        for name in ("Shard", "Requests", "Bytes", "Input tokens (est.)", "File"):
            shards.add_column(name, justify="left" if name == "File" else "right")
        for row in manifest.itertuples(index=False):
            shards.add_row(
                str(row.shard),
                _int(row.n_requests),
                _int(row.n_bytes),
                _int(row.est_input_tokens),
                Path(str(row.path)).name,
            )
        parts.append(shards)
    return Group(*parts)


def frame_table(frame: pd.DataFrame, *, title: str | None = None) -> Table:
    """Any frame as a table: numbers right-aligned, ``*_usd`` columns as dollars."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    columns = list(frame.columns)
    for name in columns:
        numeric = frame[name].dtype.kind in "iuf"
        table.add_column(
            str(name),
            justify="right" if numeric else "left",
            overflow="fold",
            no_wrap=str(name).endswith("_id"),
        )
    for row in frame.itertuples(index=False):
        cells = []
        for name, value in zip(columns, row, strict=True):
            if str(name).endswith("_usd"):
                cells.append(usd(value))
            elif (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and "token" in str(name)
            ):
                cells.append(_int(value))
            else:
                cells.append(_cell(value))
        table.add_row(*cells)
    return table


def compare_table(comparison: pd.DataFrame) -> Table:
    """``compare_models`` as a table, one row per model."""
    sources = sorted({str(v) for v in comparison.get("price_source", [])})
    caption = f"Prices: {', '.join(sources)}" if sources else ""
    thinking = comparison.get("output_includes_reasoning")
    if thinking is not None and bool(thinking.any()):
        names = ", ".join(comparison.loc[thinking.astype(bool), "model"].astype(str))
        caption += (
            f"\nOut tokens of {names} include reasoning tokens (billed as output; "
            "--max-tokens bounds reasoning and answer together)."
        )
    counts = comparison.get("token_count")
    if counts is not None and bool((counts == "approx").any()):
        names = ", ".join(comparison.loc[counts == "approx", "model"].astype(str))
        caption += (
            f"\nIn tokens of {names} are approximate (OpenAI's o200k tokenizer; no offline "
            "tokenizer exists for them, error unmeasured)."
        )
    table = Table(
        title="Batch vs sync, per model",
        caption=caption.strip() or None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
    )
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("model", "Model", str),
        ("n_requests", "Requests", _int),
        ("input_tokens", "In tokens", _int),
        ("output_tokens_est", "Out tokens", _int),
        ("batch_cost_usd", "Batch", usd),
        ("sync_cost_usd", "Sync", usd),
        ("savings_usd", "Saved", usd),
    ]
    money = money_from_attrs(comparison.attrs)
    if money.converted:  # the costs in the user's currency; the caption gives the rate
        columns = [
            (name.replace("_usd", f"_{money.suffix}"), f"{label} ({money.currency})", money.format)
            if name.endswith("_usd")
            else (name, label, fmt)
            for name, label, fmt in columns
        ]
        table.caption = (str(table.caption or "") + f"\nCosts in {money.note}.").strip()
    present = [c for c in columns if c[0] in comparison.columns]
    for name, label, _ in present:
        table.add_column(label, justify="left" if name == "model" else "right", no_wrap=True)
    for row in comparison.to_dict("records"):
        table.add_row(*(fmt(row[name]) for name, _, fmt in present))
    return table


def summary_table(results: pd.DataFrame, costs: pd.DataFrame | None, summary: Any = None) -> Table:
    """``pb.summarize`` (or the ``summary`` given): successes, failures by status and code,
    estimated vs actual cost."""
    import portfolio_batch as pb

    if summary is None:
        summary = pb.summarize(results, costs=costs)
    table = Table(title="Summary", box=box.SIMPLE, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("Requests", _int(summary.items))
    table.add_row("Succeeded", Text(_int(summary.successes), style="green"))
    if summary.trusted is not None and summary.trusted != summary.successes:
        table.add_row("  of them trusted", Text(_int(summary.trusted), style="bold red"))
    for row in summary.failures.itertuples(index=False):
        code = _cell(row.error_code)
        label = f"  {row.status}" + (f" ({code})" if code else "")
        table.add_row(label, Text(_int(row.count), style=_STATUS_STYLE.get(str(row.status), "red")))
    table.add_row("Estimated cost", usd(summary.est_cost_usd))
    label = summary.cost_label  # "actual cost", or "cost at OpenAI batch prices" when simulated
    table.add_row(label[0].upper() + label[1:], usd(summary.actual_cost_usd))
    table.add_row("Input tokens", _int(summary.prompt_tokens))
    table.add_row("Output tokens", _int(summary.completion_tokens))
    if getattr(summary, "reasoning_tokens", 0):
        table.add_row("  of them reasoning", _int(summary.reasoning_tokens))
    return table


def flags_text(flags: pd.DataFrame | None) -> Text:
    """``check_answers``' flags, a line each, after "The answers look degenerate: ..." when one
    is severe; a green line when there is none."""
    from portfolio_batch._quality import headline

    if flags is None or not len(flags):
        checked = flags.attrs.get("checked", 0) if flags is not None else 0
        return Text(f"Answer checks: no flag on {checked} answers.", style="green")
    text = Text()
    line = headline(flags)
    if line:
        text.append(line + "\n", style="bold red")
    for row in flags.itertuples(index=False):
        style = "red" if row.severity == "severe" else "yellow"
        field = f" {row.field}" if isinstance(row.field, str) else ""
        text.append(f"  {row.severity} {row.check}{field}: ", style=style)
        text.append(f"{row.message}; {row.advice}")
        examples: Any = row.examples
        if examples:
            text.append(f" (e.g. {'; '.join(map(str, examples))})", style="dim")
        text.append("\n")
    text.rstrip()
    return text


def positions_table(results: pd.DataFrame, *, key: str | None = None, width: int = 160) -> Table:
    """Every position, highest risk first; positions without an answer come last. On narrow
    terminals the name and sector columns are left out so the drivers stay readable."""
    key = key or next((c for c in results.columns if c != "custom_id"), results.columns[0])
    scored = "risk_score" in results
    ranked = results.assign(_unscored=results["risk_score"].isna() if scored else True)
    order = ["_unscored", "risk_score"] if scored else ["_unscored"]
    ranked = ranked.sort_values(order, ascending=[True, False][: len(order)], kind="stable")
    table = Table(title="Positions by risk", box=box.SIMPLE_HEAD, title_justify="left")
    wanted = [key]
    if width >= 140:
        wanted.append("name")
    if width >= 110:
        wanted.append("sector")
    wanted += ["weight", "risk_score", "risk_level", "drivers", "status"]
    columns = [c for c in dict.fromkeys(wanted) if c in ranked.columns]
    for name in columns:
        if name == "drivers":
            table.add_column(name, ratio=1, min_width=20, overflow="fold")
        else:
            right = name in ("weight", "risk_score")
            wrap = name in ("name", "sector")
            table.add_column(
                name,
                justify="right" if right else "left",
                no_wrap=not wrap,
                max_width=28 if wrap else None,
            )
    for row in ranked[columns].itertuples(index=False):
        cells: list[Text | str] = []
        for name, value in zip(columns, row, strict=True):
            if name == "weight":
                cells.append(f"{float(value):.1%}" if value is not None else "")
            elif name == "risk_score":
                cells.append(_int(value))
            elif name == "risk_level":
                cells.append(Text(_cell(value), style=_LEVEL_STYLE.get(str(value), "")))
            elif name == "status":
                cells.append(status_text(value))
            else:
                cells.append(_cell(value))
        table.add_row(*cells)
    return table


def errors_table(results: pd.DataFrame) -> Table | Text:
    """The requests that did not succeed, with their code and message."""
    bad = results[results["status"] != "succeeded"]
    if not len(bad):
        return Text("No errors.", style="green")
    table = Table(title=f"Errors ({len(bad)})", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("custom_id", "status", "http_status", "error_code", "error_message"):
        table.add_column(name, overflow="fold")
    for row in bad.itertuples(index=False):
        table.add_row(
            str(row.custom_id),
            status_text(row.status),
            _int(getattr(row, "http_status", None)),
            _cell(getattr(row, "error_code", None)),
            _cell(getattr(row, "error_message", None)),
        )
    return table


def _when(value: Any) -> str:
    stamp = getattr(value, "strftime", None)
    return stamp("%Y-%m-%d %H:%M") if stamp is not None and value == value else _cell(value)


def short_backend(name: Any) -> str:
    """A backend name for a narrow column: ``local:embedded:rules`` → ``local:rules``,
    ``local:http://127.0.0.1:8000/v1`` → ``local:127.0.0.1:8000``, ``openai:org:proj`` → ``openai``.
    """
    text = _cell(name)
    if text.startswith("local:embedded:"):
        return "local:" + text.removeprefix("local:embedded:")
    if text.startswith("local:"):
        rest = text.removeprefix("local:").split("://", 1)[-1]
        return "local:" + rest.split("/", 1)[0]
    if text.startswith("openai:"):
        return "openai"
    return text


def _short_when(value: Any) -> str:
    stamp = getattr(value, "strftime", None)
    return stamp("%m-%d %H:%M") if stamp is not None and value == value else _cell(value)


def jobs_table(jobs: pd.DataFrame, *, title: str = "Jobs", show_run: bool = True) -> Table:
    """The registry's jobs, one row per batch, readable at 80 columns: short ids (the run id's
    random suffix, the batch id's first 8 characters; any unique start of an id or of these is
    accepted wherever an id is), the run shown on its first row only."""
    from portfolio_batch.cli._runs import short_id

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        caption="requests: done/failed/total. Short ids: any unique start of a run or batch id, "
        "or of these, is taken wherever an id is.",
        caption_justify="left",
    )
    if show_run:
        table.add_column("run", no_wrap=True, min_width=6)
    table.add_column("created", no_wrap=True, min_width=11)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("batch", no_wrap=True, min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    table.add_column("requests", justify="right", no_wrap=True)
    table.add_column("est.", justify="right", no_wrap=True)
    # the one column that may wrap (folded, never cut) when counts are wide
    table.add_column("backend", overflow="fold", min_width=6)
    last = None
    for row in jobs.itertuples(index=False):
        run = str(row.run_id)
        cells: list[Any] = [short_id(run) if run != last else ""] if show_run else []
        last = run
        cells += [
            _short_when(row.created_at),
            str(row.shard),
            short_id(row.batch_id) if _cell(row.batch_id) else "-",
            status_text(row.status),
            f"{_int(row.completed)}/{_int(row.failed)}/{_int(row.n_requests)}",
            usd(row.est_cost_usd),
            short_backend(row.backend),
        ]
        table.add_row(*cells)
    return table


def changes_table(changes: pd.DataFrame, *, title: str) -> Table | Text:
    """``pb.compare``'s rows: the position, the change and what moved (the rationales are in
    the report)."""
    if not len(changes):
        return Text(f"{title}: none.", style="green")
    key = str(changes.attrs.get("key") or changes.columns[0])
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    table.add_column(key, no_wrap=True, style="bold")
    table.add_column("change", no_wrap=True)
    table.add_column("what moved", overflow="fold")
    styles = {"upgraded": "bold red", "downgraded": "green", "new": "cyan", "dropped": "magenta"}
    for rec in changes.to_dict("records"):
        table.add_row(
            str(rec[key]),
            Text(str(rec["change"]), style=styles.get(str(rec["change"]), "")),
            _cell(rec["detail"]),
        )
    return table


def run_details(jobs: pd.DataFrame) -> Text:
    """``jobs show``'s lines under the table: the full run id, and per batch its full batch and
    file ids and shard path, one per line so each fits a narrow terminal and can be copied."""
    first = jobs.iloc[0]
    created = jobs["created_at"].dropna()
    text = Text()
    text.append("run ", style="bold")
    text.append(f"{first['run_id']}\n")
    when = _when(created.min()) + " UTC" if len(created) else "-"
    text.append(
        f"  created {when} · {short_backend(first['backend'])} · model {_cell(first['model'])}"
        f" · {len(jobs)} batch{'es' if len(jobs) != 1 else ''}\n"
    )
    for row in jobs.itertuples(index=False):
        text.append(f"shard {row.shard}", style="bold")
        text.append(f"  batch {_cell(row.batch_id) or '-'}\n")
        for label, value in (
            ("input file", row.input_file_id),
            ("output file", row.output_file_id),
            ("error file", row.error_file_id),
            ("requests", row.path),
        ):
            text.append(f"  {label:<12}{_cell(value) or '-'}\n")
    text.rstrip()
    return text
