"""What a requests frame will cost, before anything is sent; and the price of actual usage.

    >>> costs = estimate_cost(build_requests(portfolio))          # doctest: +SKIP
    >>> costs.batch_cost_usd.sum()                                # doctest: +SKIP

Prices are USD per million tokens, from ``genai-prices`` (offline, batch rates included) unless
you pass your own with ``prices=``: a dict ``{"model": {"input": 0.15, "output": 0.60}}`` or the
path of a CSV with a ``model`` column and the same price columns. Optional price fields:
``cached_input`` (default: ``input``), ``cache_write_input`` (prompt tokens written to the cache,
billed from GPT-5.6 on at 1.25x input; default: ``input``, no extra fee), ``batch_input`` /
``batch_output`` (default: half the standard price, the Batch API's discount),
``batch_cached_input`` and ``batch_cache_write_input`` (default: half their standard price). A
model not in your prices is looked up in genai-prices.

Usage follows OpenAI's: cached and cache-written tokens are parts of the prompt tokens, each
billed at its own rate instead of the input rate; reasoning tokens are part of the completion
tokens and billed as output, never on top of them.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd

from portfolio_batch.errors import BudgetExceededError, InputError, PricingError

__all__ = [
    "Price",
    "check_budget",
    "compare_models",
    "cost_usd",
    "estimate_cost",
    "price_for",
]

PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write_input",
    "batch_input",
    "batch_output",
    "batch_cached_input",
    "batch_cache_write_input",
)
_PER = 1_000_000
PricesArg = Mapping[str, Mapping[str, Any]] | str | os.PathLike[str] | None
# 'max' (each request's max_tokens), tokens per answer, or a ratio of max_tokens
OutputTokens = Literal["max"] | int | float


@dataclass(frozen=True)
class Price:
    """One model's prices in USD per million tokens, and where they came from."""

    model: str
    input: float
    output: float
    cached_input: float
    batch_input: float
    batch_output: float
    batch_cached_input: float
    cache_write_input: float
    batch_cache_write_input: float
    source: str  # "genai-prices" or "override"
    version: str  # e.g. "genai-prices 0.2.3", "dict", "prices.csv sha256:ab12…"


def _strip(model: str) -> str:
    return model.split("/", 1)[1] if model.startswith(("openai/", "models/")) else model


# genai-prices' provider id for each of our providers (``_providers.provider_of``): a claude
# model is priced at Anthropic's rates, a gemini model at Google's, anything else at OpenAI's
# (an Azure deployment name included, which you price with prices=).
_PRICE_PROVIDERS = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    "mistral": "mistral",  # genai-prices has Mistral's batch rates (half the sync ones)
    "groq": "groq",  # some batch rates (openai/gpt-oss-*); the others are halved (_genai_price)
}
# Providers whose batch rates no maintained table has (genai-prices 0.2 gives Together's sync
# rates only, the same with processing="batch"): their price is unknown unless prices= gives it.
_NO_BATCH_PRICES = {"together": "Together AI"}
# Rates are read off 1,000 tokens, not a million: a million prompt tokens would land in the
# long-context tier of claude-sonnet-4-5 or gemini-2.5-pro (prompts over 200k tokens cost 2x).
_RATE_TOKENS = 1_000

# Only OpenAI's tokenizers ship offline (bpe-openai); other providers' prompts are counted with
# o200k_base, an approximation whose error against their own tokenizers we have not measured
# (it needs their token-counting APIs or tokenizer downloads): aggregate_df's cost_usd uses the
# usage each provider returns, so actual costs are exact.
APPROX_TOKENS_NOTE = (
    "input tokens of {models} are approximate: counted with OpenAI's o200k_base tokenizer "
    "(no offline tokenizer exists for them); the error against the provider's own count is "
    "unmeasured, so leave a margin; results' cost_usd uses the usage the provider returns"
)


def _provider(model: str) -> str:
    from portfolio_batch._providers import provider_of

    return provider_of(model)


def _price_from_fields(model: str, fields: Mapping[str, Any], version: str, where: str) -> Price:
    values: dict[str, float] = {}
    unknown = sorted(set(fields) - set(PRICE_FIELDS) - {"model"})
    if unknown:
        raise PricingError(
            f"{where}: unknown price field(s) {unknown} for model {model!r}; use {list(PRICE_FIELDS)} "
            "(USD per million tokens)"
        )
    for name in PRICE_FIELDS:
        raw = fields.get(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise PricingError(
                f"{where}: price {name}={raw!r} for model {model!r} is not a number; give USD per million tokens, e.g. 0.15"
            ) from None
        if not np.isfinite(value) or value < 0:
            raise PricingError(
                f"{where}: price {name}={raw!r} for model {model!r} must be a finite number >= 0"
            )
        values[name] = value
    for name in ("input", "output"):
        if name not in values:
            raise PricingError(
                f"{where}: model {model!r} has no {name!r} price; give at least input and output, "
                f'e.g. prices={{"{model}": {{"input": 0.15, "output": 0.60}}}} (USD per million tokens)'
            )
    values.setdefault("cached_input", values["input"])
    values.setdefault("cache_write_input", values["input"])
    values.setdefault("batch_input", values["input"] / 2)
    values.setdefault("batch_output", values["output"] / 2)
    values.setdefault("batch_cached_input", values["cached_input"] / 2)
    values.setdefault("batch_cache_write_input", values["cache_write_input"] / 2)
    return Price(model=model, source="override", version=version, **values)


@cache
def _csv_prices(path: str, mtime_ns: int) -> tuple[dict[str, Price], str]:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    version = f"{Path(path).name} sha256:{digest}"
    out: dict[str, Price] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "model" not in reader.fieldnames:
            raise PricingError(
                f"{path}: a prices CSV needs a header with 'model', 'input' and 'output' columns "
                f"(USD per million tokens); optional: {', '.join(PRICE_FIELDS[2:])}"
            )
        for line, row in enumerate(reader, start=2):
            model = (row.get("model") or "").strip()
            if not model:
                raise PricingError(
                    f"{path}, line {line}: the 'model' column is empty; fill it in or delete the line"
                )
            out[model] = _price_from_fields(model, row, version, f"{path}, line {line}")
    return out, version


def _overrides(prices: PricesArg) -> dict[str, Price]:
    if prices is None:
        return {}
    if isinstance(prices, (str, os.PathLike)):
        path = Path(prices)
        if not path.is_file():
            raise PricingError(
                f"prices={os.fspath(prices)!r}: no such CSV file; pass a dict or the path of a prices CSV"
            )
        return _csv_prices(str(path.resolve()), path.stat().st_mtime_ns)[0]
    if not isinstance(prices, Mapping):
        raise PricingError(
            f"prices= must be a dict {{model: {{'input': ..., 'output': ...}}}} or a CSV path, got {type(prices).__name__}"
        )
    out: dict[str, Price] = {}
    for model, fields in prices.items():
        if not isinstance(fields, Mapping):
            raise PricingError(
                f"prices[{model!r}] must be a dict like {{'input': 0.15, 'output': 0.60}} (USD per million tokens)"
            )
        out[str(model)] = _price_from_fields(str(model), fields, "dict", "prices=")
    return out


@cache
def _genai_price(model: str, provider: str) -> Price:
    """``model``'s rates at genai-prices' ``provider`` (``openai``, ``anthropic``, ``google``)."""
    import genai_prices
    from genai_prices import Usage, calc_price

    n = _RATE_TOKENS

    def rate(usage: Usage, batch: bool) -> float:
        context: Any = {"processing": "batch"} if batch else None
        # No request timestamp: an old one silently drops the batch rates (shared/choices.md).
        # Groq's model ids keep their "openai/" (openai/gpt-oss-120b is Groq's name for it)
        ref = model if provider == "groq" else _strip(model)
        result = calc_price(usage, ref, provider_id=provider, price_context=context)
        return float(result.total_price * (_PER // n))  # Decimal: exact per-million rates

    try:
        fields = {
            "input": rate(Usage(input_tokens=n), False),
            "output": rate(Usage(output_tokens=n), False),
            "cached_input": rate(Usage(input_tokens=n, cache_read_tokens=n), False),
            "batch_input": rate(Usage(input_tokens=n), True),
            "batch_output": rate(Usage(output_tokens=n), True),
            "batch_cached_input": rate(Usage(input_tokens=n, cache_read_tokens=n), True),
            # the input rate where the table has no cache-write price (no extra fee)
            "cache_write_input": rate(Usage(input_tokens=n, cache_write_tokens=n), False),
            "batch_cache_write_input": rate(Usage(input_tokens=n, cache_write_tokens=n), True),
        }
    except LookupError:
        raise PricingError(
            f"No price is known for model {model!r} at {provider} (genai-prices "
            f"{genai_prices.__version__} has none). "
            f'Pass one, in USD per million tokens: prices={{"{model}": {{"input": 0.15, "output": 0.60}}}} '
            "or prices='prices.csv' (columns model,input,output); for Azure, price your deployment "
            "name like this"
        ) from None
    source = "genai-prices"
    if fields["batch_input"] == fields["input"] and fields["batch_output"] == fields["output"]:
        # The table has this model's standard rates but not its batch ones (claude-opus-4-1,
        # gemini-2.0-flash, ...): it answers the standard rates for processing="batch". Every
        # provider we send to bills batches at half its standard rates (shared/providers.md),
        # so halve them rather than estimate a batch at twice its price.
        for name in ("input", "output", "cached_input", "cache_write_input"):
            fields[f"batch_{name}"] = fields[name] / 2
        source = "genai-prices (batch rates: half its standard ones)"
    return Price(
        model=model,
        source=source,
        version=f"genai-prices {genai_prices.__version__}",
        **fields,
    )


def price_for(model: str, *, prices: PricesArg = None, provider: str | None = None) -> Price:
    """The :class:`Price` of ``model``: your ``prices`` first, then genai-prices at
    ``provider``'s rates (``openai``, ``azure``, ``anthropic``, ``gemini``; default: from the
    model name, ``claude-*`` Anthropic, ``gemini-*`` Google, else OpenAI).

    >>> price_for("gpt-4o-mini").batch_input
    0.075
    >>> price_for("claude-haiku-4-5").batch_output
    2.5
    >>> price_for("my-deployment", prices={"my-deployment": {"input": 1, "output": 4}}).batch_output
    2.0
    """
    overrides = _overrides(prices)
    found = overrides.get(model) or overrides.get(_strip(model))
    if found is not None:
        return found
    return _genai_price(model, _price_provider(model, provider))


def _exact_tokens(model: str, provider: str | None) -> bool:
    """Whether ``model``'s prompt tokens are counted exactly: only OpenAI's (and Azure's)
    tokenizers ship offline; Claude, Gemini and the open models of Groq, Mistral and Together
    are counted with o200k_base, approximately."""
    return (provider or _provider(model)) in ("openai", "azure")


def pricing_provider(provider: str | None) -> str | None:
    """The ``provider=`` to price answers with, from the provider they ran at
    (``_backend.provider_of_backend``): its own rates where a price table has the provider
    (a Mistral model is not priced as an OpenAI one, nor Groq's llama), else None, the model name
    deciding (OpenAI, Azure, the OpenAI-compatible local server; Fireworks, which no table has).

    >>> pricing_provider("mistral"), pricing_provider("groq"), pricing_provider(None)
    ('mistral', 'groq', None)
    """
    known = provider in _PRICE_PROVIDERS or provider in _NO_BATCH_PRICES
    return provider if known and provider != "openai" else None


def _price_provider(model: str, provider: str | None) -> str:
    """genai-prices' provider id for ``model`` on ``provider`` (None: from the model name)."""
    name = provider or _provider(model)
    if name == "azure":
        return "openai"  # Azure's batch prices are OpenAI's (price a deployment with prices=)
    if name in _NO_BATCH_PRICES:
        raise PricingError(
            f"No batch price is known for model {model!r} at {_NO_BATCH_PRICES[name]}: no "
            "maintained price table (genai-prices) has its batch rates, and none is guessed. "
            f'Pass them, in USD per million tokens: prices={{"{model}": {{"batch_input": ..., '
            '"batch_output": ..., "input": ..., "output": ...}} or prices=\'prices.csv\''
        )
    if name not in _PRICE_PROVIDERS:
        raise InputError(
            f"provider={name!r} is not known; use openai, azure, anthropic, gemini, mistral, "
            "groq or together (or leave it out: the model name decides)"
        )
    return _PRICE_PROVIDERS[name]


@overload
def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    *,
    cache_write_tokens: int = 0,
    batch: bool = True,
    prices: PricesArg = None,
    provider: str | None = None,
) -> float: ...


@overload
def cost_usd(
    model: str,
    input_tokens: Any,
    output_tokens: Any,
    cached_tokens: Any = 0,
    *,
    cache_write_tokens: Any = 0,
    batch: bool = True,
    prices: PricesArg = None,
    provider: str | None = None,
) -> Any: ...


def cost_usd(
    model: str,
    input_tokens: Any,
    output_tokens: Any,
    cached_tokens: Any = 0,
    *,
    cache_write_tokens: Any = 0,
    batch: bool = True,
    prices: PricesArg = None,
    provider: str | None = None,
) -> Any:
    """USD for actual usage: ``input_tokens`` (the API's prompt_tokens, cached and cache-written
    ones included), ``output_tokens`` (completion_tokens, reasoning included), ``cached_tokens``
    and ``cache_write_tokens``, at ``provider``'s rates (default: from the model name, see
    :func:`price_for`). Scalars give a float; arrays/Series give an array.

        >>> round(cost_usd("gpt-4o-mini", 1_000_000, 1_000_000), 6)
        0.375
    """
    return _cost(
        price_for(model, prices=prices, provider=provider),
        input_tokens,
        output_tokens,
        cached_tokens,
        cache_write_tokens,
        batch=batch,
    )


def _cost(
    price: Price,
    input_tokens: Any,
    output_tokens: Any,
    cached_tokens: Any = 0,
    cache_write_tokens: Any = 0,
    *,
    batch: bool,
) -> Any:
    if batch:
        rates = (
            price.batch_input,
            price.batch_cached_input,
            price.batch_cache_write_input,
            price.batch_output,
        )
    else:
        rates = (price.input, price.cached_input, price.cache_write_input, price.output)
    inp = np.asarray(input_tokens, dtype=np.float64)
    cached = np.asarray(cached_tokens, dtype=np.float64)
    written = np.asarray(cache_write_tokens, dtype=np.float64)
    out = np.asarray(output_tokens, dtype=np.float64)
    total = (
        (inp - cached - written) * rates[0]
        + cached * rates[1]
        + written * rates[2]
        + out * rates[3]
    ) / _PER
    return float(total) if np.ndim(total) == 0 else total


def _max_tokens(body: Any) -> Any:
    if not isinstance(body, Mapping):
        return None
    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        if body.get(name) is not None:
            return body[name]
    return None


def _output_estimate(bodies: list[Any], ids: list[str], output_tokens: OutputTokens) -> np.ndarray:
    if isinstance(output_tokens, bool) or not (
        output_tokens == "max" or isinstance(output_tokens, (int, float, np.integer, np.floating))
    ):
        raise InputError(
            f"output_tokens={output_tokens!r} must be 'max' (each request's max_tokens), an int "
            "(tokens per answer) or a float ratio in (0, 1] of max_tokens"
        )
    if isinstance(output_tokens, (int, np.integer)):
        if output_tokens < 0:
            raise InputError(f"output_tokens={output_tokens} must be >= 0")
        return np.full(len(bodies), int(output_tokens), dtype=np.int64)
    if isinstance(output_tokens, (float, np.floating)) and not 0 < output_tokens <= 1:
        raise InputError(
            f"output_tokens={output_tokens} as a ratio must be in (0, 1] (a fraction of max_tokens); "
            "pass an int for a token count"
        )
    limits = [_max_tokens(b) for b in bodies]
    for cid, limit in zip(ids, limits, strict=True):
        if limit is None:
            raise InputError(
                f"custom_id {cid!r}: its body has no max_tokens, so output_tokens='max' cannot be "
                "priced; pass output_tokens=<tokens per answer> or set max_tokens in build_requests"
            )
    arr = np.asarray(limits, dtype=np.int64)
    if output_tokens == "max":
        return arr
    rounded: np.ndarray = np.ceil(arr * float(output_tokens)).astype(np.int64)
    return rounded


def _models(bodies: list[Any], ids: list[str]) -> list[str]:
    models = []
    for cid, body in zip(ids, bodies, strict=True):
        model = body.get("model") if isinstance(body, Mapping) else None
        if not isinstance(model, str) or not model:
            raise InputError(
                f"custom_id {cid!r}: body has no 'model'; make the frame with build_requests(df, model=...)"
            )
        models.append(model)
    return models


def _requests_parts(requests: pd.DataFrame) -> tuple[list[str], list[Any]]:
    if not isinstance(requests, pd.DataFrame) or "body" not in requests.columns:
        raise InputError(
            "estimate_cost() takes the requests frame from build_requests() (it needs a 'body' column)"
        )
    ids = (
        requests["custom_id"].tolist()
        if "custom_id" in requests.columns
        else list(map(str, requests.index))
    )
    return ids, requests["body"].tolist()


def estimate_cost(
    requests: pd.DataFrame,
    *,
    prices: PricesArg = None,
    output_tokens: OutputTokens = "max",
    currency: str = "USD",
    fx_rate: float | None = None,
    fx_date: str | dt.date | None = None,
    provider: str | None = None,
) -> pd.DataFrame:
    """Per-request token counts and cost, batch and synchronous, indexed by ``custom_id``.

    ``input_tokens``: exact tiktoken counts of the messages with the chat-format overhead, plus an
    estimate for the ``response_format`` schema (see :func:`portfolio_batch._tokens.response_format_tokens`).
    Claude and Gemini models are priced at Anthropic's and Google's batch rates, but no offline
    tokenizer exists for them: their prompts are counted with o200k_base, ``attrs["token_count"]``
    is ``"approx"`` and ``attrs["token_count_error"]`` ``"unmeasured"`` (``attrs["notes"]`` says
    so); the results' ``cost_usd`` is exact, from the usage the provider returns.
    ``output_tokens``: ``"max"`` (each request's ``max_tokens``: an upper bound), an int (tokens
    per answer) or a float ratio of ``max_tokens`` (0.5 = half). For reasoning models (o-series,
    gpt-5) output includes the reasoning tokens, billed as output: ``max_completion_tokens``
    bounds both, and ``attrs["output_includes_reasoning"]`` is True (``attrs["notes"]`` says so).

    ``provider=`` prices every model at that provider's rates (default: from each model's name).

    ``currency="EUR", fx_rate=0.92, fx_date="2026-11-13"`` (1 USD = 0.92 EUR; the rate is
    never fetched) adds ``batch_cost_eur``/``sync_cost_eur`` beside the USD columns and records
    ``attrs`` ``currency``/``fx_rate``/``fx_date``, which the report and the CLI print.

        >>> costs = estimate_cost(requests, output_tokens=0.5)        # doctest: +SKIP
        >>> costs.attrs["price_source"]                               # doctest: +SKIP
        'genai-prices'
    """
    from portfolio_batch._currency import fx
    from portfolio_batch._tokens import count_body_tokens

    money = fx(currency, fx_rate=fx_rate, fx_date=fx_date)  # a bad rate fails before counting

    ids, bodies = _requests_parts(requests)
    models = _models(bodies, ids)
    out_est = _output_estimate(bodies, ids, output_tokens)
    model_arr = np.asarray(models, dtype=object)
    in_tokens = np.zeros(len(bodies), dtype=np.int64)
    batch = np.zeros(len(bodies), dtype=np.float64)
    sync = np.zeros(len(bodies), dtype=np.float64)
    used: list[Price] = []
    thinks = False
    unique = list(dict.fromkeys(models))
    for model in unique:
        sel: Any = slice(None) if len(unique) == 1 else np.flatnonzero(model_arr == model)
        part = bodies if len(unique) == 1 else [bodies[i] for i in sel]
        thinks = thinks or _reasoning(model, part[0])  # build_requests writes bodies alike
        in_tokens[sel] = count_body_tokens(part, model=model)
        price = price_for(model, prices=prices, provider=provider)
        used.append(price)
        batch[sel] = _cost(price, in_tokens[sel], out_est[sel], batch=True)
        sync[sel] = _cost(price, in_tokens[sel], out_est[sel], batch=False)
    # no offline tokenizer for these
    approx = [m for m in unique if not _exact_tokens(m, provider)]
    index = pd.Index(ids, name="custom_id", dtype=object)
    costs = pd.DataFrame(
        {
            "custom_id": pd.Series(ids, index=index, dtype=object),
            "model": pd.Series(models, index=index, dtype=object),
            "input_tokens": pd.Series(in_tokens, index=index),
            "output_tokens_est": pd.Series(out_est, index=index),
            "batch_cost_usd": pd.Series(batch, index=index),
            "sync_cost_usd": pd.Series(sync, index=index),
        },
        index=index,
    )
    costs.attrs = {
        "price_source": "+".join(dict.fromkeys(p.source for p in used)),
        "price_version": "; ".join(dict.fromkeys(p.version for p in used)),
        "output_tokens": output_tokens
        if isinstance(output_tokens, str)
        else float(output_tokens)
        if isinstance(output_tokens, (float, np.floating))
        else int(output_tokens),
        "token_count": "approx" if approx else "exact",
        "output_includes_reasoning": thinks,
        "notes": ([REASONING_NOTE] if thinks else [])
        + ([APPROX_TOKENS_NOTE.format(models=", ".join(approx))] if approx else []),
    }
    if approx:
        costs.attrs["token_count_error"] = "unmeasured"
        costs.attrs["token_count_method"] = "o200k_base"
    if money.converted:
        for col in ("batch_cost_usd", "sync_cost_usd"):
            costs[col.replace("_usd", f"_{money.suffix}")] = costs[col] * money.rate
        costs.attrs.update(money.attrs())
    return costs


REASONING_NOTE = (
    "output tokens include the reasoning tokens of reasoning models, billed as output: "
    "max_completion_tokens bounds reasoning and answer together"
)


def _reasoning(model: str, body: Any) -> bool:
    """Whether requests to ``model`` like ``body`` reason: the model's family says so, or the
    body was written for a reasoning model (``build_requests(..., reasoning=True)``)."""
    from portfolio_batch._requests import is_reasoning_model

    return is_reasoning_model(model) or (
        isinstance(body, Mapping)
        and ("max_completion_tokens" in body or "reasoning_effort" in body)
    )


def compare_models(
    requests: pd.DataFrame,
    *,
    models: list[str],
    prices: PricesArg = None,
    output_tokens: OutputTokens = "max",
    provider: str | None = None,
) -> pd.DataFrame:
    """The same requests priced on each of ``models``: one row per model, batch vs sync totals.
    ``provider=``: as in :func:`estimate_cost`; ``token_count`` is ``"approx"`` for models with
    no offline tokenizer (Claude, Gemini: counted with o200k_base, error unmeasured).

    Tokens are recounted with each model's own encoding (gpt-4 and gpt-3.5 use cl100k_base).

        >>> compare_models(requests, models=["gpt-4o-mini", "gpt-4.1-mini"])  # doctest: +SKIP
    """
    from portfolio_batch._tokens import count_body_tokens, encoding_name_for_model

    if isinstance(models, str) or not models:
        raise InputError(
            "models= must be a non-empty list of model names, e.g. models=['gpt-4o-mini', 'gpt-4.1-mini']"
        )
    ids, bodies = _requests_parts(requests)
    out_est = _output_estimate(bodies, ids, output_tokens)
    counted: dict[str, np.ndarray] = {}
    rows = []
    for model in models:
        price = price_for(model, prices=prices, provider=provider)
        encoding = encoding_name_for_model(model)
        if encoding not in counted:
            counted[encoding] = count_body_tokens(bodies, model=model)
        tokens = counted[encoding]
        batch = float(np.sum(_cost(price, tokens, out_est, batch=True)))
        sync = float(np.sum(_cost(price, tokens, out_est, batch=False)))
        rows.append(
            {
                "model": model,
                "n_requests": len(bodies),
                "input_tokens": int(tokens.sum()),
                "output_tokens_est": int(out_est.sum()),
                "batch_cost_usd": batch,
                "sync_cost_usd": sync,
                "savings_usd": sync - batch,
                "price_source": price.version,
                "token_count": "exact" if _exact_tokens(model, provider) else "approx",
                # the bodies say so only for the model they were written for
                "output_includes_reasoning": _reasoning(
                    model, bodies[0] if bodies and bodies[0].get("model") == model else None
                ),
            }
        )
    return pd.DataFrame(rows).set_index("model", drop=False).rename_axis(None)


def check_budget(
    estimate_usd_or_costs: pd.DataFrame | pd.Series | float, *, budget_usd: float | None
) -> float:
    """The estimated batch cost in USD; raises :class:`BudgetExceededError` when over ``budget_usd``.

    Takes a number, or an :func:`estimate_cost` frame (its ``batch_cost_usd`` is summed).

        >>> check_budget(0.42, budget_usd=1.0)
        0.42
    """
    value = estimate_usd_or_costs
    if isinstance(value, pd.DataFrame):
        if "batch_cost_usd" not in value.columns:
            raise InputError("check_budget() takes a number or the frame estimate_cost() returned")
        total = float(value["batch_cost_usd"].sum())
    elif isinstance(value, pd.Series):
        total = float(value.sum())
    else:
        try:
            total = float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"check_budget() takes a USD number or an estimate_cost() frame, got {type(value).__name__}"
            ) from None
    if budget_usd is None:
        return total
    if isinstance(budget_usd, bool) or not isinstance(budget_usd, (int, float)) or budget_usd < 0:
        raise InputError(f"budget_usd={budget_usd!r} must be a number of US dollars >= 0")
    if total > budget_usd:
        raise BudgetExceededError(
            f"The estimated batch cost ${total:,.4f} is over budget_usd=${budget_usd:,.4f}; nothing was sent. "
            "Raise budget_usd, lower max_tokens, send fewer rows, or pick a cheaper model "
            "(compare_models(requests, models=[...]) shows the options)",
            estimate_usd=total,
            budget_usd=float(budget_usd),
        )
    return total
