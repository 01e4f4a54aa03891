"""The end of a run, shared by ``analyze-risk``, ``jobs resume`` and ``jobs results``: write
``results.csv``, ``results.parquet`` and ``report.html`` into ``--out``, print the report to stdout
and pick the exit code (0 all succeeded, 3 partial).

A simulated run's ``results.csv`` starts with one notice line (``# Simulated: ...``, see
``csv_notice``) above the header: read it with ``pd.read_csv(path, skiprows=1)``. Not
``comment="#"``, which would also cut any answer text holding a ``#``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from portfolio_batch._export import csv_notice
from portfolio_batch._home import writable_dir
from portfolio_batch.cli._console import EXIT_OK, EXIT_PARTIAL, err, out
from portfolio_batch.cli._render import (
    changes_table,
    errors_table,
    flags_text,
    positions_table,
    summary_table,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["csv_notice", "finish", "review_options", "write_results"]


def write_results(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``results.csv`` (for Excel: no raw JSON, lists as "a; b", rounded; ``csv_notice`` first
    for a simulated run) and ``results.parquet`` (every column as it is; its attrs say where the
    answers came from)."""
    from portfolio_batch._export import to_csv

    frame = results.copy()
    # attrs travel into parquet metadata as JSON: only where the answers came from, the other
    # run details are kept in run.json.
    frame.attrs = {
        k: results.attrs[k] for k in ("backend", "engine", "simulated") if k in results.attrs
    }
    writable_dir(out_dir, what="--out")
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"
    frame.to_parquet(parquet_path, index=False)
    to_csv(results, csv_path)
    return [csv_path, parquet_path]


def review_options(info: dict[str, Any], *, portfolio: Path | None = None) -> dict[str, Any]:
    """``report`` keywords from a run's ``run.json`` (or the options of this command): the
    portfolio's name (default: the file name), its file, as-of date and the currency."""
    source = info.get("portfolio") or (str(portfolio) if portfolio is not None else None)
    name = info.get("name") or (Path(source).stem if source else None)
    options: dict[str, Any] = {"portfolio": name, "source": source, "as_of": info.get("as_of")}
    if info.get("currency"):
        options.update(
            currency=info["currency"], fx_rate=info.get("fx_rate"), fx_date=info.get("fx_date")
        )
    return options


def finish(
    results: pd.DataFrame,
    *,
    costs: pd.DataFrame | None,
    jobs: pd.DataFrame | None,
    out_dir: Path,
    key: str | None,
    run_id: str | None = None,
    requests: pd.DataFrame | None = None,
    info: dict[str, Any] | None = None,
) -> int:
    """Write the outputs (results.csv, results.parquet, report.html, results.xlsx when openpyxl
    is installed), print the summary, the headline, the changes since the portfolio's previous
    run, the positions and the errors, and return the exit code. ``info`` is the run's
    ``run.json`` (name, as-of date, input hash, currency)."""
    import portfolio_batch as pb
    from portfolio_batch import review as rv
    from portfolio_batch._export import to_excel
    from portfolio_batch._report import gather
    from portfolio_batch.errors import MissingDependencyError

    info = info or {}
    if info.get("portfolio_sha256"):
        # the file as it was when the run was made; it may have been edited since
        results.attrs["input_sha256"] = info["portfolio_sha256"]
    summary = pb.summarize(results, costs=costs)  # once: its answer checks go to both
    options = {
        **review_options(info),
        "jobs": jobs,
        "requests": requests,
        "run_id": run_id,
        "summary": summary,
    }
    found = gather(results, costs, **options)
    options["previous"] = found.previous if found.previous is not None else False
    written = write_results(results, out_dir)
    report_path = out_dir / "report.html"
    pb.report(results, costs=costs, path=report_path, **options)
    written.append(report_path)
    try:
        options.pop("summary")
        written.append(to_excel(results, costs, path=out_dir / "results.xlsx", **options))
    except MissingDependencyError as exc:
        err.print(Text(f"No results.xlsx: {exc}", style="yellow"))

    if summary.banner:  # said at the start too; the summary is what gets read and pasted
        out.print(Text(summary.banner, style="bold yellow"))
    out.print(summary_table(results, costs, summary))
    out.print(flags_text(summary.flags))
    said = {"risk_score", "weight"} <= set(results.columns)  # the summary line says changes
    if said:
        out.print(
            Text(
                rv.summary_line(
                    results, changes=found.changes, flags=found.flags, since=found.previous_label
                )
            )
        )
    if found.changes is not None:
        # an empty comparison is already "No change since ..." in the summary line
        if len(found.changes) or not said:
            since = found.previous_label or "the previous run"
            out.print(changes_table(found.changes, title=f"Changes since {since}"))
    else:
        out.print(
            Text("No earlier run of this portfolio: nothing to compare with yet.", style="dim")
        )
    out.print(positions_table(results, key=key, width=out.width))
    out.print(errors_table(results))
    for path in written:
        err.print(Text.assemble("Wrote ", (str(path), "bold")))

    bad = int((results["status"] != "succeeded").sum())
    if bad:
        err.print(
            Text(
                f"Partial results: {bad} of {len(results)} requests did not succeed "
                f"(see the errors above and {report_path}).",
                style="yellow",
            )
        )
        cut = int(
            (
                (results["status"] == "invalid_output") & (results.get("finish_reason") == "length")
            ).sum()
        )
        if cut:
            err.print(
                Text(
                    f"{cut} answer(s) were cut at the output-token limit (finish_reason length): "
                    "run again with a larger --max-tokens.",
                    style="yellow",
                )
            )
        return EXIT_PARTIAL
    return EXIT_OK
