"""``portfolio-batch analyze-risk``: estimate, confirm, submit, poll, aggregate, report."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from portfolio_batch.cli._console import confirm, err
from portfolio_batch.cli._options import (
    AsOf,
    Currency,
    FxDate,
    FxRate,
    Name,
    Prices,
    ProviderOption,
    provider_for,
)
from portfolio_batch.errors import BudgetExceededError, InputError, PricingError

__all__ = ["Engine", "analyze_risk", "engine_option"]


class Engine(StrEnum):
    rules = "rules"
    smollm2 = "smollm2"


def engine_option(value: str | None) -> str | None:
    """Check ``--engine``: ``rules``, ``smollm2`` or an import path ``package.module:factory``."""
    if value is None:
        return None
    from portfolio_batch.local.engines import check_engine_name

    try:
        return check_engine_name(value)
    except InputError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_budget(costs: Any, budget: float, *, mode: str) -> None:
    """``check_budget`` with a message in the CLI's terms (flags, not keyword arguments)."""
    import portfolio_batch as pb

    try:
        pb.check_budget(costs, budget_usd=budget)
    except BudgetExceededError as exc:
        raise BudgetExceededError(
            f"the estimated {mode} cost ${exc.estimate_usd:,.4f} is over --budget "
            f"${exc.budget_usd:,.4f}; nothing was sent. Raise --budget, lower --max-tokens, or pick "
            "a cheaper --model (`portfolio-batch estimate PORTFOLIO --model a,b` compares them).",
            estimate_usd=exc.estimate_usd,
            budget_usd=exc.budget_usd,
        ) from exc


def analyze_risk(
    portfolio: Annotated[
        Path,
        typer.Argument(
            metavar="PORTFOLIO",
            help="The portfolio: a CSV/TSV, Excel (.xlsx) or Parquet file with ticker and weight "
            "columns.",
        ),
    ],
    batch: Annotated[
        bool,
        typer.Option(
            "--batch/--sync",
            help="Batch API (half price, results within 24 h) or synchronous requests now.",
        ),
    ] = True,
    model: Annotated[str, typer.Option("--model", "-m", help="The model to ask.")] = "gpt-4o-mini",
    provider: ProviderOption = None,
    prices: Prices = None,
    budget: Annotated[
        float | None,
        typer.Option(
            "--budget", help="Refuse the run if its estimated cost in USD is over this.", min=0
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask for confirmation (needed without a terminal)."
        ),
    ] = False,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Directory for results.csv/.parquet and report.html; each run's request shards "
            "go to requests/RUN_ID/ in it.",
        ),
    ] = Path("portfolio-batch-out"),
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine",
            help="Engine of the embedded local server, used when no API key is set; ignored with a key: "
            "rules, smollm2, or your engine's import path package.module:factory (run in a child "
            "process). [default: $PORTFOLIO_BATCH_ENGINE or rules]",
            show_default=False,
            callback=engine_option,
        ),
    ] = None,
    max_requests: Annotated[
        int,
        typer.Option("--max-requests", help="Most requests per shard (batch).", min=1, max=50_000),
    ] = 50_000,
    max_tokens: Annotated[
        int,
        typer.Option(
            "--max-tokens", help="Most output tokens per answer (longer answers are cut).", min=1
        ),
    ] = 400,
    name: Name = None,
    as_of: AsOf = None,
    currency: Currency = "USD",
    fx_rate: FxRate = None,
    fx_date: FxDate = None,
) -> None:
    """Review the risk of every position of PORTFOLIO with an LLM and write a report.

    Prints the cost estimate, asks for confirmation, submits the batches, shows their progress,
    then prints the summary, the headline, the changes since the portfolio's previous run, the
    positions sorted by risk and the errors. Exit codes: 0 all
    succeeded, 3 partial results (still written), 2 usage or input error, 1 unexpected error,
    130 interrupted (the batches keep running; the resume command is printed).

    Example:

        portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --out demo-out/
        portfolio-batch analyze-risk testdata/portfolio.csv --model claude-haiku-4-5 --yes
    """
    import portfolio_batch as pb
    from portfolio_batch._history import file_sha256
    from portfolio_batch._home import writable_dir
    from portfolio_batch._report import _as_of
    from portfolio_batch._submit import new_run_id
    from portfolio_batch.cli._options import money_options
    from portfolio_batch.cli._outputs import finish
    from portfolio_batch.cli._pipeline import make_client, poll_run
    from portfolio_batch.cli._render import estimate_table
    from portfolio_batch.cli._runs import load_portfolio_file, shard_dir, write_run_info

    engine_name = engine
    provider_name = provider_for(provider, model)
    if not batch and provider_name in ("anthropic", "gemini", "mistral", "together"):
        raise InputError(
            f"--sync sends OpenAI chat completions; --model {model} runs on {provider_name}, "
            "whose requests this tool sends as batches only: use --batch (half price)"
        )
    money = money_options(currency, fx_rate, fx_date)  # a bad rate is exit 2 before any work
    if as_of is not None:
        _as_of(as_of, 0.0)  # checked now, not after the run
    frame = load_portfolio_file(portfolio)
    # what the report needs later, the file's hash as it is now (it may be edited before then)
    review = {
        "name": name or portfolio.stem,
        "as_of": as_of,
        "portfolio_sha256": file_sha256(portfolio),
        **money,
        # what the costs are priced at later (report, resume): the file, read again then
        **({"prices": str(prices.resolve())} if prices is not None else {}),
    }
    priced = str(prices) if prices is not None else None
    # Before the work and the money: a --out that is a file or read-only is one line, exit 2.
    out_dir = writable_dir(out_dir, what="--out").resolve()
    requests = pb.build_requests(frame, model=model, max_tokens=max_tokens)
    try:
        costs = pb.estimate_cost(requests, provider=provider_name, prices=priced, **money)
    except PricingError as exc:  # the Python advice (prices=...) in the CLI's terms
        raise PricingError(
            f"{str(exc).split(' Pass ')[0]} Give the prices in USD per million tokens with "
            f"--prices prices.csv (columns model,input,output,batch_input,batch_output; a row "
            f"for {model}); nothing was sent."
        ) from None
    # The run id is chosen here so the shards go to their own directory: a later run into the
    # same --out must not rewrite the files this run's results are matched against.
    run_id = new_run_id() if batch else "sync-" + new_run_id().removeprefix("run-")
    shards = shard_dir(out_dir, run_id)
    manifest = pb.to_jsonl(requests, shards, max_requests=max_requests, costs=costs)
    err.print(estimate_table(costs, manifest))

    cost_column = "batch_cost_usd" if batch else "sync_cost_usd"
    if budget is not None:
        _check_budget(costs[cost_column], budget, mode="batch" if batch else "sync")
    mode = "batch" if batch else "sync"
    confirm(
        f"Send {len(requests)} requests ({mode}, estimated {float(costs[cost_column].sum()):.4f} USD)?",
        yes=yes,
    )

    client = make_client(engine_name, provider=provider_name)
    key = requests.attrs.get("key")
    info = {"portfolio": str(portfolio), **review}
    if not batch:
        write_run_info(
            shards,
            run_id=None,
            requests=requests,
            mode=mode,
            portfolio=portfolio,
            out_dir=out_dir,
            review=review,
        )
        err.print(f"Sending {len(requests)} requests synchronously...")
        results = pb.run_sync(requests, client=client, progress=err.is_terminal, prices=priced)
        raise typer.Exit(
            finish(
                results,
                costs=costs,
                jobs=None,
                out_dir=out_dir,
                key=key,
                run_id=run_id,
                requests=requests,
                info=info,
            )
        )

    # Written before submitting, so a run killed while polling can still be resumed into --out.
    write_run_info(
        shards,
        run_id=run_id,
        requests=requests,
        mode=mode,
        portfolio=portfolio,
        out_dir=out_dir,
        review=review,
    )
    jobs = pb.submit(manifest, client=client, budget_usd=budget, run_id=run_id, prices=priced)
    if str(jobs["run_id"].iloc[0]) != run_id:
        # Shards submitted before come back as that earlier run's batches.
        run_id = str(jobs["run_id"].iloc[0])
        write_run_info(
            shards,
            run_id=run_id,
            requests=requests,
            mode=mode,
            portfolio=portfolio,
            out_dir=out_dir,
            review=review,
        )
    err.print(Text.assemble("Run ", (run_id, "bold"), f": {len(jobs)} batch(es) submitted."))
    jobs = poll_run(jobs, client=client, out_dir=out_dir)
    results = pb.aggregate_df(jobs, requests, client=client, prices=priced)
    raise typer.Exit(
        finish(
            results,
            costs=costs,
            jobs=jobs,
            out_dir=out_dir,
            key=key,
            run_id=run_id,
            requests=requests,
            info=info,
        )
    )
