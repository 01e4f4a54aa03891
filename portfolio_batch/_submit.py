"""``submit``: upload each shard and create its batch, exactly once; ``resume`` and ``cancel``.

    >>> import portfolio_batch as pb
    >>> jobs = pb.submit(manifest, budget_usd=1.0)          # doctest: +SKIP
    >>> jobs[["shard", "batch_id", "status"]]               # doctest: +SKIP

Never pay twice: a shard is identified by its file's sha256 with the endpoint, model and backend.
Submitting it again returns the batch already made, found in the registry or, with the registry
gone, on the server through the batch's ``metadata["pb_sha256"]``. Creating a shard's batch (only
under the shard's lock, after the server was seen to have none) is in ``create.py``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openai
import pandas as pd

from portfolio_batch._backend import backend_name, client_for, provider_of_backend
from portfolio_batch._backend import client as default_client
from portfolio_batch._contract import CANCELLING, DEAD, MANIFEST_REQUIRED, TERMINAL
from portfolio_batch._cost import PricesArg, pricing_provider
from portfolio_batch._create import (
    ServerIndex,
    adopt,
    as_dict,
    cancel_batch,
    idempotency_key,
    shard_lock,
    shard_row,
    submit_ready,
)
from portfolio_batch._download import is_cached
from portfolio_batch._providers import backend_of
from portfolio_batch._providers.openai import RUN_HASH, in_run
from portfolio_batch._registry import Registry, open_registry
from portfolio_batch._requests import retry_of_batches
from portfolio_batch._version import __version__
from portfolio_batch.errors import (
    BudgetExceededError,
    InputError,
    PortfolioBatchError,
    PricingError,
    RegistryError,
    SubmitError,
)

__all__ = ["cancel", "idempotency_key", "resume", "submit"]

log = logging.getLogger("portfolio_batch")

MAX_METADATA_KEYS = 16
PB_KEYS = ("pb_sha256", "pb_version", "pb_run_id", "pb_shard")


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


# -- inputs ----------------------------------------------------------------------------------------
def _as_manifest(data: pd.DataFrame, out_dir: str | Path | None) -> pd.DataFrame:
    if not isinstance(data, pd.DataFrame):
        raise InputError(
            f"submit() takes the manifest frame from to_jsonl() or a requests frame from "
            f"build_requests(), not {type(data).__name__}."
        )
    if "sha256" not in data.columns and "body" in data.columns:
        from portfolio_batch._jsonl import to_jsonl

        target = Path(out_dir) if out_dir is not None else _default_out_dir()
        data = to_jsonl(data, target)
    missing = [c for c in MANIFEST_REQUIRED if c not in data.columns]
    if missing:
        raise InputError(
            f"submit() needs a manifest with columns {list(MANIFEST_REQUIRED)}; missing {missing}. "
            "Pass the frame to_jsonl() returns (or the requests frame itself)."
        )
    if data.empty:
        raise InputError("submit() got an empty manifest: there is nothing to send.")
    return data


def _excluded(data: Any, exclude: Sequence[str] | pd.Series | None) -> set[str]:
    """The batch ids ``exclude_batches`` names (blanks and NaN dropped), and a requests frame's
    ``retry_of`` ones (a manifest's are read from it later)."""
    out = set(retry_of_batches(data)) if isinstance(data, pd.DataFrame) else set()
    if exclude is None:
        return out
    if isinstance(exclude, str):
        raise InputError(
            f"exclude_batches={exclude!r} is one string; pass a list of batch ids, e.g. "
            'exclude_batches=["batch_abc"] or exclude_batches=results["batch_id"]'
        )
    values = exclude.dropna().tolist() if isinstance(exclude, pd.Series) else list(exclude)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise InputError(
            f"exclude_batches holds {bad[0]!r} ({type(bad[0]).__name__}); pass batch id strings"
        )
    return out | {v for v in values if v}


def _default_out_dir() -> Path:
    from portfolio_batch._home import cache_dir

    return cache_dir("jsonl") / (
        time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)
    )


def _user_metadata(metadata: dict[str, Any] | None) -> dict[str, str]:
    if not metadata:
        return {}
    if len(metadata) > MAX_METADATA_KEYS - len(PB_KEYS):
        raise InputError(
            f"metadata has {len(metadata)} keys; a batch takes {MAX_METADATA_KEYS} and "
            f"portfolio_batch uses {len(PB_KEYS)} ({', '.join(PB_KEYS)}): pass at most "
            f"{MAX_METADATA_KEYS - len(PB_KEYS)}."
        )
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 64 or key.startswith("pb_"):
            raise InputError(
                f"metadata key {key!r} is not usable: keys are strings of 1-64 characters and "
                "the prefix 'pb_' is reserved for portfolio_batch."
            )
        text = value if isinstance(value, str) else str(value)
        if len(text) > 512:
            raise InputError(f"metadata[{key!r}] has {len(text)} characters; the limit is 512.")
        out[key] = text
    return out


def _shard_costs(
    manifest: pd.DataFrame, prices: PricesArg, *, required: bool, provider: str | None = None
) -> list[float | None]:
    """Estimated batch cost per shard: the manifest's ``est_cost_usd`` if it has one, else its
    tokens at batch prices with every request using its whole ``max_tokens`` (an upper bound)."""
    if "est_cost_usd" in manifest.columns:
        return [None if pd.isna(v) else float(v) for v in manifest["est_cost_usd"]]
    from portfolio_batch._cost import cost_usd

    out: list[float | None] = []
    for row in manifest.to_dict("records"):
        output = row.get("max_output_tokens", 0)
        try:
            out.append(
                float(
                    cost_usd(
                        str(row["model"]),
                        int(row["est_input_tokens"]),
                        0 if pd.isna(output) else int(output),
                        batch=True,
                        prices=prices,
                        provider=provider,
                    )
                )
            )
        except PricingError:
            if required:
                raise
            log.warning("no price for model %r: the jobs' est_cost_usd is left empty", row["model"])
            out.append(None)
    return out


def _within_limits(manifest: pd.DataFrame, c: Any) -> None:
    """Refuse, before any upload, a shard bigger than one batch of the provider may be (Groq
    and Together take 100 MB, to_jsonl's default shard is OpenAI's 200 MiB): one InputError
    naming the shard and the to_jsonl limits that fit, instead of a rejected upload. OpenAI's
    own path is left as it was: the server says (Azure takes 100,000 requests a file, a
    self-hosted server what it likes)."""
    backend = backend_of(c)
    if backend.name in ("openai", "azure"):
        return
    limits = backend.limits
    for row in manifest.to_dict("records"):
        n, size = int(row["n_requests"]), row.get("n_bytes")
        big = not pd.isna(size) and int(size) > limits.max_bytes
        if n > limits.max_requests or big:
            raise InputError(
                f"Shard {row['shard']} ({row['path']}) has {n:,} requests"
                + (f" and {int(size):,} bytes" if not pd.isna(size) else "")
                + f"; a batch at {backend.name} takes at most {limits.max_requests:,} "
                f"requests and {limits.max_bytes:,} bytes. Nothing was uploaded. Write smaller "
                f"shards: to_jsonl(requests, out_dir, max_requests={limits.max_requests}, "
                f"max_bytes={limits.max_bytes})."
            )


# -- public API ------------------------------------------------------------------------------------
def submit(
    manifest_or_requests: pd.DataFrame,
    *,
    client: openai.OpenAI | None = None,
    metadata: dict[str, Any] | None = None,
    budget_usd: float | None = None,
    force: bool = False,
    max_enqueued_tokens: int | None = None,
    run_id: str | None = None,
    prices: PricesArg = None,
    out_dir: str | Path | None = None,
    exclude_batches: Sequence[str] | pd.Series | None = None,
) -> pd.DataFrame:
    """Upload each shard and create its batch, once; returns the jobs frame (one row per shard).

    A shard already submitted (same sha256, endpoint, model and backend) and not failed,
    cancelled or expired returns its existing batch; ``force=True`` makes a new one anyway.
    ``exclude_batches`` (batch ids, e.g. ``results["batch_id"]``) are never handed back, nor are
    those in the frame's ``retry_of`` column: a ``retry_failed`` frame (or its manifest, or a
    ``pd.concat`` of several) never gets back the batches its results came from. ``budget_usd``
    refuses, before any upload, an estimate above it. ``max_enqueued_tokens`` creates only the
    shards that fit; the rest stay ``queued`` and ``poll`` creates them as capacity frees.

    >>> jobs = submit(manifest, budget_usd=1.0, metadata={"desk": "equities"})   # doctest: +SKIP
    >>> jobs["status"].tolist()                                                  # doctest: +SKIP
    ['validating', 'validating']
    """
    excluded = _excluded(manifest_or_requests, exclude_batches)
    manifest = _as_manifest(manifest_or_requests, out_dir)
    user_md = _user_metadata(metadata)
    # priced at the rates of where it will run: a Mistral model at Mistral's (a client given);
    # with none, the model name picks both the provider and its prices
    at = pricing_provider(provider_of_backend(backend_name(client))) if client else None
    costs = _shard_costs(manifest, prices, required=budget_usd is not None, provider=at)
    if budget_usd is not None:
        total = sum(c for c in costs if c is not None)
        if total > budget_usd:
            raise BudgetExceededError(
                f"The estimated batch cost ${total:.4f} of {len(manifest)} shard(s) "
                f"({int(manifest['n_requests'].sum())} requests) is over budget_usd=${budget_usd:.4f}. "
                "Nothing was uploaded. Raise budget_usd, use a cheaper model, or send fewer rows.",
                estimate_usd=total,
                budget_usd=float(budget_usd),
            )
    if max_enqueued_tokens is not None:
        too_big = manifest[manifest["est_input_tokens"] > max_enqueued_tokens]
        if not too_big.empty:
            big = too_big.iloc[0]
            raise InputError(
                f"Shard {big['shard']} ({big['path']}) has {int(big['est_input_tokens'])} input "
                f"tokens, more than max_enqueued_tokens={max_enqueued_tokens}, so it could never "
                "be enqueued. Make smaller shards: to_jsonl(requests, out_dir, "
                f"max_input_tokens={max_enqueued_tokens})."
            )
    c = client if client is not None else default_client(provider=_provider(manifest))
    _within_limits(manifest, c)
    backend = backend_name(c)
    run_id = run_id or new_run_id()
    index = ServerIndex(c)
    # Never handed back: the batches the caller excludes, those whose answers a retry_failed()
    # frame replaces (its retry_of column), and those whose results the server no longer has.
    skip = excluded | set(retry_of_batches(manifest))
    keys: list[tuple[str, int]] = []
    run_row: dict[str, Any] = {
        "run_id": run_id,
        "backend": backend,
        "model": str(manifest["model"].iloc[0]),
        "endpoint": str(manifest["endpoint"].iloc[0]),
        "pb_version": __version__,
        "metadata": user_md,
        "max_enqueued_tokens": max_enqueued_tokens,
        "budget_usd": budget_usd,
        "est_cost_usd": _sum(costs),
    }
    pending: list[str] = []  # runs with shards still to create
    with open_registry() as reg:
        run_made = False
        records: list[dict[str, Any]] = manifest.to_dict("records")  # type: ignore[assignment]
        for row, est in zip(records, costs, strict=True):
            shard_no = int(row["shard"])
            key = idempotency_key(row["sha256"], row["endpoint"], row["model"], backend)
            new_row = shard_row(run_id, shard_no, row, est=est, key=key, backend=backend)
            if not force:
                # Under the shard's lock: of two submits of the same content at once (threads,
                # processes), one registers the shard and the other finds it.
                with shard_lock(row["sha256"], backend, what=f"Shard {shard_no}"):
                    found = _existing(
                        reg, c, index, row, est=est, key=key, backend=backend, skip=skip
                    )
                    if found is None:
                        reg.ensure_run(**run_row)
                        reg.upsert_shard(new_row)
                if found is not None:
                    keys.append(found)
                    known = reg.shard(*found) or {}
                    if known.get("status") == "queued" and known.get("batch_id") is None:
                        pending.append(found[0])  # e.g. an earlier creation failed
                    continue
            else:
                reg.ensure_run(**run_row)
                reg.upsert_shard(new_row)
            run_made = True
            keys.append((run_id, shard_no))
        if run_made:
            pending.insert(0, run_id)
        # Creates this run's shards and the queued ones reused from earlier runs; each looks on
        # the server first and adopts a live batch of the same content (another home's, say)
        # rather than paying for it again, excluded batches and force=True aside.
        submit_ready(reg, c, pending, skip=skip, force=force)
        return reg.jobs_frame(keys=keys)


def _existing(
    reg: Registry,
    c: openai.OpenAI,
    index: ServerIndex,
    row: dict[str, Any],
    *,
    est: float | None,
    key: str,
    backend: str,
    skip: set[str],
) -> tuple[str, int] | None:
    """The (run_id, shard) that already holds this content and may be handed back: the
    registry's live shard, else (a registry new or lost) a batch the server has for it. None:
    register the shard anew. A batch whose results are gone joins ``skip``. A shard still
    queued (its creation failed) is handed back as it is: its creation looks on the server by
    content first, so a batch another home made for it meanwhile is adopted, not made again."""
    live = reg.live_shard(key)
    if live is not None and live["batch_id"] in skip:
        return None
    if live is not None:
        gone = _results_gone(reg, c, live)
        if not gone:
            return live["run_id"], live["shard"]
        log.warning(
            "shard %s: not reusing batch %s: %s; submitting it again",
            row["shard"],
            live["batch_id"],
            gone,
        )
        skip.add(live["batch_id"])
    found = [
        b
        for b in index.batches_for(row["sha256"])
        if b["id"] not in skip and not _server_results_gone(c, b)
    ]
    if not found:
        return None
    return adopt(reg, found[0], backend=backend, row=row, est=est, key=key)


# OpenAI ends every batch within its 24 h completion window; a registry entry older than that
# which still says "in progress" was simply never polled again.
_STALE_AFTER_S = 24 * 3600


def _results_gone(reg: Registry, client: Any, live: dict[str, Any]) -> str | None:
    """Why the registry's live shard can no longer give its results (None when it can): its
    batch ended and its output file is neither cached here nor on the server. OpenAI deletes
    batch files after 30 days; handing such a batch back would only fail at download."""
    batch_id = live.get("batch_id")
    row = reg.batch(batch_id) if batch_id else None
    if row is None:
        return None
    if row["status"] not in TERMINAL and time.time() - row["updated_at"] > _STALE_AFTER_S:
        fresh = as_dict(_retrieve_batch(client, row))
        reg.update_batch(fresh)
        if fresh["status"] in DEAD:
            return f"it ended {fresh['status']} while nobody polled it"
        row = {**row, **fresh}
    return _server_results_gone(client, row)


def _server_results_gone(client: Any, batch: dict[str, Any]) -> str | None:
    # Only the output file matters: the error file's failures are resent by retry_failed, and
    # resending the whole shard for it would pay again for answers already had.
    file_id = batch.get("output_file_id")
    if batch.get("status") != "completed" or not file_id or is_cached(file_id):
        return None
    try:
        client.files.retrieve(file_id)
        return None
    except openai.NotFoundError:
        pass
    except openai.APIError as exc:
        raise _check_failed(batch, exc) from exc
    # A 404 means gone only if this client sees the batch itself (raises otherwise).
    _retrieve_batch(client, batch)
    return (
        f"its output file {file_id} is gone from the server (OpenAI deletes batch files "
        "after 30 days) and was never downloaded here"
    )


def _retrieve_batch(client: Any, batch: dict[str, Any]) -> Any:
    """A batch recorded earlier, fetched again; a batch the client cannot see at all was made
    with another key, project or server, and is never a reason to send its shard again."""
    try:
        return client.batches.retrieve(batch.get("batch_id") or batch.get("id"))
    except openai.NotFoundError as exc:
        raise SubmitError(
            f"{_where(batch)} is in the job registry but not visible with this client (404): "
            "it was made with another API key, project or server. Pass the client that "
            "submitted it, or force=True to send the shard again (billed again)."
        ) from exc
    except openai.APIError as exc:
        raise _check_failed(batch, exc) from exc


def _where(batch: dict[str, Any]) -> str:
    # a registry row, or the server's object with the run and shard in its metadata
    md = batch.get("metadata") or {}
    batch_id = batch.get("batch_id") or batch.get("id")
    shard, run_id = batch.get("shard", md.get("pb_shard")), batch.get("run_id", md.get("pb_run_id"))
    return f"batch {batch_id} (shard {shard} of run {run_id})"


def _check_failed(batch: dict[str, Any], exc: Exception) -> SubmitError:
    return SubmitError(
        f"checking {_where(batch)} failed ({type(exc).__name__}: {exc}); nothing was sent. "
        "Run submit() again."
    )


def _provider(manifest: pd.DataFrame) -> str:
    """The provider of the manifest's models (``claude-*`` anthropic, ...); one per submit."""
    from portfolio_batch._providers import provider_of

    found = {provider_of(str(m)): str(m) for m in manifest["model"].dropna().unique()}
    if len(found) > 1:
        raise InputError(
            f"The manifest mixes models of several providers ({', '.join(found.values())}); "
            "submit each provider's requests separately."
        )
    return next(iter(found), "openai")


def _sum(costs: Sequence[float | None]) -> float | None:
    known = [c for c in costs if c is not None]
    return sum(known) if known else None


def job_keys(jobs: pd.DataFrame) -> list[tuple[str, int]]:
    """The (run_id, shard) pairs of a jobs frame, checked."""
    if not isinstance(jobs, pd.DataFrame) or not {"run_id", "shard"} <= set(jobs.columns):
        raise InputError(
            "Expected the jobs frame submit(), resume() or jobs() returns (columns run_id, shard, "
            f"batch_id, …); got {type(jobs).__name__}."
        )
    return [(str(r), int(s)) for r, s in zip(jobs["run_id"], jobs["shard"], strict=True)]


def _backends(frame: pd.DataFrame) -> str | None:
    """The jobs' ``backend`` names joined by ", " (what ``_backend.client_for`` takes)."""
    if "backend" not in frame.columns:
        return None
    return ", ".join(sorted(frame["backend"].dropna().astype(str).unique())) or None


def check_backend(frame: pd.DataFrame, c: openai.OpenAI) -> str:
    """The client's backend name, after checking every job was submitted to it."""
    backend = backend_name(c)
    other = frame[frame["backend"] != backend]
    if not other.empty:
        row = other.iloc[0]
        raise InputError(
            f"Run {row['run_id']} shard {row['shard']} was submitted to {row['backend']!r} but the "
            f"client talks to {backend!r}. Pass client= for that backend."
        )
    return backend


def resume(
    run_or_batch_ids: str | Sequence[str], *, client: openai.OpenAI | None = None
) -> pd.DataFrame:
    """Rebuild the jobs frame of runs or batches after a restart (registry first, then the
    server's batch metadata), e.g. ``poll(resume("run-…"))``. On a provider that keeps no
    metadata (Anthropic) and with this home's records of it gone, pass the run hash
    (``requests.attrs["prompt_version"]``): its ended batches are found by their custom_ids.

    >>> jobs = resume("run-20261115-103000-ab12cd")      # doctest: +SKIP
    """
    ids = [run_or_batch_ids] if isinstance(run_or_batch_ids, str) else list(run_or_batch_ids)
    if not ids:
        raise InputError("resume() needs at least one run id or batch id; pb.jobs() lists them.")
    keys: list[tuple[str, int]] = []
    c = client
    with open_registry() as reg:
        for ident in ids:
            if reg.run(ident) is not None:
                keys += [(ident, s["shard"]) for s in reg.shards(ident)]
                continue
            known = reg.batch(ident)
            if known is not None and known["run_id"] is not None:
                keys.append((known["run_id"], int(known["shard"])))
                continue
            c = c if c is not None else default_client()
            found = _server_lookup(c, ident)
            if not found:
                raise RegistryError(
                    f"No run or batch {ident!r} in the job registry ({reg.path}) nor on the "
                    f"server ({backend_name(c)}). pb.jobs() lists the runs this home knows."
                    + _no_metadata_hint(c)
                )
            keys += [adopt(reg, b, backend=backend_name(c)) for b in found]
        return reg.jobs_frame(keys=keys)


def _server_lookup(c: openai.OpenAI, ident: str) -> list[dict[str, Any]]:
    if ident.startswith(("batch", "msgbatch_")):  # OpenAI's, Anthropic's batch ids
        try:
            return [as_dict(c.batches.retrieve(ident))]
        except openai.NotFoundError:
            return []
    recover = getattr(c, "recover", None)
    if recover is None:
        # OpenAI, Azure, Groq, the local server: the run's batch ids are the Backend's
        # (OpenAIBackend.discover: the run named in each batch's metadata, in_run)
        try:
            found = [as_dict(c.batches.retrieve(i)) for i in backend_of(c).discover(ident)]
        except openai.APIError as exc:
            raise SubmitError(
                f"Looking on the server for the batches of run {ident!r} failed "
                f"({type(exc).__name__}: {exc}); nothing was changed. Run resume() again."
            ) from exc
    else:
        # A facade keeps the run id in this home's records of its batches (in_run); with them
        # gone, the run's batches are those the Backend discovers by the run hash in their
        # custom_ids (_facade.BatchClient.recover calls Backend.discover)
        found = [b for b in ServerIndex(c).batches() if in_run(b, ident)]
        if not found and _RUN_HASH.fullmatch(ident):
            found = [as_dict(b) for b in recover(ident)]
    # One batch per shard: the newest reusable one wins over failed/cancelled attempts.
    by_shard: dict[str, dict[str, Any]] = {}
    for b in sorted(found, key=lambda b: (b["status"] not in DEAD, b.get("created_at") or 0)):
        by_shard[(b.get("metadata") or {}).get("pb_shard", "0")] = b
    return list(by_shard.values())


# A run hash (requests.attrs["prompt_version"], the last "-" part of every custom_id)
_RUN_HASH = RUN_HASH


def _no_metadata_hint(c: Any) -> str:
    """What to pass ``resume`` on a provider that keeps no batch metadata (empty otherwise)."""
    if getattr(c, "recover", None) is None:
        return ""
    name = getattr(getattr(c, "backend", None), "name", "this provider")
    return (
        f" {name} keeps no run id: without this home's records (providers/{name}/) a run is "
        "found by its run hash, the last '-' part of every custom_id "
        "(requests.attrs['prompt_version']), e.g. pb.resume('3eb420ac'), or by its batch ids. "
        "Anthropic shows a batch's custom_ids only once it has ended: a batch still in progress "
        "is found by its batch id only."
    )


def cancel(jobs: pd.DataFrame, *, client: openai.OpenAI | None = None) -> pd.DataFrame:
    """Cancel every unfinished batch of ``jobs`` (queued shards are dropped from the queue);
    returns the refreshed jobs frame. Results already produced stay collectable.

    >>> cancel(jobs)["status"].unique()                   # doctest: +SKIP
    array(['cancelling'], dtype=object)
    """
    keys = job_keys(jobs)
    with open_registry() as reg:
        current = reg.jobs_frame(keys=keys)
        c = client if client is not None else client_for(_backends(current))
        check_backend(current, c)
        for row in current.to_dict("records"):
            if row["status"] == "queued":
                reg.update_shard(row["run_id"], row["shard"], status="cancelled")
            elif row["batch_id"] and row["status"] not in TERMINAL | CANCELLING:
                try:
                    reg.update_batch(cancel_batch(c, row["batch_id"]))
                except openai.APIError as exc:
                    raise PortfolioBatchError(
                        f"Cancelling batch {row['batch_id']} (run {row['run_id']}, shard "
                        f"{row['shard']}) failed: {exc}. Run cancel() again."
                    ) from exc
        return reg.jobs_frame(keys=keys)
