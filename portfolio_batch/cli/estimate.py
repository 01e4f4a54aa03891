"""``portfolio-batch estimate``: what a run would cost on each model, batch vs sync."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from portfolio_batch.cli._console import out
from portfolio_batch.cli._options import Currency, FxDate, FxRate, Provider, ProviderOption
from portfolio_batch.errors import InputError

__all__ = ["estimate"]


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def estimate(
    portfolio: Annotated[
        Path,
        typer.Argument(
            metavar="PORTFOLIO",
            help="The portfolio: a CSV/TSV, Excel (.xlsx) or Parquet file with ticker and weight "
            "columns.",
        ),
    ],
    models: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Comma-separated models to compare, e.g. gpt-4o-mini,gpt-4.1-mini.",
        ),
    ] = "gpt-4o-mini",
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens", help="Most output tokens per answer, as in analyze-risk.", min=1
        ),
    ] = 400,
    provider: ProviderOption = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="table (for people), csv or json (for pipes).")
    ] = Format.table,
    currency: Currency = "USD",
    fx_rate: FxRate = None,
    fx_date: FxDate = None,
) -> None:
    """Compare what reviewing PORTFOLIO would cost on each model, batch vs sync; nothing is sent.

    Example:

        portfolio-batch estimate testdata/portfolio.csv --model gpt-4o-mini,gpt-4.1-mini,gpt-4.1
        portfolio-batch estimate testdata/portfolio.csv --model claude-haiku-4-5,gemini-2.5-flash
    """
    import portfolio_batch as pb
    from portfolio_batch._currency import fx
    from portfolio_batch.cli._options import money_options
    from portfolio_batch.cli._render import compare_table
    from portfolio_batch.cli._runs import load_portfolio_file

    money = fx(**{"currency": currency, **money_options(currency, fx_rate, fx_date)})
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise InputError(
            "--model is empty: give one or more models, e.g. --model gpt-4o-mini,gpt-4.1"
        )
    frame = load_portfolio_file(portfolio)
    requests = pb.build_requests(frame, model=names[0], max_tokens=max_tokens)
    comparison = pb.compare_models(
        requests, models=names, provider=None if provider is None else Provider(provider).value
    )
    if money.converted:  # beside the USD columns, with the rate and its date
        for col in ("batch_cost_usd", "sync_cost_usd", "savings_usd"):
            if col in comparison.columns:
                comparison[col.replace("_usd", f"_{money.suffix}")] = comparison[col] * money.rate
        comparison["fx_rate"] = money.rate
        comparison["fx_date"] = money.date
        comparison.attrs.update(money.attrs())
    if fmt is Format.csv:
        out.file.write(comparison.to_csv(index=False))
    elif fmt is Format.json:
        out.file.write(comparison.to_json(orient="records", indent=2) + "\n")
    else:
        out.print(compare_table(comparison))
