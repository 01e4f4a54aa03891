"""``portfolio-batch jobs``: the runs in the job registry: list, show, resume, cancel, results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from portfolio_batch._contract import TERMINAL
from portfolio_batch.cli._console import err, out
from portfolio_batch.cli.analyze import Engine

__all__ = ["app"]

app = typer.Typer(
    name="jobs",
    help="The runs in the job registry ($PORTFOLIO_BATCH_HOME/registry.sqlite).\n\n"
    "Example:\n\n    portfolio-batch jobs list",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

_Ident = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="A run id (from `jobs list`) or one of its batch ids; any unique start of either, "
        "or of the short id `jobs list` shows.",
    ),
]
_Engine = Annotated[
    Engine | None,
    typer.Option(
        "--engine",
        help="Embedded server engine when no API key is set; ignored with a key.",
        show_default=False,
    ),
]


def _out_dir(jobs_paths: list[str], out_dir: Path | None) -> Path:
    from portfolio_batch._home import writable_dir
    from portfolio_batch.cli._runs import run_out_dir

    if out_dir is not None:
        return writable_dir(out_dir, what="--out").resolve()
    # By default, the run's original --out (from its run.json next to the shards). Checked before
    # polling: hours of waiting must not end in a directory that cannot be written.
    return writable_dir(
        run_out_dir(jobs_paths[0]),
        what="the run's own --out",
        fix="pass --out a directory you can write to",
    ).resolve()


@app.command("list")
def list_jobs(
    running: Annotated[
        bool, typer.Option("--running", help="Only runs with batches not finished yet.")
    ] = False,
) -> None:
    """List every run and its batches, newest first (one line per batch).

    Example:

        portfolio-batch jobs list
    """
    import portfolio_batch as pb
    from portfolio_batch.cli._render import jobs_table

    jobs = pb.jobs()
    if not len(jobs):
        err.print("No runs yet. Start one with `portfolio-batch analyze-risk PORTFOLIO`.")
        return
    if running:
        jobs = jobs[~jobs["status"].isin(TERMINAL)]
    # newest run first (as the registry lists them), each run's batches in shard order
    first = {run: i for i, run in enumerate(dict.fromkeys(jobs["run_id"]))}
    jobs = jobs.assign(_run=jobs["run_id"].map(first)).sort_values(["_run", "shard"], kind="stable")
    out.print(jobs_table(jobs, title=f"Jobs ({jobs['run_id'].nunique()} runs)"))


@app.command("show")
def show(ident: _Ident) -> None:
    """Show one run: its batches, statuses, counts, file ids and where its shards are.

    Example:

        portfolio-batch jobs show ab12cd
    """
    from portfolio_batch.cli._render import jobs_table, run_details
    from portfolio_batch.cli._runs import find_run, short_id

    jobs = find_run(ident)
    run_id = str(jobs["run_id"].iloc[0])
    out.print(jobs_table(jobs, title=f"Run {short_id(run_id)}", show_run=False))
    out.print(run_details(jobs))


@app.command("resume")
def resume(
    ident: _Ident,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the results [default: the run's own --out]."
        ),
    ] = None,
    engine: _Engine = None,
) -> None:
    """Carry a run to the end after an interruption: poll, aggregate, write the report.

    Never creates a second batch: it follows the run's existing batches from the registry.

    Example:

        portfolio-batch jobs resume run_2f1c0a --out demo-out/
    """
    import portfolio_batch as pb
    from portfolio_batch.cli._outputs import finish
    from portfolio_batch.cli._pipeline import aggregate_run, client_for_run, poll_run
    from portfolio_batch.cli._runs import check_shards, find_run

    found = find_run(ident)
    run_id = str(found["run_id"].iloc[0])
    # Before waiting on the batches: their results would be useless without the right shards.
    check_shards(found)
    client = client_for_run(found, engine.value if engine else None)
    jobs = pb.resume(run_id, client=client)
    target = _out_dir(jobs["path"].tolist(), out_dir)
    err.print(Text.assemble("Resuming run ", (run_id, "bold"), f": {len(jobs)} batch(es)."))
    jobs = poll_run(jobs, client=client, out_dir=target)
    results, requests, costs, info = aggregate_run(jobs, client=client)
    raise typer.Exit(
        finish(
            results,
            costs=costs,
            jobs=jobs,
            out_dir=target,
            key=requests.attrs.get("key"),
            run_id=run_id,
            requests=requests,
            info=info,
        )
    )


@app.command("results")
def results(
    ident: _Ident,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Where to write the results [default: the run's own --out]."
        ),
    ] = None,
    engine: _Engine = None,
) -> None:
    """Aggregate a finished run again and write results.csv, results.parquet and report.html.

    Example:

        portfolio-batch jobs results run_2f1c0a --out again/
    """
    import portfolio_batch as pb
    from portfolio_batch.cli._outputs import finish
    from portfolio_batch.cli._pipeline import aggregate_run, client_for_run, resume_command
    from portfolio_batch.cli._runs import find_run
    from portfolio_batch.errors import InputError

    found = find_run(ident)
    run_id = str(found["run_id"].iloc[0])
    client = client_for_run(found, engine.value if engine else None)
    jobs = pb.resume(run_id, client=client)
    running = jobs[~jobs["status"].isin(TERMINAL)]
    if len(running):
        raise InputError(
            f"run {run_id} is not finished ({len(running)} of {len(jobs)} batches still "
            f"{', '.join(sorted(set(running['status'].astype(str))))}); wait for it with "
            f"`{resume_command(run_id, out_dir)}`."
        )
    target = _out_dir(jobs["path"].tolist(), out_dir)
    results_frame, requests, costs, info = aggregate_run(jobs, client=client)
    raise typer.Exit(
        finish(
            results_frame,
            costs=costs,
            jobs=jobs,
            out_dir=target,
            key=requests.attrs.get("key"),
            run_id=run_id,
            requests=requests,
            info=info,
        )
    )


@app.command("cancel")
def cancel(ident: _Ident, engine: _Engine = None) -> None:
    """Cancel a run's batches that are still running; finished requests keep their results.

    Example:

        portfolio-batch jobs cancel run_2f1c0a
    """
    import portfolio_batch as pb
    from portfolio_batch.cli._pipeline import client_for_run
    from portfolio_batch.cli._render import jobs_table
    from portfolio_batch.cli._runs import find_run

    found = find_run(ident)
    run_id = str(found["run_id"].iloc[0])
    client = client_for_run(found, engine.value if engine else None)
    current = pb.resume(run_id, client=client)
    running = current[~current["status"].isin(TERMINAL)]
    if not len(running):
        out.print(jobs_table(current, title=f"Run {run_id}"))
        err.print(
            f"Nothing to cancel: every batch of run {run_id} has finished. Its results: "
            f"`portfolio-batch jobs results {run_id}`."
        )
        return
    jobs = pb.cancel(current, client=client)
    out.print(jobs_table(jobs, title=f"Run {run_id}"))
    err.print(
        f"Cancel requested for {len(running)} batch(es). Requests that finished keep their results: "
        f"collect them with `portfolio-batch jobs results {run_id}` once the batches are cancelled."
    )
