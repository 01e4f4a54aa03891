"""The Typer app behind ``portfolio-batch``. ``portfolio_batch.cli`` imports neither it nor typer
and rich (the ``cli`` extra): its ``main`` imports this module and turns a missing extra into one
line naming it, not a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from portfolio_batch._version import __version__
from portfolio_batch.cli import analyze, estimate, jobs, report, serve
from portfolio_batch.cli._console import run_app, setup_logging

__all__ = ["app", "run"]

app = typer.Typer(
    name="portfolio-batch",
    help="LLM risk review of every position of a portfolio through the OpenAI Batch API.\n\n"
    "With no API key it runs offline on an embedded OpenAI-compatible server.\n\n"
    "Example:\n\n    portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --out demo-out/",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"portfolio-batch {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what the library does (stderr).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Errors are one line; set PORTFOLIO_BATCH_DEBUG=1 for full tracebacks."""
    setup_logging(verbose=verbose)


app.command("analyze-risk")(analyze.analyze_risk)
app.command("estimate")(estimate.estimate)
app.command("report")(report.report)
app.add_typer(jobs.app, name="jobs")
app.command("serve")(serve.serve)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 3 partial, 2 usage/input, 1 unexpected)."""
    return run_app(typer.main.get_command(app), argv)
