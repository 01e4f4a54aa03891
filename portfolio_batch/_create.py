"""Each shard's batch, created at most once on the server (the server side of ``submit``).

The rule: a shard's batch is created only while its lock is held (``locks.py``: a file lock in
the home, ``locks/<sha256>-<backend hash>.lock``, released by the OS if the process dies), and
only after a look-up on the server (``batches.list``, by content: the batch metadata
``pb_sha256``, endpoint and model, whatever run made it) succeeded and found none; a batch found
is adopted (recorded for the shard), e.g. one another home made meanwhile. The create POST goes out with the SDK's
retries off, because the SDK retries POSTs without an idempotency key; after any error the server
is looked at again instead of posting again. A look-up that fails stops there: a ``SubmitError``,
nothing created. So does a look-up after a create that got no answer (a timeout): the server may
act on it later than any wait, so it is not sent again in that call. Uploads follow the same rule by file name (``pb-<sha256>.jsonl``). Extra copies a
look-up finds anyway (a server whose listing lagged, a batch made from another home) are
cancelled, logged and counted (``extra_copies_cancelled()``). Creation is paced under OpenAI's
2,000 batches an hour (``MAX_BATCHES_PER_HOUR``): a shard waits, logged, while the listing shows
that many created in the last hour, and a 429 is waited out, then the server looked at again.

    >>> with open_registry() as reg:                      # doctest: +SKIP
    ...     submit_ready(reg, client, ["run-20261115-103000-ab12cd"])
    1
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import openai
import pandas as pd

from portfolio_batch._contract import CANCELLING, DEAD, TERMINAL
from portfolio_batch._home import cache_dir
from portfolio_batch._locks import LockBusy, home_lock
from portfolio_batch._registry import Registry
from portfolio_batch._version import __version__
from portfolio_batch.errors import InputError, RegistryError, SubmitError

__all__ = [
    "ServerIndex",
    "adopt",
    "as_dict",
    "cancel_batch",
    "create_shard_batch",
    "extra_copies_cancelled",
    "idempotency_key",
    "shard_lock",
    "shard_row",
    "submit_ready",
]

log = logging.getLogger("portfolio_batch")

T = TypeVar("T")

# How far along a batch is, to choose which of several copies to keep.
PROGRESS = {"validating": 1, "in_progress": 2, "finalizing": 3, "completed": 4, "expired": 4}
# How far back batches.list is read: OpenAI deletes a batch's output 30 days after it completes,
# so an older batch cannot be reused anyway.
MAX_LISTED = 10_000
MAX_AGE_SECONDS = 30 * 24 * 3600
# A shard's batch cannot predate its registration; this much slack covers a server clock ahead.
CLOCK_SLACK_SECONDS = 24 * 3600
# How long a caller waits for a shard's lock while another uploads and creates (a large upload
# takes minutes).
LOCK_WAIT_SECONDS = 15 * 60
CREATE_TIMEOUT_SECONDS = 60.0
# After a POST that got no answer, the server may still be acting on it: wait this long before
# looking, so that what it makes is found rather than made again.
UNANSWERED_SETTLE_SECONDS = 2.0
MAX_PAUSE_SECONDS = 60.0
# OpenAI allows at most 2,000 batch creations per hour (per organisation). Creation is paced
# under it rather than failed: before creating, a shard waits (and logs it) while the server's
# listing shows this many batches created in the last hour; a 429 from the server is waited out
# (its retry-after, up to an hour each time) and the server looked at again. Lower it for an
# organisation or Azure resource with a tighter limit.
MAX_BATCHES_PER_HOUR = 2000
CREATION_WINDOW_SECONDS = 3600.0
# Past this much waiting on 429s, or this many 429s, for one upload or creation: a SubmitError.
MAX_RATE_LIMIT_WAIT_SECONDS = 2 * 3600.0
MAX_RATE_LIMIT_WAITS = 50
# The clock and sleep of the pacing (tests give it a simulated hour).
_clock: Callable[[], float] = time.time
_sleep: Callable[[float], None] = time.sleep

_extras = [0]
_extras_lock = threading.Lock()


def extra_copies_cancelled() -> int:
    """How many extra copies of shards' batches this process found on the server and cancelled:
    0 unless something outside the creation rule made one.

    >>> extra_copies_cancelled() >= 0
    True
    """
    return _extras[0]


def as_dict(obj: Any) -> dict[str, Any]:
    """An SDK object (a Batch, a FileObject) as the plain dict the registry records."""
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


def idempotency_key(sha256: str, endpoint: str, model: str, backend: str) -> str:
    """The key under which a shard is submitted at most once.

    >>> idempotency_key("ab" * 32, "/v1/chat/completions", "gpt-4.1-mini", "openai")[:12]
    '2938ea3f1693'
    """
    return hashlib.sha256(f"{sha256}\n{endpoint}\n{model}\n{backend}".encode()).hexdigest()


def shard_row(
    run_id: str, shard: int, row: dict[str, Any], *, est: float | None, key: str, backend: str
) -> dict[str, Any]:
    """The registry row of a shard not yet created (status ``queued``)."""
    max_out = row.get("max_output_tokens")
    return {
        "run_id": run_id,
        "shard": shard,
        "idem_key": key,
        "sha256": row["sha256"],
        "path": str(row["path"]),
        "n_requests": int(row["n_requests"]),
        "est_input_tokens": int(row["est_input_tokens"]),
        "max_output_tokens": None if max_out is None or pd.isna(max_out) else int(max_out),
        "est_cost_usd": None if est is None or math.isnan(est) else est,
        "model": str(row["model"]),
        "endpoint": str(row["endpoint"]),
        "backend": backend,
        "status": "queued",
        "batch_id": None,
        "input_file_id": None,
    }


def adopt(
    reg: Registry,
    batch: dict[str, Any],
    *,
    backend: str,
    row: dict[str, Any] | None = None,
    est: float | None = None,
    key: str | None = None,
) -> tuple[str, int]:
    """Record a batch found on the server (registry lost or never written) under the run and
    shard its metadata names."""
    md = batch.get("metadata") or {}
    run_id = md.get("pb_run_id") or f"adopted-{batch['id']}"
    shard_no = int(md.get("pb_shard") or 0)
    counts = batch.get("request_counts") or {}
    if row is None:
        row = {
            "sha256": md.get("pb_sha256") or "",
            "path": "",
            "n_requests": counts.get("total") or 0,
            "est_input_tokens": 0,
            "max_output_tokens": None,
            "model": batch.get("model") or "",
            "endpoint": batch.get("endpoint") or "",
        }
    key = key or idempotency_key(row["sha256"], row["endpoint"], row["model"], backend)
    if reg.run(run_id) is None:
        reg.ensure_run(
            run_id,
            backend=backend,
            model=row["model"],
            endpoint=row["endpoint"],
            pb_version=md.get("pb_version") or __version__,
            metadata={k: v for k, v in md.items() if not k.startswith("pb_")},
            max_enqueued_tokens=None,
            budget_usd=None,
            est_cost_usd=None,
        )
    reg.upsert_shard(shard_row(run_id, shard_no, row, est=est, key=key, backend=backend))
    reg.record_batch(
        batch,
        backend=backend,
        run_id=run_id,
        shard=shard_no,
        idem_key=key,
        sha256=row["sha256"],
    )
    log.info("found batch %s on the server (run %s, shard %s)", batch["id"], run_id, shard_no)
    return run_id, shard_no


@contextmanager
def shard_lock(sha256: str, backend: str, *, what: str) -> Iterator[None]:
    """Hold the lock of the shard with this content on this backend; ``what`` names it in the
    error raised after ``LOCK_WAIT_SECONDS`` of waiting for another caller."""
    backend_hash = hashlib.sha256(backend.encode()).hexdigest()[:16]
    path = cache_dir("locks") / f"{sha256}-{backend_hash}.lock"
    try:
        with home_lock(path, timeout=LOCK_WAIT_SECONDS):
            yield
    except LockBusy as exc:
        raise SubmitError(
            f"{what}: another caller (a process or thread on this home) has been uploading or "
            f"creating its batch for {LOCK_WAIT_SECONDS} s (it holds {exc.path}). Nothing was "
            "created; run submit() again once it has finished."
        ) from None


# -- the server's view -----------------------------------------------------------------------------
def list_batches(c: openai.OpenAI, *, since: float = 0.0) -> list[dict[str, Any]]:
    """The server's batches, newest first, back to ``since`` (at most 30 days and 10,000)."""
    found: list[dict[str, Any]] = []
    cutoff = max(since, time.time() - MAX_AGE_SECONDS)
    # None until two ages were compared: an old batch listed first proves nothing about order,
    # and stopping there would miss every newer batch of a server that lists oldest first.
    newest_first: bool | None = None
    previous: float | None = None
    for batch in c.batches.list(limit=100):
        b = as_dict(batch)
        created = b.get("created_at") or 0
        if previous is not None and created != previous:
            newest_first = created < previous and newest_first is not False
        previous = created
        if created and created < cutoff:
            if newest_first:  # listed newest first (OpenAI, the local server): the rest is older
                break
            continue
        if len(found) >= MAX_LISTED:
            break
        found.append(b)
    return found


class ServerIndex:
    """The server's batches, listed once per ``submit`` and indexed by the content hash in their
    metadata: how a shard whose registry was lost finds its batch."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self._batches: list[dict[str, Any]] | None = None

    def batches(self) -> list[dict[str, Any]]:
        if self._batches is None:
            try:
                self._batches = list_batches(self.client)
            except openai.APIError as exc:
                raise SubmitError(
                    f"Listing the server's batches (to find those made before, by their metadata) "
                    f"failed ({type(exc).__name__}: {exc}); nothing was sent. Run the same call "
                    "again."
                ) from exc
        return self._batches

    def batches_for(self, sha256: str) -> list[dict[str, Any]]:
        """Reusable batches (not failed/cancelled/expired) carrying this hash, oldest first."""
        out = [
            b
            for b in self.batches()
            if (b.get("metadata") or {}).get("pb_sha256") == sha256 and b["status"] not in DEAD
        ]
        return sorted(out, key=lambda b: (b.get("created_at") or 0, b["id"]))


# -- the rule --------------------------------------------------------------------------------------
def _look_then_post(
    c: openai.OpenAI,
    look: Callable[[], T | None],
    post: Callable[[], T],
    *,
    what: str,
    then: str = "run submit() again (it looks first).",
    stop_unanswered: bool = False,
) -> T:
    """Look; POST only when the look-up succeeded and found nothing; after an error look again.
    As many POSTs as the client would have made with its own retries. ``look`` raises when it
    fails, so a failed look-up never leads to a POST. ``then`` ends the error: what to run.
    ``stop_unanswered``: after a POST sent without an answer, the look-up that follows is the
    last step (the server may act on it later than any wait here: posting again could make a
    second one)."""
    error: openai.APIError | None = None
    unanswered = False
    rounds = max(0, int(getattr(c, "max_retries", 2))) + 1
    n = 0  # POSTs that failed, 429s aside
    limited = 0  # 429s waited out
    waited = 0.0
    while True:
        if error is not None and _paced(error, limited, waited):
            pause = _pause(error, n, cap=CREATION_WINDOW_SECONDS)
            limited, waited = limited + 1, waited + pause
            log.warning(
                "%s: the server is rate-limiting (429; OpenAI allows at most %d batch "
                "creations an hour): waiting %.0f s, then looking on the server again",
                what,
                MAX_BATCHES_PER_HOUR,
                pause,
            )
            _sleep(pause)
        elif error is not None:
            _sleep(_pause(error, n))
        found = look()
        if found is not None:
            return found
        if n == rounds:
            break
        try:
            return post()
        except openai.APIError as exc:
            error = exc
            log.warning("%s failed (%s); looking on the server before anything else", what, exc)
            if _paced(exc, limited, waited):
                continue  # refused for the rate: nothing was made, and it is not a round
            n += 1
            if _refused(exc):
                rounds = n  # the same request would be refused again: look once, then stop
            if stop_unanswered and _unanswered(exc):
                rounds, unanswered = n, True
    if unanswered:
        raise SubmitError(
            f"{what} got no answer ({type(error).__name__}: {error}). The server, looked at "
            "afterwards, shows none yet, but it may still act on that request, so it was not "
            f"sent again. Wait a minute or two, then: {then}"
        ) from error
    raise SubmitError(
        f"{what} failed ({type(error).__name__}: {error}). The server, looked at afterwards, has "
        f"none, so nothing was created; {then}"
    ) from error


def _paced(exc: openai.APIError, limited: int, waited: float) -> bool:
    """Whether a 429 is waited out (not counted as a failed attempt): until the bounds."""
    return (
        isinstance(exc, openai.RateLimitError)
        and limited < MAX_RATE_LIMIT_WAITS
        and waited < MAX_RATE_LIMIT_WAIT_SECONDS
    )


def _wait_for_creation_slot(listed: list[dict[str, Any]], where: str) -> None:
    """Wait while ``listed`` (the server's batches, just looked up) shows ``MAX_BATCHES_PER_HOUR``
    created in the last hour: until the oldest of them leaves the hour."""
    now = _clock()
    recent = sorted(
        float(b.get("created_at") or 0)
        for b in listed
        if float(b.get("created_at") or 0) > now - CREATION_WINDOW_SECONDS
    )
    if len(recent) < MAX_BATCHES_PER_HOUR:
        return
    free_at = recent[len(recent) - MAX_BATCHES_PER_HOUR] + CREATION_WINDOW_SECONDS
    pause = max(free_at - now, 0.0) + 1.0
    log.warning(
        "%d batches were created in the last hour, the most allowed (at most %d an hour): "
        "waiting %.0f s before creating the batch of %s",
        len(recent),
        MAX_BATCHES_PER_HOUR,
        pause,
        where,
    )
    _sleep(pause)


def _unanswered(exc: openai.APIError) -> bool:
    """A request that may have reached the server but got no answer (a timeout, a connection
    lost after sending); not one whose connection could not even be made."""
    return isinstance(exc, openai.APIConnectionError) and not isinstance(
        exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout)
    )


def _refused(exc: openai.APIError) -> bool:
    # A 4xx other than a timeout, conflict or rate limit: the request itself was refused.
    status = getattr(exc, "status_code", None)
    return status is not None and 400 <= status < 500 and status not in (408, 409, 429)


def _pause(exc: openai.APIError, n: int, *, cap: float = MAX_PAUSE_SECONDS) -> float:
    backoff = min(0.5 * 2 ** max(n - 1, 0), 8.0)
    if not isinstance(exc, openai.APIStatusError):
        return max(UNANSWERED_SETTLE_SECONDS, backoff)
    headers = exc.response.headers
    try:
        if headers.get("retry-after-ms"):
            return min(float(headers["retry-after-ms"]) / 1000, cap)
        if headers.get("retry-after"):
            return min(float(headers["retry-after"]), cap)
    except ValueError:
        pass
    return backoff


# -- one shard -------------------------------------------------------------------------------------
def _ensure_file(reg: Registry, c: openai.OpenAI, shard: dict[str, Any]) -> str:
    """The id of an uploaded copy of the shard's file, uploading it only if none exists."""
    backend, sha = shard["backend"], shard["sha256"]
    for file_id in reg.files_for(backend=backend, sha256=sha):
        try:
            c.files.retrieve(file_id)
            return file_id
        except openai.NotFoundError:
            reg.forget_file(file_id)
    name = f"pb-{sha}.jsonl"  # the content hash in the name: files.list finds it again
    path = Path(shard["path"])
    where = f"shard {shard['shard']} of run {shard['run_id']}"

    def look() -> dict[str, Any] | None:
        try:
            files = [as_dict(f) for f in c.files.list(purpose="batch")]
        except openai.APIError as exc:
            raise SubmitError(
                f"Looking on the server for the upload of {where} failed ({exc}); nothing was "
                f"uploaded or created. {_finish(shard['run_id'])}"
            ) from exc
        mine = [f for f in files if f.get("filename") == name and f.get("status") != "error"]
        return min(mine, key=lambda f: (f.get("created_at") or 0, f["id"])) if mine else None

    def post() -> dict[str, Any]:
        if not path.is_file():
            raise InputError(
                f"Shard {shard['shard']} of run {shard['run_id']}: file {path} does not exist. "
                "Re-run to_jsonl() and submit the new manifest."
            )
        if _sha256_of(path) != sha:
            raise InputError(
                f"Shard {shard['shard']}: {path} changed since to_jsonl() (its sha256 no longer "
                "matches the manifest). Re-run to_jsonl() and submit the new manifest."
            )
        with path.open("rb") as fh:
            made = c.with_options(max_retries=0).files.create(file=(name, fh), purpose="batch")
        return as_dict(made)

    uploaded = _look_then_post(
        c, look, post, what=f"Uploading {where} ({path})", then=_finish(shard["run_id"])
    )
    reg.record_file(
        uploaded["id"], backend=backend, sha256=sha, filename=name, size=uploaded["bytes"]
    )
    return str(uploaded["id"])


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def create_shard_batch(
    reg: Registry,
    c: openai.OpenAI,
    shard: dict[str, Any],
    *,
    skip: Collection[str] = (),
    force: bool = False,
) -> dict[str, Any] | None:
    """Create the batch of a registered, queued shard (or adopt the one the server has for its
    content) and record it; the batch as a dict, or None when the shard no longer needs one
    (another caller made it meanwhile, or it was cancelled).

    The look-up matches by content (``pb_sha256``, endpoint, model; the backend is the client's)
    whatever run made the batch, so a batch another home made meanwhile is adopted, not paid
    again. Not adopted: failed/cancelled/expired batches, ``skip`` (excluded batch ids), batches
    this registry holds for another shard (this home chose not to hand them back), and with
    ``force`` any batch but this shard's own."""
    run_id, number = shard["run_id"], shard["shard"]
    where = f"shard {number} of run {run_id}"
    with shard_lock(shard["sha256"], shard["backend"], what=f"Shard {number} of run {run_id}"):
        row = reg.shard(run_id, number)
        if row is None or row["status"] != "queued" or row["batch_id"] is not None:
            return None
        since = (row["created_at"] or 0) - CLOCK_SLACK_SECONDS  # covers the last hour too
        seen: list[list[dict[str, Any]]] = [[]]  # the last listing, for the hourly count

        def look() -> list[dict[str, Any]] | None:
            try:
                listed = seen[0] = list_batches(c, since=since)
            except openai.APIError as exc:
                raise SubmitError(
                    f"Looking on the server for the batch of {where} failed "
                    f"({type(exc).__name__}: {exc}). Nothing was created: a batch is created only "
                    f"after the server was seen to have none. {_finish(run_id)}"
                ) from exc
            copies = [b for b in listed if _adoptable(reg, b, row, skip=skip, force=force)]
            return sorted(copies, key=_keep_first) or None

        def post() -> list[dict[str, Any]]:
            file_id = _ensure_file(reg, c, row)
            _wait_for_creation_slot(seen[0], where)
            run = reg.run(run_id) or {}
            made = c.with_options(max_retries=0, timeout=CREATE_TIMEOUT_SECONDS).batches.create(
                input_file_id=file_id,
                endpoint=row["endpoint"],
                completion_window="24h",
                metadata={
                    **_json_dict(run.get("metadata")),
                    "pb_sha256": row["sha256"],
                    "pb_version": __version__,
                    "pb_run_id": run_id,
                    "pb_shard": str(number),
                },
            )
            return [as_dict(made)]

        copies = _look_then_post(
            c,
            look,
            post,
            what=f"Creating the batch of {where}",
            then=_finish(run_id),
            stop_unanswered=True,
        )
        return _record(reg, c, row, copies)


def _adoptable(
    reg: Registry, b: dict[str, Any], row: dict[str, Any], *, skip: Collection[str], force: bool
) -> bool:
    """Whether a listed batch may be recorded as the shard ``row``'s batch instead of creating."""
    md = b.get("metadata") or {}
    if (
        b["status"] in DEAD
        or b["id"] in skip
        or md.get("pb_sha256") != row["sha256"]
        or b.get("endpoint", row["endpoint"]) != row["endpoint"]
        or (b.get("model") or row["model"]) != row["model"]
    ):
        return False
    if md.get("pb_run_id") == row["run_id"] and md.get("pb_shard") == str(row["shard"]):
        return True  # this shard's own (a create whose answer was lost)
    if force:
        return False  # force=True: a new batch even though one with this content exists
    # One this home holds for another shard was not handed back on purpose (its results are
    # gone, or it was forced past); any other (another home's, a lost registry's) is adopted.
    return reg.batch(b["id"]) is None


def _finish(run_id: str) -> str:
    # Not "submit again" alone: with force=True that starts another run, and pays again for the
    # shards this one made before it failed.
    return (
        f"To finish run {run_id} (it looks on the server first): "
        f"pb.poll(pb.resume({run_id!r})), or run submit() again on the same frame without "
        "force=True (force starts another run, which pays again for the shards this one made)."
    )


def _keep_first(b: dict[str, Any]) -> tuple[int, float, str]:
    # The copy furthest along first (a finished one is paid for already), then the oldest.
    return (-PROGRESS.get(b["status"], 0), b.get("created_at") or 0, b["id"])


def _record(
    reg: Registry, c: openai.OpenAI, shard: dict[str, Any], copies: list[dict[str, Any]]
) -> dict[str, Any]:
    """Record the first copy as the shard's batch, then cancel the others."""
    batch, extras = copies[0], [b["id"] for b in copies[1:]]
    where = f"shard {shard['shard']} of run {shard['run_id']}"
    try:
        reg.record_batch(
            batch,
            backend=shard["backend"],
            run_id=shard["run_id"],
            shard=shard["shard"],
            idem_key=shard["idem_key"],
            sha256=shard["sha256"],
        )
    except RegistryError as exc:
        # Nothing may run (and be paid for) without a record of it.
        ours = [batch["id"], *extras]
        failed = {bid: err for bid, err in _cancel_all(c, ours).items() if err}
        then = (
            f"cancelling {', '.join(failed)} failed ({next(iter(failed.values()))}): cancel "
            f"them yourself, or they are billed: client.batches.cancel({next(iter(failed))!r})"
            if failed
            else "they were cancelled (or had already ended), so nothing runs untracked. Fix "
            "the registry (PORTFOLIO_BATCH_HOME) and submit again"
        )
        raise RegistryError(
            f"The batch(es) {', '.join(ours)} of {where} could not be recorded in the job "
            f"registry ({exc}); {then}."
        ) from exc
    if extras:
        log.warning(
            "%s has %d extra cop%s on the server (%s) beside its batch %s: cancelling them",
            where,
            len(extras),
            "y" if len(extras) == 1 else "ies",
            ", ".join(extras),
            batch["id"],
        )
        outcome = _cancel_all(c, extras)
        with _extras_lock:
            _extras[0] += sum(err is None for err in outcome.values())
        failed = {bid: err for bid, err in outcome.items() if err}
        if failed:
            first = next(iter(failed))
            raise SubmitError(
                f"Batch(es) {', '.join(failed)} are extra copies of {where} (its batch is "
                f"{batch['id']}), and cancelling them failed ({failed[first]}). Cancel them "
                f"yourself, or they are billed: client.batches.cancel({first!r})."
            )
    return batch


def _cancel_all(c: openai.OpenAI, batch_ids: list[str]) -> dict[str, str | None]:
    """Try to cancel every batch (one failure does not stop the rest); the error per id."""
    outcome: dict[str, str | None] = {}
    for batch_id in batch_ids:
        try:
            cancel_batch(c, batch_id)
            outcome[batch_id] = None
        except openai.APIError as exc:
            outcome[batch_id] = f"{type(exc).__name__}: {exc}"
    return outcome


def cancel_batch(c: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    """Cancel a batch; one that has already ended (the server refuses to cancel it) is returned
    as it is."""
    try:
        return as_dict(c.batches.cancel(batch_id))
    except (openai.BadRequestError, openai.ConflictError):
        batch = as_dict(c.batches.retrieve(batch_id))
        if batch["status"] in TERMINAL | CANCELLING:
            return batch
        raise


def _json_dict(text: str | None) -> dict[str, str]:
    import orjson

    value = orjson.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def submit_ready(
    reg: Registry,
    c: openai.OpenAI,
    run_ids: Iterable[str],
    *,
    skip: Collection[str] = (),
    force: bool = False,
) -> int:
    """Create the batches of queued shards that fit under their run's ``max_enqueued_tokens``,
    in shard order (``skip``, ``force``: see ``create_shard_batch``). Returns how many were
    created or adopted."""
    created = 0
    now = time.time()
    for run_id in dict.fromkeys(run_ids):
        run = reg.run(run_id) or {}
        limit = run.get("max_enqueued_tokens")
        for shard in reg.shards(run_id):
            if shard["status"] != "queued" or (shard["not_before"] or 0) > now:
                continue
            if limit is not None:
                busy = reg.active_tokens(backend=shard["backend"], model=shard["model"])
                if busy and busy + (shard["est_input_tokens"] or 0) > limit:
                    break  # keep shard order: later shards wait for this one
            if create_shard_batch(reg, c, shard, skip=skip, force=force) is not None:
                created += 1
    return created
