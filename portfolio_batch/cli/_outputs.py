"""The end of a run, shared by ``analyze-risk``, ``jobs resume`` and ``jobs results``: write
``results.csv``, ``results.parquet`` and ``report.html`` into ``--out``, print the report to stdout
and pick the exit code (0 all succeeded, 3 partial)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.text import Text

from portfolio_batch.cli._console import EXIT_OK, EXIT_PARTIAL, err, out
from portfolio_batch.cli._render import errors_table, positions_table, summary_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["finish", "write_results"]


def _json_cell(value: Any) -> Any:
    # Lists (drivers) and dicts would be written as Python reprs; JSON reads back anywhere.
    if isinstance(value, list | tuple | dict):
        return orjson.dumps(value, default=str).decode()
    return value


def write_results(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``results.csv`` (lists as JSON text) and ``results.parquet`` (lists as lists)."""
    frame = results.copy()
    # attrs travel into parquet metadata as JSON; they are run details, kept in run.json instead.
    frame.attrs = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = out_dir / "results.csv", out_dir / "results.parquet"
    frame.to_parquet(parquet_path, index=False)
    for name in frame.columns:
        if frame[name].dtype == object:
            frame[name] = frame[name].map(_json_cell)
    frame.to_csv(csv_path, index=False)
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
    pb.report(results, costs, path=report_path, jobs=jobs)
    written.append(report_path)

    out.print(summary_table(results, costs))
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
