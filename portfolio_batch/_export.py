"""The review in the files people pass around: ``results.csv`` for Excel, ``results.xlsx`` with a
sheet per section of the report, and the report as PDF.

    >>> from portfolio_batch import _export as export
    >>> export.to_csv(results, "out/results.csv")                       # doctest: +SKIP
    >>> export.to_excel(results, costs, path="out/results.xlsx")        # doctest: +SKIP
    >>> export.to_pdf("out/report.html")                                 # doctest: +SKIP
    PosixPath('out/report.pdf')

The CSV has no JSON: the raw answer text (``content``) is left out (``results.parquet`` keeps
it), lists are written "a; b", numbers are rounded (weights to 6 decimals, costs to 8, other
floats to 6) and the file starts with a UTF-8 byte order mark, which is how Excel knows the
encoding. A simulated run's CSV starts with one notice line (``csv_notice``): read it with
``pd.read_csv(path, skiprows=1)``. The PDF is printed by headless Chromium (``chromium`` on the
PATH or ``PORTFOLIO_BATCH_CHROMIUM``), the route that renders the HTML exactly as a browser does.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from portfolio_batch.errors import ExportError, InputError, MissingDependencyError, missing_extra

__all__ = ["csv_frame", "csv_notice", "find_chromium", "to_csv", "to_excel", "to_pdf"]

DROPPED_COLUMNS = ("content",)  # the raw answer JSON: parsed into the answer columns already
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def csv_notice(results: pd.DataFrame) -> str | None:
    """The line a simulated run's ``results.csv`` starts with, None for a real API's results.

    It has no comma, so a spreadsheet shows it whole in its first cell, and it says how to skip
    it: ``pd.read_csv`` alone would take it for the header.
    """
    if not results.attrs.get("simulated"):
        return None
    from portfolio_batch._backend import banner_of

    banner = banner_of(results.attrs)
    return (
        f"# {banner.replace(', ', ' - ').replace(',', ' ')} "
        "Skip this line to read the table (pandas: skiprows=1)."
    )


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple | np.ndarray):
        return "; ".join(map(str, value))
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return value


def _digits(column: str) -> int:
    if column.endswith(("_usd", "_eur", "_gbp", "_jpy", "_chf")) or column.startswith("cost"):
        return 8
    return 6


def csv_frame(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` as ``to_csv`` writes it: no ``content`` column, lists as "a; b", floats
    rounded (costs to 8 decimals, the rest to 6).

    >>> frame = csv_frame(pd.DataFrame({"drivers": [["beta", "size"]], "weight": [0.1 + 0.2]}))
    >>> print(frame.to_csv(index=False), end="")
    drivers,weight
    beta; size,0.3
    """
    frame = results.drop(columns=[c for c in DROPPED_COLUMNS if c in results.columns])
    frame = frame.copy()
    for name in frame.columns:
        col = frame[name]
        if col.dtype == object:
            frame[name] = col.map(_cell)
        elif col.dtype.kind == "f":
            frame[name] = col.round(_digits(str(name)))
    return frame


def to_csv(results: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``csv_frame(results)`` to ``path`` for Excel (UTF-8 with a byte order mark), the
    simulated notice line first when the answers are simulated. Returns the path."""
    if not isinstance(results, pd.DataFrame):
        raise InputError(f"to_csv() needs the results DataFrame, got {type(results).__name__}")
    out = Path(path)
    frame = csv_frame(results)
    notice = csv_notice(results)
    with out.open("w", encoding="utf-8-sig", newline="") as fh:
        if notice is not None:
            fh.write(notice + "\n")
        frame.to_csv(fh, index=False, lineterminator="\n")
    return out


# -- Excel ------------------------------------------------------------------------------------


def _require_openpyxl() -> None:
    try:
        import openpyxl  # noqa: F401
    except ImportError as exc:
        raise missing_extra(
            "openpyxl", "excel", alternative="results.xlsx needs it; results.csv opens in Excel"
        ) from exc


def _sheets(
    results: pd.DataFrame, costs: pd.DataFrame | None, **options: Any
) -> dict[str, pd.DataFrame]:
    from portfolio_batch import review as rv
    from portfolio_batch._report import DEFINITIONS, cost_figures, gather, prompt_version

    g = gather(results, costs, **options)
    money = g.money
    label, cost = cost_figures(results, costs, money)
    summary: list[tuple[str, Any]] = [
        ("portfolio", g.portfolio or "Unnamed portfolio"),
        ("as of", g.as_of),
        ("run id", g.run_id or "not recorded"),
        (
            "model",
            f"simulated: local {results.attrs.get('engine')} engine"
            if results.attrs.get("simulated")
            else ", ".join(
                map(str, pd.unique(results.get("model", pd.Series(dtype=object)).dropna()))
            )
            or "unknown",
        ),
        ("prompt version", prompt_version(results)),
        ("coverage", rv.coverage_line(results, flags=g.flags)),
        (label, cost),
    ]
    if money.note:
        summary.append(("currency", money.note))
    if {"risk_score", "weight"} <= set(results.columns):
        summary.append(("summary", rv.summary_line(results, changes=g.changes, flags=g.flags)))
        score = rv.weighted_score(results)
        summary.append(("weighted risk score", None if score is None else round(score, 1)))
        for rec in rv.level_shares(results).to_dict("records"):
            summary.append((f"share of gross weight: {rec['risk_level']}", rec["share"]))
    summary += [("definitions", DEFINITIONS), ("disclaimer", "LLM opinion, not investment advice.")]
    if results.attrs.get("simulated"):
        from portfolio_batch._backend import banner_of

        summary.insert(0, ("simulated", banner_of(results.attrs)))
    sheets: dict[str, pd.DataFrame] = {
        "Summary": pd.DataFrame(summary, columns=["item", "value"]),
    }

    def add(name: str, make: Any) -> None:
        try:
            sheets[name] = make()
        except InputError as exc:  # e.g. no sector column: the sheet says why it is empty
            sheets[name] = pd.DataFrame({"not available": [str(exc)]})

    add("Contributions", lambda: rv.contributions(results, top=None))
    if g.changes is not None:
        sheets["Changes"] = g.changes
    add("Sectors", lambda: rv.sectors(results))
    add("Concentration", lambda: rv.concentration(results))
    add("Model vs proxy", lambda: rv.quant_proxy(results))
    add(
        "Positions",
        lambda: rv.positions(
            results, previous=g.previous, threshold=options.get("threshold", 10.0)
        ),
    )
    status = results["status"].astype("string").fillna("missing").value_counts()
    requests: list[tuple[str, Any]] = [(f"status {k}", int(v)) for k, v in status.items()]
    for col in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens"):
        if col in results.columns:
            requests.append((col, int(pd.to_numeric(results[col], errors="coerce").sum())))
    requests.append((label, cost))
    sheets["Requests"] = pd.DataFrame(requests, columns=["item", "value"])
    bad = results[results["status"].astype("string").fillna("missing") != "succeeded"]
    sheets["Errors"] = csv_frame(bad)
    flags = g.flags.copy()
    flags["examples"] = flags["examples"].map(lambda e: "; ".join(map(str, e or [])))
    sheets["Answer checks"] = flags
    sheets["Provenance"] = pd.DataFrame(
        [
            ("run id", g.run_id or "not recorded"),
            ("input", g.source or "the results' portfolio columns"),
            ("input sha256", g.input_sha256),
            ("backend", results.attrs.get("backend")),
            ("engine", results.attrs.get("engine")),
            ("prompt version", prompt_version(results)),
            ("parameters", ", ".join(f"{k}={v}" for k, v in g.parameters.items())),
            ("system prompt", results.attrs.get("system_prompt")),
            ("price table", costs.attrs.get("price_version") if costs is not None else None),
            ("generated", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
        ],
        columns=["item", "value"],
    )
    return sheets


_PERCENT = ("weight", "share", "cum_share", "gross_weight", "net_weight", "previous_weight")


def to_excel(
    results: pd.DataFrame,
    costs: pd.DataFrame | None = None,
    *,
    path: str | os.PathLike[str],
    **options: Any,
) -> Path:
    """Write the review to ``path`` as an Excel workbook, one sheet per section of the report:
    Summary, Contributions, Changes (when there is a previous run), Sectors, Concentration,
    Model vs proxy, Positions, Requests, Errors, Answer checks, Provenance.

    ``options`` are ``report``'s (``jobs=``, ``portfolio=``, ``previous=``, ``currency=``...).
    Needs openpyxl (the ``excel`` extra). Weights and shares are formatted as percentages, the
    header row is frozen and filterable.

        >>> to_excel(results, costs, path="out/results.xlsx", portfolio="Core")   # doctest: +SKIP
        PosixPath('out/results.xlsx')
    """
    _require_openpyxl()
    from openpyxl.utils import get_column_letter

    sheets = _sheets(results, costs, **options)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.xlsx")
    try:
        with pd.ExcelWriter(tmp, engine="openpyxl") as writer:
            for name, frame in sheets.items():
                frame = frame.copy()
                frame.attrs = {}
                for col in frame.columns:
                    if frame[col].dtype == object:
                        frame[col] = frame[col].map(_cell)
                frame.to_excel(writer, sheet_name=name, index=False)
                sheet = writer.sheets[name]
                sheet.freeze_panes = "A2"
                if len(frame.columns):
                    sheet.auto_filter.ref = sheet.dimensions
                for i, col in enumerate(frame.columns, start=1):
                    letter = get_column_letter(i)
                    text = frame[col].astype(str)
                    width = max([len(str(col)), *(text.str.len().head(200).tolist() or [0])])
                    sheet.column_dimensions[letter].width = min(max(8, width + 2), 60)
                    if str(col) in _PERCENT or str(col).endswith("_share"):
                        for cell in sheet[letter][1:]:
                            cell.number_format = "0.00%"
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# -- PDF --------------------------------------------------------------------------------------


def find_chromium() -> str:
    """The Chromium (or Chrome) to print with: ``PORTFOLIO_BATCH_CHROMIUM``, else the first of
    chromium, chromium-browser, google-chrome on the PATH."""
    configured = os.environ.get("PORTFOLIO_BATCH_CHROMIUM")
    if configured:
        if shutil.which(configured) is None:
            raise MissingDependencyError(
                f"PORTFOLIO_BATCH_CHROMIUM={configured!r} is not an executable; point it at "
                "Chromium or Chrome, or unset it to look on the PATH."
            )
        return configured
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise MissingDependencyError(
        "The PDF is printed with headless Chromium, which is not installed: install it "
        "(Debian/Ubuntu: sudo apt-get install chromium; macOS/Windows: Google Chrome) or set "
        "PORTFOLIO_BATCH_CHROMIUM to its path. The HTML report is written either way; a "
        "browser's Print → Save as PDF gives the same file."
    )


def to_pdf(
    html: str | os.PathLike[str],
    pdf: str | os.PathLike[str] | None = None,
    *,
    timeout: float = 120.0,
) -> Path:
    """Print the HTML report ``html`` to ``pdf`` (default: the same name with ``.pdf``) with
    headless Chromium, A4, without the browser's header and footer. Returns the PDF's path.

        >>> to_pdf("out/report.html")          # doctest: +SKIP
        PosixPath('out/report.pdf')
    """
    source = Path(html).resolve()
    if not source.is_file():
        raise InputError(f"to_pdf(): {source} does not exist; write the report first (pb.report)")
    target = Path(pdf) if pdf is not None else source.with_suffix(".pdf")
    target = target.resolve()
    browser = find_chromium()
    with tempfile.TemporaryDirectory(prefix="pb-chromium-") as profile:
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}.pdf")
        args = [
            browser,
            "--headless",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={tmp}",
            source.as_uri(),
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        try:
            proc = subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            tmp.unlink(missing_ok=True)
            raise ExportError(
                f"Chromium ({browser}) did not print {source} within {timeout:g} s; try again, or "
                "open the HTML in a browser and print it to PDF."
            ) from None
        try:
            ok = tmp.is_file() and tmp.read_bytes()[:5] == b"%PDF-"
            if proc.returncode != 0 or not ok:
                tail = " ".join((proc.stderr or "").strip().splitlines()[-3:])
                raise ExportError(
                    f"Chromium ({browser}) could not print {source} to PDF (exit "
                    f"{proc.returncode}): {tail or 'no output'}. Open the HTML in a browser and "
                    "print it to PDF instead."
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target
