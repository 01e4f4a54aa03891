"""The same requests through the synchronous endpoint, concurrently: for small runs and prompt
iteration, when waiting for a batch is not worth the 50 % discount.

    >>> results = run_sync(requests.head(5), concurrency=4)  # doctest: +SKIP
    >>> results[["ticker", "status", "risk_score", "cost_usd"]]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import msgspec
import openai
import pandas as pd

from portfolio_batch._aggregate import Collector
from portfolio_batch._backend import backend_name
from portfolio_batch._cost import PricesArg
from portfolio_batch._decode import Line
from portfolio_batch._requests import gc_paused
from portfolio_batch.errors import InputError

__all__ = ["run_sync"]

log = logging.getLogger(__name__)


def run_sync(
    requests: pd.DataFrame,
    *,
    client: openai.OpenAI | None = None,
    concurrency: int = 8,
    prices: PricesArg = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Send every request with ``client.chat.completions.create(**body)`` (``/v1/responses``
    bodies with ``client.responses.create``), ``concurrency`` at a time, with the SDK's retries.

    Returns the columns and attrs ``aggregate_df`` returns; an API error becomes a ``failed`` row
    with its ``http_status`` and ``error_code``, ``cost_usd`` is at the synchronous price and
    ``batch_id`` is None.

    >>> results = run_sync(requests, client=pb.client(max_retries=5))  # doctest: +SKIP
    >>> results["status"].value_counts()  # doctest: +SKIP
    """
    if concurrency < 1:
        raise InputError(f"concurrency={concurrency!r}: pass 1 or more parallel requests")
    collector = Collector(requests)
    if "body" not in requests.columns:
        raise InputError("requests frame has no body column; build it with build_requests()")
    urls = (
        requests["url"].tolist()
        if "url" in requests.columns
        else [requests.attrs.get("endpoint", "/v1/chat/completions")] * len(requests)
    )
    if client is None:
        from portfolio_batch._backend import client as default_client

        client = default_client()
    jobs = list(zip(collector.ids, urls, requests["body"].tolist(), strict=True))
    lines: list[Line] = []
    from tqdm.auto import tqdm

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="pb-sync")
    try:
        futures: list[Future[Line]] = [pool.submit(_one, client, *job) for job in jobs]
        with tqdm(total=len(futures), desc="run_sync", unit="req", disable=not progress) as bar:
            for fut in as_completed(futures):
                lines.append(fut.result())
                bar.update(1)
    finally:
        # on Ctrl-C or an error, requests not yet started are dropped rather than sent
        pool.shutdown(wait=True, cancel_futures=True)
    with gc_paused():
        collector.add_lines(lines, batch_id=None, name="run_sync", first=1)
        out = collector.frame(requests, prices=prices, batch=False, backend=backend_name(client))
    failed = int((out["status"] != "succeeded").sum())
    if failed:
        log.warning(
            "run_sync: %d of %d request(s) did not succeed; see summarize()", failed, len(out)
        )
    return out


def _one(client: Any, custom_id: str, url: Any, body: Any) -> Line:
    """One request, as the batch output/error line it would have been."""
    if not isinstance(body, dict):
        raise InputError(
            f"custom_id {custom_id!r}: body is {type(body).__name__}, not a dict of request parameters"
        )
    if not isinstance(url, str) or not url.endswith(("/chat/completions", "/responses")):
        raise InputError(
            f"custom_id {custom_id!r}: run_sync sends /v1/chat/completions and /v1/responses requests, not {url!r}"
        )
    create = (
        client.responses.create if url.endswith("/responses") else client.chat.completions.create
    )
    try:
        answer = create(**body)
    except openai.APIStatusError as exc:
        err = exc.body if isinstance(exc.body, dict) else {}
        if isinstance(err.get("error"), dict):
            err = err["error"]
        error = {
            "code": err.get("code") or err.get("type"),
            "message": err.get("message") or str(exc),
            "type": err.get("type"),
        }
        return _line(
            {
                "custom_id": custom_id,
                "response": {"status_code": exc.status_code, "body": {"error": error}},
            }
        )
    except openai.APIConnectionError as exc:  # includes timeouts, after the SDK's own retries
        code = "request_timeout" if isinstance(exc, openai.APITimeoutError) else "connection_error"
        return _line({"custom_id": custom_id, "error": {"code": code, "message": str(exc)}})
    except TypeError as exc:  # a body key the SDK's create() does not take
        raise InputError(f"custom_id {custom_id!r}: the body does not fit {url}: {exc}") from exc
    body_out = answer.model_dump(mode="json", exclude_unset=False)
    return _line({"custom_id": custom_id, "response": {"status_code": 200, "body": body_out}})


def _line(data: dict[str, Any]) -> Line:
    return msgspec.convert(data, Line)
