"""Options several commands share: the currency of the costs, the portfolio's name and as-of
date (shown in the report, and how its previous run is found)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "AsOf",
    "Currency",
    "FxDate",
    "FxRate",
    "Name",
    "Prices",
    "Provider",
    "ProviderOption",
    "money_options",
    "provider_for",
]


class Provider(StrEnum):
    openai = "openai"
    azure = "azure"
    anthropic = "anthropic"
    gemini = "gemini"
    groq = "groq"
    mistral = "mistral"
    together = "together"


ProviderOption = Annotated[
    Provider | None,
    typer.Option(
        "--provider",
        help="Where the model runs and whose batch prices apply [default: from the model name: "
        "claude-* anthropic, gemini-* gemini, else openai (azure when AZURE_OPENAI_* is set); groq "
        "(GROQ_API_KEY), mistral (MISTRAL_API_KEY) and together (TOGETHER_API_KEY) only when "
        "given].",
        show_default=False,
        case_sensitive=False,
    ),
]


def provider_for(flag: Provider | str | None, model: str) -> str:
    """``--provider`` as given, else the provider the model name belongs to.

    >>> provider_for(None, "claude-haiku-4-5"), provider_for("azure", "my-deployment")
    ('anthropic', 'azure')
    """
    if flag is not None:
        return Provider(flag).value
    from portfolio_batch._providers import provider_of

    return provider_of(model)


Prices = Annotated[
    Path | None,
    typer.Option(
        "--prices",
        help="A CSV of prices in USD per million tokens for models no price table has (Together's, "
        "an Azure deployment's): columns model,input,output, and batch_input,batch_output when "
        "the batch rates are not half of those.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
]


Currency = Annotated[
    str,
    typer.Option(
        "--currency",
        help="Show costs in this currency (e.g. EUR) at --fx-rate; prices are in USD.",
    ),
]
FxRate = Annotated[
    float | None,
    typer.Option(
        "--fx-rate",
        help="Units of --currency per USD (e.g. 0.92 for EUR); never fetched, printed with the "
        "costs.",
        min=0,
    ),
]
FxDate = Annotated[
    str | None,
    typer.Option(
        "--fx-date", help="The day of --fx-rate, YYYY-MM-DD [default: today].", show_default=False
    ),
]
Name = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="The portfolio's name in the report; runs of the same name are compared [default: "
        "the file name without its extension].",
        show_default=False,
    ),
]
AsOf = Annotated[
    str | None,
    typer.Option(
        "--as-of",
        help="The holdings date shown in the report, YYYY-MM-DD [default: the run's date].",
        show_default=False,
    ),
]


def money_options(currency: str, fx_rate: float | None, fx_date: str | None) -> dict[str, Any]:
    """The three options checked together (a currency without a rate is one clear error, exit
    2, before anything runs) and returned as ``estimate_cost``/``report`` keywords."""
    from portfolio_batch._currency import fx
    from portfolio_batch.errors import InputError

    code = (currency or "USD").strip().upper()
    if code != "USD" and fx_rate is None:
        raise InputError(
            f"--currency {code} needs --fx-rate: how many {code} one USD buys (e.g. --fx-rate "
            "0.92), and --fx-date the day of that rate; prices are in USD and no rate is fetched."
        )
    try:
        money = fx(currency, fx_rate=fx_rate, fx_date=fx_date)
    except InputError as exc:  # the same message in the command line's terms
        text = str(exc)
        for word, flag in (
            ("currency=", "--currency="),
            ("fx_rate=", "--fx-rate="),
            ("fx_date=", "--fx-date="),
        ):
            text = text.replace(word, flag)
        raise InputError(text) from None
    if not money.converted:
        return {}
    return {"currency": money.currency, "fx_rate": money.rate, "fx_date": money.date}
