"""``portfolio-batch report``: the risk review of a run again, compared with another run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from portfolio_batch.cli._console import err, out
from portfolio_batch.cli._options import AsOf, Currency, FxDate, FxRate, Name
from portfolio_batch.cli.analyze import Engine
from portfolio_batch.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["report"]


def _reviewed_ids() -> list[str]:
    from portfolio_batch._history import reviewed_runs

    return [str(r["run_id"]) for r in reviewed_runs()]


def resolve_run(ident: str) -> str:
    """The full run id ``ident`` names: a reviewed run (batch or sync) or a run in the job
    registry, by its id, a unique start of it or of its short id, or one of its batch ids."""
    from portfolio_batch.cli._runs import find_run, resolve_id

    reviewed = _reviewed_ids()
    found = resolve_id(ident, reviewed)
    if found is not None:
        return found
    try:
        return str(find_run(ident)["run_id"].iloc[0])
    except InputError:
        raise InputError(
            f"no run {ident!r} in the registry or among the reviewed runs; list them with "
            "`portfolio-batch jobs list` (synchronous runs are kept once their report is written)."
        ) from None


def _load(
    run_id: str, engine: str | None
) -> tuple[
    pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None, pd.DataFrame | None, dict[str, Any]
]:
    """(results, costs, jobs, requests, run.json info) of a run: its kept snapshot when it has
    one (offline, fast), else aggregated again from its batches' result files."""
    import portfolio_batch as pb
    from portfolio_batch import _history as history
    from portfolio_batch.cli._runs import load_run_info

    jobs: pd.DataFrame = pb.jobs(run_id=run_id)
    info: dict[str, Any] = {}
    if len(jobs) and jobs["path"].notna().any():
        info = load_run_info(Path(str(jobs["path"].dropna().iloc[0])).parent)
    try:
        results, costs, row = history.load(run_id)
    except InputError:
        if not len(jobs):
            raise
        from portfolio_batch.cli._pipeline import aggregate_run, client_for_run

        client = client_for_run(jobs, engine)
        jobs = pb.resume(run_id, client=client)
        results, requests, costs, info = aggregate_run(jobs, client=client)
        return results, costs, jobs, requests, info
    info = {
        **info,
        "portfolio": row.get("source") or info.get("portfolio"),
        "name": row.get("portfolio") or info.get("name"),
        "as_of": row.get("as_of") or info.get("as_of"),
    }
    return results, costs, (jobs if len(jobs) else None), None, info


def report(
    run: Annotated[
        str,
        typer.Argument(
            metavar="RUN_ID",
            help="The run to report on: its id, any unique start of it or of its short id "
            "(`jobs list`), or one of its batch ids.",
        ),
    ],
    compare_to: Annotated[
        str | None,
        typer.Option(
            "--compare-to",
            help="Compare with this run [default: the latest earlier run of the same portfolio].",
            show_default=False,
        ),
    ] = None,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also print the report to report.pdf (headless Chromium).")
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write report.html (and .pdf, results.xlsx) [default: the run's own --out].",
            show_default=False,
        ),
    ] = None,
    name: Name = None,
    as_of: AsOf = None,
    currency: Currency = "USD",
    fx_rate: FxRate = None,
    fx_date: FxDate = None,
    engine: Annotated[
        Engine | None,
        typer.Option(
            "--engine",
            help="Embedded server engine, only needed to aggregate a run that has no kept "
            "results yet (when no API key is set).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the risk review of RUN_ID (report.html, results.xlsx) and print its headline and
    what changed since the run it is compared with.

    The run's results are read from the copy kept when its report was first written (offline);
    a run without one is aggregated again from its batches. Exit code 0, or 2 for an unknown or
    ambiguous id.

    Example:

        portfolio-batch report ab12cd --compare-to 9f0e1d --pdf
    """
    import portfolio_batch as pb
    from portfolio_batch import review as rv
    from portfolio_batch._export import to_excel, to_pdf
    from portfolio_batch._home import writable_dir
    from portfolio_batch._report import gather
    from portfolio_batch.cli._options import money_options
    from portfolio_batch.cli._outputs import review_options
    from portfolio_batch.cli._render import changes_table
    from portfolio_batch.cli._runs import run_out_dir
    from portfolio_batch.errors import MissingDependencyError

    money = money_options(currency, fx_rate, fx_date)
    run_id = resolve_run(run)
    previous_id = resolve_run(compare_to) if compare_to is not None else None
    if previous_id == run_id:
        raise InputError(
            f"--compare-to names the run being reported ({run_id}); give an earlier run."
        )
    results, costs, jobs, requests, info = _load(run_id, engine.value if engine else None)
    if out_dir is None:
        own = info.get("out") or (
            str(run_out_dir(jobs["path"].dropna().iloc[0]))
            if jobs is not None and jobs["path"].notna().any()
            else None
        )
        out_dir = Path(own) if own else Path("portfolio-batch-out")
    target = writable_dir(out_dir, what="--out").resolve()
    options: dict[str, Any] = {
        **review_options(info),
        **({"portfolio": name} if name else {}),
        **({"as_of": as_of} if as_of else {}),
        **money,
        "jobs": jobs,
        "requests": requests,
        "run_id": run_id,
    }
    if previous_id is not None:
        options["previous"] = previous_id
    found = gather(results, costs, **options)
    options["previous"] = found.previous if found.previous is not None else False
    written = [pb.report(results, costs=costs, path=target / "report.html", **options)]
    if pdf:
        written.append(to_pdf(written[0], target / "report.pdf"))
    try:
        written.append(to_excel(results, costs, path=target / "results.xlsx", **options))
    except MissingDependencyError as exc:
        err.print(Text(f"No results.xlsx: {exc}", style="yellow"))

    if results.attrs.get("simulated"):
        from portfolio_batch._backend import banner_of

        out.print(Text(banner_of(results.attrs), style="bold yellow"))
    out.print(
        Text(f"Run {run_id} · {found.portfolio or 'unnamed portfolio'} · as of {found.as_of}")
    )
    said = {"risk_score", "weight"} <= set(results.columns)  # the summary line says changes
    if said:
        out.print(
            Text(
                rv.summary_line(
                    results, changes=found.changes, flags=found.flags, since=found.previous_label
                )
            )
        )
    else:
        out.print(Text(rv.coverage_line(results, flags=found.flags) + "."))
    if found.changes is not None:
        # an empty comparison is already "No change since ..." in the summary line
        if len(found.changes) or not said:
            since = found.previous_label or "the previous run"
            out.print(changes_table(found.changes, title=f"Changes since {since}"))
    else:
        out.print(Text("No earlier run of this portfolio: nothing to compare with.", style="dim"))
    for path in written:
        err.print(Text.assemble("Wrote ", (str(path), "bold")))
