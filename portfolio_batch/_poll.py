"""``poll``: refresh every batch of a jobs frame until all are terminal.

    >>> import tempfile, pandas as pd, portfolio_batch as pb
    >>> requests = pb.build_requests(pd.DataFrame({"ticker": ["AAPL", "MSFT"], "weight": [0.5, 0.5]}))
    >>> manifest = pb.to_jsonl(requests, tempfile.mkdtemp())
    >>> jobs = pb.poll(pb.submit(manifest), progress=False)    # no key: the offline local server
    >>> run_id = jobs["run_id"].iloc[0]
    >>> pb.poll(pb.resume(run_id), progress=False)["status"].tolist()  # after a restart, or Ctrl-C
    ['completed']

Each round updates the job registry first, so an interrupted poll (Ctrl-C, a killed kernel) loses
nothing: ``poll(resume(run_id))`` carries on. ``finalizing`` is its own state: a batch counts as done
only once terminal (``completed``, ``failed``, ``expired``, ``cancelled``), because its output file
does not exist before. ``expired`` and ``cancelled`` are not errors: their partial results are
collected by ``aggregate_df``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

import openai
import pandas as pd

from portfolio_batch._backend import client_for, poll_interval_bounds
from portfolio_batch._contract import JOB_STATUSES, TERMINAL
from portfolio_batch._create import adopt, as_dict, submit_ready
from portfolio_batch._registry import Registry, open_registry
from portfolio_batch._submit import _backends, check_backend, job_keys
from portfolio_batch.errors import (
    BatchFailedError,
    InputError,
    PollTimeoutError,
    PricingError,
    RegistryError,
    SubmitError,
)

__all__ = [
    "Progress",
    "ProgressFactory",
    "TextProgress",
    "poll",
    "progress_state",
    "refresh",
    "set_default_progress",
]

log = logging.getLogger("portfolio_batch")

# API errors worth another round rather than aborting a poll that may run for hours.
TRANSIENT = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)
# Rounds in a row in which creating a queued shard may fail (after the SDK's own retries)
# before poll gives up.
MAX_SUBMIT_FAILURES = 5
# OpenAI can report a batch "completed" with requests done and output_file_id still null for a
# poll or two (LiteLLM PR #37715): it is polled again this many times before poll concludes that
# it has no output file (and says so).
OUTPUT_LAG_POLLS = 10
# The last advice of a failed batch's error, for Python callers; the CLI swaps it for its command.
RETRY_ADVICE = "submit() the same manifest again to retry: a failed batch is not reused."
# batch id -> polls that saw it completed without an output file id, across poll() and
# refresh() calls of this process (an entry goes once the file id appears or poll concludes)
_LAG: dict[str, int] = {}


def progress_state(jobs: pd.DataFrame) -> tuple[int, int, str]:
    """``(done, total, postfix)`` of a jobs frame, in requests plus one unit per batch for its
    end: a batch's last unit counts only when it is terminal, so a ``finalizing`` batch (all its
    requests counted) never shows as done and the whole never reaches 100 % early.

    >>> frame = pd.DataFrame({"status": ["finalizing"], "n_requests": [4], "completed": [4],
    ...                       "failed": [0]})
    >>> progress_state(frame)
    (4, 5, 'finalizing=1 | requests ok=4 failed=0 of 4')
    """
    done = total = 0
    for status, n, ok, bad in zip(
        jobs["status"], jobs["n_requests"], jobs["completed"], jobs["failed"], strict=True
    ):
        total += int(n) + 1
        done += int(n) + 1 if status in TERMINAL else min(int(ok) + int(bad), int(n))
    by_status = jobs["status"].value_counts()
    parts = [f"{s}={int(by_status[s])}" for s in JOB_STATUSES if s in by_status.index]
    parts += [f"{s}={int(n)}" for s, n in by_status.items() if s not in JOB_STATUSES]
    postfix = (
        " ".join(parts) + f" | requests ok={int(jobs['completed'].sum())} "
        f"failed={int(jobs['failed'].sum())} of {int(jobs['n_requests'].sum())}"
    )
    return done, total, postfix


class Progress(Protocol):
    """What ``poll`` shows its rounds on: ``update`` gets each refreshed jobs frame, ``close`` is
    called once at the end (also on an error or Ctrl-C). ``poll(progress=factory)`` opens one with
    ``factory(jobs)``:

    >>> class Log:
    ...     def __init__(self, jobs): self.rounds = 0
    ...     def update(self, jobs): self.rounds += 1
    ...     def close(self): print(f"{self.rounds} round(s)")
    >>> jobs = poll(jobs, progress=Log)                  # doctest: +SKIP
    3 round(s)
    """

    def update(self, jobs: pd.DataFrame) -> None: ...

    def close(self) -> None: ...


ProgressFactory: TypeAlias = Callable[[pd.DataFrame], Progress]


class TextProgress:
    """A tqdm bar in requests (``progress_state``), the batches' statuses in its postfix."""

    def __init__(self, jobs: pd.DataFrame) -> None:
        from tqdm.auto import tqdm

        done, total, _ = progress_state(jobs)
        self.bar = tqdm(total=total, initial=done, unit="req", desc="batches", mininterval=0)

    def update(self, jobs: pd.DataFrame) -> None:
        done, total, postfix = progress_state(jobs)
        self.bar.total = total
        self.bar.n = done
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class _NoProgress:
    def update(self, jobs: pd.DataFrame) -> None:
        pass

    def close(self) -> None:
        pass


# What progress=True opens. The pipeline knows only the text bar; the package wires the notebook
# panel in (portfolio_batch/__init__.py), so that this module never imports a display module.
_default_progress: ProgressFactory = TextProgress


def set_default_progress(factory: ProgressFactory) -> None:
    """Make ``factory`` what ``poll(progress=True)`` opens (``portfolio_batch`` sets the notebook
    panel, which falls back to ``TextProgress`` outside a kernel).

    >>> set_default_progress(TextProgress)               # doctest: +SKIP
    """
    global _default_progress
    _default_progress = factory


def _open_progress(progress: bool | ProgressFactory, jobs: pd.DataFrame) -> Progress:
    if progress is True:
        return _default_progress(jobs)
    if progress is False:
        return _NoProgress()
    if callable(progress):
        return progress(jobs)
    raise InputError(
        f"progress={progress!r}: pass True (the default display), False (none) or a callable "
        "that takes the jobs frame and returns an object with update(jobs) and close()."
    )


def _token_limit(batch: dict[str, Any]) -> bool:
    errors = (batch.get("errors") or {}).get("data") or []
    return any(e.get("code") == "token_limit_exceeded" for e in errors)


def batch_usage(batch: dict[str, Any]) -> dict[str, Any] | None:
    """The Batch object's own ``usage`` in one naming scheme (Responses-style), or None when it
    has none or all zero.

    Batches created since 2025-09-07 carry it with ``input_tokens``, ``output_tokens`` and their
    details filled in, next to zeroed chat-style ``prompt_tokens``/``completion_tokens`` (LiteLLM
    #14884); a server filling only the chat-style names is read too. Cached and cache-written
    tokens are parts of the input, reasoning tokens part of the output.

        >>> batch_usage({"usage": {"input_tokens": 0, "output_tokens": 0, "prompt_tokens": 120,
        ...              "completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 20}}})
        {'input_tokens': 120, 'output_tokens': 30, 'input_tokens_details': {'cached_tokens': 0, 'cache_write_tokens': 0}, 'output_tokens_details': {'reasoning_tokens': 20}, 'total_tokens': 150}
    """
    usage = batch.get("usage") or {}
    if not isinstance(usage, dict):
        return None

    def scheme(tokens_in: str, tokens_out: str) -> dict[str, Any] | None:
        inp, out = int(usage.get(tokens_in) or 0), int(usage.get(tokens_out) or 0)
        if not (inp or out):
            return None
        ind = usage.get(f"{tokens_in}_details") or {}
        outd = usage.get(f"{tokens_out}_details") or {}
        return {
            "input_tokens": inp,
            "output_tokens": out,
            "input_tokens_details": {
                "cached_tokens": int(ind.get("cached_tokens") or 0),
                "cache_write_tokens": int(ind.get("cache_write_tokens") or 0),
            },
            "output_tokens_details": {"reasoning_tokens": int(outd.get("reasoning_tokens") or 0)},
            "total_tokens": inp + out,
        }

    return scheme("input_tokens", "output_tokens") or scheme("prompt_tokens", "completion_tokens")


def _actual_cost(
    usage: dict[str, Any] | None, model: str, *, prices: Any = None, backend: str | None = None
) -> float | None:
    """The batch price of a Batch's usage (``batch_usage``); reasoning tokens are inside the
    output tokens, priced once."""
    if not usage or not model:
        return None
    from portfolio_batch._backend import provider_of_backend
    from portfolio_batch._cost import cost_usd, pricing_provider

    details = usage["input_tokens_details"]
    try:
        return float(
            cost_usd(
                model,
                usage["input_tokens"],
                usage["output_tokens"],
                details["cached_tokens"],
                cache_write_tokens=details["cache_write_tokens"],
                batch=True,
                prices=prices,
                provider=pricing_provider(provider_of_backend(backend)),
            )
        )
    except PricingError:
        return None


def _normalise(batch: dict[str, Any], lag: dict[str, int] | None = None) -> dict[str, Any]:
    """The batch as recorded: ``""`` file ids as None (a clean batch may say ``error_file_id:
    ""``), its usage in one scheme, and a ``completed`` batch whose output file id has not
    appeared yet (requests completed, ``output_file_id`` null) kept ``finalizing`` for up to
    ``OUTPUT_LAG_POLLS`` polls, so that nobody concludes it has no output."""
    lag = _LAG if lag is None else lag
    batch = {
        **batch,
        "output_file_id": batch.get("output_file_id") or None,
        "error_file_id": batch.get("error_file_id") or None,
    }
    usage = batch_usage(batch)
    batch["usage"] = usage
    done = int((batch.get("request_counts") or {}).get("completed") or 0)
    if batch["status"] != "completed" or batch["output_file_id"] is not None or not done:
        lag.pop(batch["id"], None)
    else:
        seen = lag[batch["id"]] = lag.get(batch["id"], 0) + 1
        if seen <= OUTPUT_LAG_POLLS:
            log.info(
                "batch %s is completed with %d request(s) done but no output file id yet "
                "(poll %d of %d): polling it again",
                batch["id"],
                done,
                seen,
                OUTPUT_LAG_POLLS,
            )
            return {**batch, "status": "finalizing"}
        del lag[batch["id"]]
        log.warning(
            "batch %s is completed with %d request(s) done, but still has no output file after "
            "%d polls: concluding it has none (aggregate_df looks once more, and its requests "
            "are missing if it is still absent)",
            batch["id"],
            done,
            OUTPUT_LAG_POLLS,
        )
    return batch


def _refresh(
    reg: Registry,
    c: openai.OpenAI,
    keys: list[tuple[str, int]],
    *,
    requeue_after: float,
) -> pd.DataFrame:
    runs = list(dict.fromkeys(r for r, _ in keys))
    for row in reg.jobs_frame(keys=keys).to_dict("records"):
        if not row["batch_id"] or row["status"] in TERMINAL:
            continue
        try:
            batch = _normalise(as_dict(c.batches.retrieve(row["batch_id"])))
        except TRANSIENT as exc:
            log.warning("checking batch %s failed (%s); trying again", row["batch_id"], exc)
            continue
        terminal = batch["status"] in TERMINAL
        cost = _actual_cost(
            batch["usage"], batch.get("model") or row["model"], backend=row.get("backend")
        )
        reg.update_batch(batch, actual_cost_usd=cost if terminal else None)
        run = reg.run(row["run_id"]) or {}
        if (
            batch["status"] == "failed"
            and _token_limit(batch)
            and run.get("max_enqueued_tokens") is not None
        ):
            # Queue-aware: the server's limit was tighter than ours. Wait for capacity, then
            # resubmit the same file; the failed batch stays in the registry's history.
            log.info(
                "batch %s (shard %s) hit the enqueued-token limit: queued again",
                batch["id"],
                row["shard"],
            )
            reg.update_shard(
                row["run_id"],
                row["shard"],
                status="queued",
                batch_id=None,
                not_before=time.time() + requeue_after,
            )
    submit_ready(reg, c, runs)
    for run_id in runs:
        reg.set_run_actual_cost(run_id)
    return reg.jobs_frame(keys=keys)


def refresh(jobs: pd.DataFrame, *, client: openai.OpenAI | None = None) -> pd.DataFrame:
    """One round of ``poll`` without waiting: check every unfinished batch of ``jobs`` once,
    create queued shards that now fit, record it all in the registry and return the refreshed
    jobs frame. For callers that schedule their own rounds (``pb.start``'s background watcher).

    >>> jobs = refresh(jobs)                             # doctest: +SKIP
    """
    keys = job_keys(jobs)
    if not keys:
        raise InputError("refresh() got an empty jobs frame: submit() or resume() first.")
    c = client if client is not None else client_for(_backends(jobs))
    with open_registry() as reg:
        return _refresh(reg, c, keys, requeue_after=poll_interval_bounds(c)[1])


def _resume_hint(run_ids: list[str]) -> str:
    arg = (
        f'"{run_ids[0]}"' if len(run_ids) == 1 else "[" + ", ".join(f'"{r}"' for r in run_ids) + "]"
    )
    return (
        "The batches keep running on the server and the job registry has every one of them. "
        f"Resume with:\n    pb.poll(pb.resume({arg}))\nor in a terminal:\n"
        + "".join(f"    portfolio-batch jobs resume {r}\n" for r in run_ids)
    )


def _failure_error(frame: pd.DataFrame, reg: Registry) -> BatchFailedError:
    lines: list[str] = []
    errors: list[dict[str, Any]] = []
    token_limit = False
    failed = frame[frame["status"] == "failed"]
    for row in failed.to_dict("records"):
        stored = reg.batch(row["batch_id"]) if row["batch_id"] else None
        data = stored["errors"] if stored else []
        lines.append(
            f"batch {row['batch_id']} (run {row['run_id']}, shard {row['shard']}, {row['path']}):"
        )
        for e in data or [{"code": None, "message": "no errors.data given"}]:
            where = f"line {e['line']}" if e.get("line") is not None else "file"
            lines.append(f"  {where}: {e.get('code')}: {e.get('message')}")
            errors.append(
                {"batch_id": row["batch_id"], "run_id": row["run_id"], "shard": row["shard"], **e}
            )
            token_limit = token_limit or e.get("code") == "token_limit_exceeded"
    advice = []
    if token_limit:
        advice.append(
            "The organisation's enqueued-token limit was reached. Make smaller shards "
            "(to_jsonl(requests, out_dir, max_input_tokens=...)), or wait for running batches to "
            "finish and submit again, or submit(..., max_enqueued_tokens=...) so that shards wait "
            "their turn instead of failing."
        )
    if any(e.get("line") is not None for e in errors):
        advice.append("Fix those lines of the shard files (to_jsonl() again) and submit again.")
    if not advice:
        advice.append(RETRY_ADVICE)
    return BatchFailedError(
        f"{len(failed)} batch(es) failed:\n" + "\n".join(lines) + "\n" + " ".join(advice),
        jobs=frame,
        errors=errors,
    )


def poll(
    jobs: pd.DataFrame,
    *,
    client: openai.OpenAI | None = None,
    interval: float | str = "auto",
    timeout: float | None = None,
    progress: bool | ProgressFactory = True,
    on_update: Callable[[pd.DataFrame], object] | None = None,
    raise_on_failed: bool = True,
) -> pd.DataFrame:
    """Refresh every batch until all are terminal; returns the final jobs frame.

    ``progress=True`` shows the notebook panel in a Jupyter kernel and a text bar elsewhere;
    ``False`` nothing; a callable ``factory(jobs) -> Progress`` your own display.
    ``interval="auto"`` starts short and grows (0.05 s to 1 s on the local server, 5 s to 60 s on
    OpenAI/Azure); a number fixes it. ``on_update(jobs)`` gets each refreshed frame. Queued shards
    (``submit(max_enqueued_tokens=)``) are created as capacity frees. A ``failed`` batch raises
    ``BatchFailedError`` (``raise_on_failed=False``: return the frame); ``timeout`` raises
    ``PollTimeoutError`` while the batches keep running.

    >>> jobs = poll(submit(manifest), timeout=3600)      # doctest: +SKIP
    >>> jobs["status"].unique()                          # doctest: +SKIP
    array(['completed'], dtype=object)
    """
    keys = job_keys(jobs)
    if not keys:
        raise InputError("poll() got an empty jobs frame: submit() or resume() first.")
    if interval != "auto" and (not isinstance(interval, int | float) or interval < 0):
        raise InputError(f"interval={interval!r}: pass 'auto' or a number of seconds >= 0.")
    c = client if client is not None else client_for(_backends(jobs))
    first, largest = poll_interval_bounds(c)
    wait = first if interval == "auto" else float(interval)
    run_ids = list(dict.fromkeys(r for r, _ in keys))
    started = time.monotonic()
    with open_registry() as reg:
        _adopt_unknown(reg, c, jobs, keys)
        frame = reg.jobs_frame(keys=keys)
        check_backend(frame, c)
        display = _open_progress(progress, frame)
        submit_failures = 0
        try:
            try:
                while True:
                    try:
                        frame = _refresh(reg, c, keys, requeue_after=largest)
                        submit_failures = 0
                    except (SubmitError, *TRANSIENT) as exc:
                        submit_failures += 1
                        if submit_failures >= MAX_SUBMIT_FAILURES:
                            raise
                        log.warning("creating a queued shard failed (%s); trying again", exc)
                        frame = reg.jobs_frame(keys=keys)
                    if on_update is not None:
                        on_update(frame.copy())
                    display.update(frame)
                    if frame["status"].isin(TERMINAL).all():
                        break
                    elapsed = time.monotonic() - started
                    if timeout is not None and elapsed >= timeout:
                        raise PollTimeoutError(
                            f"poll() stopped after timeout={timeout} s with batches still running "
                            f"({progress_state(frame)[2]}). " + _resume_hint(run_ids),
                            jobs=frame,
                        )
                    pause = wait if timeout is None else min(wait, timeout - elapsed)
                    time.sleep(max(pause, 0.0))
                    if interval == "auto":
                        wait = min(wait * 1.5, largest)
            finally:
                display.close()  # before the hint below, so that the bar does not redraw over it
        except KeyboardInterrupt:
            sys.stderr.write("\nInterrupted. " + _resume_hint(run_ids))
            sys.stderr.flush()
            raise
        if raise_on_failed and (frame["status"] == "failed").any():
            raise _failure_error(frame, reg)
    return frame


def _adopt_unknown(
    reg: Registry, c: openai.OpenAI, jobs: pd.DataFrame, keys: list[tuple[str, int]]
) -> None:
    """Rows of a hand-made frame whose batch the registry does not know are recorded first."""
    known = set(zip(*[reg.jobs_frame(keys=keys)[col] for col in ("run_id", "shard")], strict=True))
    if len(known) == len(set(keys)):
        return
    batch_ids = jobs["batch_id"] if "batch_id" in jobs.columns else [None] * len(jobs)
    for key, batch_id in zip(keys, batch_ids, strict=True):
        if key in known:
            continue
        if not batch_id:
            raise RegistryError(
                f"Run {key[0]} shard {key[1]} is not in the job registry ({reg.path}) and has no "
                "batch_id. Use the frame submit() or resume() returned."
            )
        from portfolio_batch._backend import backend_name

        adopt(reg, as_dict(c.batches.retrieve(batch_id)), backend=backend_name(c))
