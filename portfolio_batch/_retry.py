"""Second attempts: the requests worth sending again (``retry_failed``) and the laying of their
results over the first run's (``merge_results``).

    >>> again = retry_failed(results, requests, max_tokens=800)  # doctest: +SKIP
    >>> merged = merge_results(results, aggregate_df(poll(submit(again)), again))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from portfolio_batch._aggregate import custom_ids, need_columns
from portfolio_batch._contract import RETRY_OF
from portfolio_batch._requests import retry_of_batches
from portfolio_batch.errors import InputError

__all__ = ["merge_results", "retry_failed", "retry_of_batches"]

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "server_error",
        "request_timeout",
        "timeout",
        "connection_error",
        "internal_error",
        "service_unavailable",
    }
)


def retryable(results: pd.DataFrame) -> pd.Series:
    """True for the rows worth sending again (see ``retry_failed``)."""
    status = results["status"]
    http = (
        results["http_status"].astype("Float64")
        if "http_status" in results
        else pd.Series(np.nan, index=results.index)
    )
    code = results["error_code"].astype(object)
    transient_failure = (status == "failed") & (
        code.isin(RETRYABLE_CODES).to_numpy(dtype=bool)
        | http.isin([408, 409, 429]).to_numpy(dtype=bool)
        | (http >= 500).fillna(False).to_numpy(dtype=bool)
    )
    return status.isin(["expired", "cancelled", "missing", "invalid_output"]) | transient_failure


def retry_failed(
    results: pd.DataFrame, requests: pd.DataFrame, *, max_tokens: int | None = None
) -> pd.DataFrame:
    """The requests worth sending again, as a requests frame ready for ``to_jsonl``/``submit``.

    Picked: ``expired``, ``cancelled``, ``missing``, ``invalid_output``, and ``failed`` with a
    transient cause (HTTP 408/409/429/5xx, or codes such as ``rate_limit_exceeded``,
    ``server_error``, ``request_timeout``). A 400 such as ``context_length_exceeded`` is not
    resent: it would fail the same way. ``max_tokens`` raises the limit of the ``invalid_output``
    rows (answers cut at ``max_tokens``); their custom_id stays, so ``merge_results`` pairs them up.
    Its ``retry_of`` column names the batches the results came from (comma-separated): ``submit``
    never hands one of them back, even when the retry's file is byte-identical to its (every row
    retried). A column, not ``attrs``: it survives ``pd.concat`` of two retry frames, and
    ``to_jsonl`` carries it into the manifest.

    >>> again = retry_failed(results, requests, max_tokens=800)  # doctest: +SKIP
    >>> merged = merge_results(results, aggregate_df(poll(submit(again)), again))  # doctest: +SKIP
    """
    need_columns(results, "results", ("status", "error_code"))
    picked = results.index[retryable(results).to_numpy(dtype=bool)]
    ids = custom_ids(requests)
    unknown = picked.difference(pd.Index(ids))
    if len(unknown):
        raise InputError(
            f"{len(unknown)} result row(s) are not in the requests frame, e.g. custom_id {unknown[0]!r}: "
            "pass the requests these results came from"
        )
    wanted = set(picked)
    mask = np.fromiter((cid in wanted for cid in ids), dtype=bool, count=len(ids))
    out = requests.loc[mask].copy()
    out.attrs = dict(requests.attrs)
    # The batches these results came from (and those an earlier retry already replaced): a retry
    # frame byte-identical to one of their files (every row retried, bodies unchanged) must make
    # a new batch, not get that one back. One string shared by every row.
    source = sorted(set(_source_batches(results)) | set(retry_of_batches(requests)))
    out[RETRY_OF] = pd.Series(",".join(source) or None, index=out.index, dtype=object)
    if max_tokens is not None and len(out):
        cut = set(results.index[(results["status"] == "invalid_output").to_numpy(dtype=bool)])
        out["body"] = [
            _raise_max_tokens(body, max_tokens) if cid in cut else body
            for cid, body in zip(custom_ids(out), out["body"], strict=True)
        ]
    log.info("retry_failed: %d of %d request(s) to send again", len(out), len(results))
    return out


def _source_batches(results: pd.DataFrame) -> list[str]:
    ids: set[str] = set()
    if "batch_id" in results:
        ids.update(str(b) for b in results["batch_id"].dropna().unique() if b)
    for stats in results.attrs.get("files") or ():
        if isinstance(stats, dict) and stats.get("batch_id"):
            ids.add(str(stats["batch_id"]))
    return sorted(ids)


def _raise_max_tokens(body: Any, max_tokens: int) -> Any:
    if not isinstance(body, dict):
        return body
    new = dict(body)  # never touch the caller's dict
    key = next(
        (k for k in ("max_completion_tokens", "max_output_tokens", "max_tokens") if k in new),
        "max_tokens",
    )
    new[key] = max(int(new.get(key) or 0), int(max_tokens))
    return new


def merge_results(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with the rows of ``new`` laid over it: the latest attempt per custom_id wins.

    A ``missing`` row in ``new`` (not attempted there) does not replace an earlier result. Adds an
    ``attempt`` column (1 for the first run) so retried rows are visible.

    >>> merged = merge_results(results, retried_results)  # doctest: +SKIP
    >>> merged["attempt"].max()  # doctest: +SKIP
    2
    """
    need_columns(old, "old", ("status",))
    need_columns(new, "new", ("status",))
    old = old.copy()
    if "attempt" not in old:
        old["attempt"] = 1
    taken = new[
        (new["status"] != "missing").to_numpy(dtype=bool) | ~new.index.isin(old.index)
    ].copy()
    prior = old["attempt"].reindex(taken.index)
    base = taken["attempt"] if "attempt" in taken else pd.Series(1, index=taken.index)
    taken["attempt"] = np.where(prior.notna(), prior.fillna(0) + base, base).astype(int)
    kept = old[~old.index.isin(taken.index)]
    parts = [p for p in (kept, taken) if len(p)]
    merged = pd.concat(parts) if parts else old.iloc[:0]
    order = old.index.append(taken.index[~taken.index.isin(old.index)])
    merged = merged.reindex(order)
    merged["attempt"] = merged["attempt"].astype(int)
    merged.attrs = {
        **old.attrs,
        "malformed_lines": int(old.attrs.get("malformed_lines", 0))
        + int(new.attrs.get("malformed_lines", 0)),
        **_provenance(old.attrs, new.attrs),
    }
    return merged


def _provenance(old: Mapping[Any, Any], new: Mapping[Any, Any]) -> dict[Hashable, Any]:
    """Where the merged answers came from: both runs' backends and engines; simulated if either
    run was (the ``model`` column says which rows), so no simulated row passes as an LLM's."""
    out: dict[Hashable, Any] = {}
    for name in ("backend", "engine"):
        values = [a.get(name) for a in (old, new) if a.get(name) is not None]
        if values or name in old or name in new:
            out[name] = ", ".join(dict.fromkeys(", ".join(map(str, values)).split(", "))) or None
    if "simulated" in old or "simulated" in new:
        out["simulated"] = bool(old.get("simulated")) or bool(new.get("simulated"))
    return out
