"""The end of a run, shared by ``analyze-risk``, ``jobs resume`` and ``jobs results``: write
``results.csv``, ``results.parquet`` and ``report.html`` into ``--out``, print the report to stdout
and pick the exit code (0 all succeeded, 3 partial).

A simulated run's ``results.csv`` starts with one notice line (``# Simulated: ...``, see
``csv_notice``) above the header: read it with ``pd.read_csv(path, skiprows=1)``. Not
``comment="#"``, which would also cut any answer text holding a ``#``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.text import Text

from portfolio_batch.cli._console import EXIT_OK, EXIT_PARTIAL, err, out
from portfolio_batch.cli._render import errors_table, flags_text, positions_table, summary_table
from portfolio_batch.home import writable_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["csv_notice", "finish", "write_results"]


def _json_cell(value: Any) -> Any:
    # Lists (drivers) and dicts would be written as Python reprs; JSON reads back anywhere.
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=str).decode()
    return value


def csv_notice(results: pd.DataFrame) -> str | None:
    """The line a simulated run's ``results.csv`` starts with, None for a real API's results.

    It has no comma, so a spreadsheet shows it whole in its first cell, and it says how to skip
    it: ``pd.read_csv`` alone would take it for the header.
    """
    if not results.attrs.get("simulated"):
        return None
    from portfolio_batch.backend import simulated_banner

    banner = simulated_banner(results.attrs.get("engine"), mode=results.attrs.get("mode", "batch"))
    return (
        f"# {banner.replace(', ', ' - ').replace(',', ' ')} "
        "Skip this line to read the table (pandas: skiprows=1)."
    )


def write_results(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``results.csv`` (lists as JSON text; ``csv_notice`` first for a simulated run) and
    ``results.parquet`` (lists as lists; its attrs say where the answers came from)."""
    frame = results.copy()
    # attrs travel into parquet metadata as JSON: only where the answers came from, the other
    # run details are kept in run.json.
    frame.attrs = {
        k: results.attrs[k] for k in ("backend", "engine", "simulated") if k in results.attrs
    }
    writable_dir(out_dir, what="--out")
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"
    frame.to_parquet(parquet_path, index=False)
    for name in frame.columns:
        if frame[name].dtype == object:
            frame[name] = frame[name].map(_json_cell)
    notice = csv_notice(results)
    with csv_path.open("w", encoding="utf-8", newline="") as fh:
        if notice is not None:
            fh.write(notice + "\n")
        frame.to_csv(fh, index=False, lineterminator="\n")
    return [csv_path, parquet_path]


def finish(
    results: pd.DataFrame,
    *,
    costs: pd.DataFrame | None,
    jobs: pd.DataFrame | None,
    out_dir: Path,
    key: str | None,
) -> int:
    """Write the outputs, print the report, return the exit code."""
    import portfolio_batch as pb

    written = write_results(results, out_dir)
    report_path = out_dir / "report.html"
    summary = pb.summarize(results, costs=costs)  # once: its answer checks go to both
    pb.report(results, costs, path=report_path, jobs=jobs, summary=summary)
    written.append(report_path)

    if summary.banner:  # said at the start too; the summary is what gets read and pasted
        out.print(Text(summary.banner, style="bold yellow"))
    out.print(summary_table(results, costs, summary))
    out.print(flags_text(summary.flags))
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
