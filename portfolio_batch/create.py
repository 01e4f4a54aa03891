"""Each shard's batch, created exactly once on the server (the server side of ``submit``).

The SDK retries POSTs without an idempotency key, so a retried upload or create may leave
duplicates: after one, ``ServerIndex`` lists what the server holds for the shard's content hash
(file name ``pb-<sha256>.jsonl``, batch ``metadata["pb_sha256"]``) and exactly one copy is kept,
the rest deleted or cancelled. ``submit_ready`` creates the queued shards that fit under their
run's ``max_enqueued_tokens``.

    >>> with open_registry() as reg:                      # doctest: +SKIP
    ...     submit_ready(reg, client, ["run-20261115-103000-ab12cd"])
    1
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import openai

from portfolio_batch._version import __version__
from portfolio_batch.errors import InputError, RegistryError, SubmitError
from portfolio_batch.registry import TERMINAL, Registry

__all__ = ["DEAD", "ServerIndex", "cancel_batch", "create_shard_batch", "submit_ready"]

log = logging.getLogger("portfolio_batch")

# Server-side statuses whose batch must not be reused: a new batch is made instead (an expired
# batch left requests unfinished, like a cancelled one).
DEAD = frozenset({"failed", "cancelled", "cancelling", "expired"})
# How far along a batch is, to choose which of several copies to keep.
PROGRESS = {"validating": 1, "in_progress": 2, "finalizing": 3, "completed": 4, "expired": 4}
# How far back batches.list is read when looking for a batch by its metadata: OpenAI deletes a
# batch's output 30 days after it completes, so an older one cannot be reused anyway.
MAX_LISTED = 10_000
MAX_AGE_SECONDS = 30 * 24 * 3600
# A shard's batch is created by one caller at a time: it holds the shard's ``creating`` time,
# refreshed before the create POST. Another caller takes over only after this long (the holder
# was killed mid-upload or mid-create) and first looks on the server for what it left.
CREATE_LEASE_SECONDS = 15 * 60
# One create POST's time limit: with the SDK's retries it stays far inside the lease, so a
# claim is never taken over while its holder's create can still land.
CREATE_TIMEOUT_SECONDS = 60.0
# ... unless the holder is a process on this machine that has exited (a restarted kernel, a
# kill -9): then only this long after its last step, enough for a create POST it had in flight
# to be acted on by the server, so that the batch it made is found instead of made twice.
DEAD_OWNER_GRACE_SECONDS = 60.0
# ``creating`` of an attempt that ended not knowing whether its create POST made a batch: old
# enough that the next caller takes over at once and looks on the server first.
UNKNOWN_OUTCOME = 1.0


def _file_name(sha256: str) -> str:
    # The upload's name carries the content hash so that files.list can find it again.
    return f"pb-{sha256}.jsonl"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


# -- the server's view -----------------------------------------------------------------------------
class ServerIndex:
    """The server's batches and uploaded files, listed at most once per call and indexed by the
    content hash our metadata and file names carry."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        self._batches: list[dict[str, Any]] | None = None
        self._files: dict[str, list[dict[str, Any]]] | None = None

    def batches(self, *, refresh: bool = False) -> list[dict[str, Any]]:
        if self._batches is None or refresh:
            found: list[dict[str, Any]] = []
            cutoff = time.time() - MAX_AGE_SECONDS
            newest_first = True
            for batch in self.client.batches.list(limit=100):
                b = _dump(batch)
                created = b.get("created_at") or 0
                if found and created > (found[-1].get("created_at") or 0):
                    newest_first = False
                # Listed newest first (OpenAI, the local server): older batches' results are gone.
                if len(found) >= MAX_LISTED or (newest_first and created and created < cutoff):
                    break
                found.append(b)
            self._batches = found
        return self._batches

    def batches_for(
        self, sha256: str, *, run_id: str | None = None, shard: int | None = None
    ) -> list[dict[str, Any]]:
        """Reusable batches (not failed/cancelled/expired) carrying this hash, oldest first."""
        out = []
        for b in self.batches():
            md = b.get("metadata") or {}
            if md.get("pb_sha256") != sha256 or b["status"] in DEAD:
                continue
            if run_id is not None and md.get("pb_run_id") != run_id:
                continue
            if shard is not None and md.get("pb_shard") != str(shard):
                continue
            out.append(b)
        return sorted(out, key=lambda b: (b.get("created_at") or 0, b["id"]))

    def files_named(self, name: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        if self._files is None or refresh:
            index: dict[str, list[dict[str, Any]]] = {}
            for f in self.client.files.list(purpose="batch"):
                d = _dump(f)
                index.setdefault(d.get("filename") or "", []).append(d)
            self._files = index
        return sorted(
            (f for f in self._files.get(name, []) if f.get("status") != "error"),
            key=lambda f: (f.get("created_at") or 0, f["id"]),
        )

    def forget(self) -> None:
        self._batches = None
        self._files = None


# -- one shard -------------------------------------------------------------------------------------
def _ensure_file(reg: Registry, c: openai.OpenAI, index: ServerIndex, shard: dict[str, Any]) -> str:
    """The id of an uploaded copy of the shard's file, uploading it only if none exists."""
    backend, sha = shard["backend"], shard["sha256"]
    for file_id in reg.files_for(backend=backend, sha256=sha):
        try:
            c.files.retrieve(file_id)
            return file_id
        except openai.NotFoundError:
            reg.forget_file(file_id)
    name = _file_name(sha)
    path = Path(shard["path"])
    existing = index.files_named(name)
    if existing:
        found = existing[0]
        reg.record_file(
            found["id"], backend=backend, sha256=sha, filename=name, size=found["bytes"]
        )
        return str(found["id"])
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
    uploaded: dict[str, Any] | None = None
    error: Exception | None = None
    retried = False
    with path.open("rb") as fh:  # streamed by the HTTP client, re-read from 0 on a retry
        try:
            raw = c.files.with_raw_response.create(file=(name, fh), purpose="batch")
            uploaded = _dump(raw.parse())
            retried = raw.retries_taken > 0
        except openai.APIError as exc:
            error, retried = exc, True
    if retried:
        uploaded = _keep_one_file(c, index, name, uploaded)
    if uploaded is None:
        raise SubmitError(
            f"Uploading shard {shard['shard']} ({path}) failed: {error}. Nothing was created; "
            "run submit() again (it is idempotent)."
        ) from error
    reg.record_file(
        uploaded["id"], backend=backend, sha256=sha, filename=name, size=uploaded["bytes"]
    )
    return str(uploaded["id"])


def _keep_one_file(
    c: openai.OpenAI, index: ServerIndex, name: str, returned: dict[str, Any] | None
) -> dict[str, Any] | None:
    copies = index.files_named(name, refresh=True)
    if not copies:
        return returned
    keep = returned if returned and any(f["id"] == returned["id"] for f in copies) else copies[0]
    for extra in copies:
        if extra["id"] != keep["id"]:
            log.info("deleting duplicate upload %s of %s (a retried POST)", extra["id"], name)
            c.files.delete(extra["id"])
    index.forget()
    return keep


class _ClaimLost(Exception):
    """Another caller took this shard's creation over: before our create POST, or by recording
    its batch first."""


def create_shard_batch(
    reg: Registry, c: openai.OpenAI, index: ServerIndex, shard: dict[str, Any]
) -> dict[str, Any] | None:
    """Create the batch of a registered shard (or adopt the one a crashed or retried call made)
    and record it. Returns the batch as a dict, or None when another caller (thread, process)
    is creating it or already has."""
    claimed = reg.claim_creation(
        shard["run_id"],
        shard["shard"],
        lease=CREATE_LEASE_SECONDS,
        dead_owner_grace=DEAD_OWNER_GRACE_SECONDS,
    )
    if claimed is None:
        return None
    attempt = {"posted": False}
    try:
        return _create_claimed(reg, c, index, claimed, attempt)
    except _ClaimLost:
        log.warning(
            "shard %s of run %s: another caller took over its creation (this one was too slow); "
            "leaving it to them",
            shard["shard"],
            shard["run_id"],
        )
        return None
    except BaseException as exc:
        # Release the claim (if still ours), saying whether the next attempt must look for a
        # batch this one may have made (a SubmitError means none exists).
        unknown = attempt["posted"] and not isinstance(exc, SubmitError)
        try:
            reg.refresh_claim(
                shard["run_id"],
                shard["shard"],
                claimed["claimed_by"],
                creating=UNKNOWN_OUTCOME if unknown else None,
            )
        except RegistryError as release_exc:
            log.warning(
                "shard %s of run %s: cannot release its creation claim (%s); another caller "
                "takes over after %d s",
                shard["shard"],
                shard["run_id"],
                release_exc,
                CREATE_LEASE_SECONDS,
            )
        raise


def _create_claimed(
    reg: Registry,
    c: openai.OpenAI,
    index: ServerIndex,
    shard: dict[str, Any],
    attempt: dict[str, bool],
) -> dict[str, Any]:
    run = reg.run(shard["run_id"]) or {}
    metadata = {
        **_json_dict(run.get("metadata")),
        "pb_sha256": shard["sha256"],
        "pb_version": __version__,
        "pb_run_id": shard["run_id"],
        "pb_shard": str(shard["shard"]),
    }
    batch: dict[str, Any] | None = None
    copies: list[dict[str, Any]] = []  # this shard's batches on the server, when listed
    if shard.get("creating"):
        # A previous attempt died between create and record: the batch may exist already, made
        # after the index last listed (poll keeps one index for its whole run), so list again.
        copies = _copies(index, shard)
        batch = _choose(reg, c, shard, copies, None)
    if batch is None:
        file_id = _ensure_file(reg, c, index, shard)
        # Renewed only if still ours: an upload slower than the lease may have been taken over.
        if not reg.refresh_claim(
            shard["run_id"], shard["shard"], shard["claimed_by"], input_file_id=file_id
        ):
            raise _ClaimLost
        error: Exception | None = None
        retried = False
        attempt["posted"] = True
        try:
            # Bounded so that the POST and the SDK's retries end well inside the claim's lease.
            raw = c.with_options(timeout=CREATE_TIMEOUT_SECONDS).batches.with_raw_response.create(
                input_file_id=file_id,
                endpoint=shard["endpoint"],
                completion_window="24h",
                metadata=metadata,
            )
            batch = _dump(raw.parse())
            retried = raw.retries_taken > 0
        except openai.APIError as exc:
            error, retried = exc, True
        if retried:
            # The SDK retries POSTs without an idempotency key: look for every copy made.
            copies = _copies(index, shard)
            batch = _choose(reg, c, shard, copies, batch)
        if batch is None:
            raise SubmitError(
                f"Creating the batch of shard {shard['shard']} (run {shard['run_id']}, file "
                f"{file_id}) failed: {error}. No batch exists for it; run submit() again or "
                f"poll(resume({shard['run_id']!r})) to retry."
            ) from error
    if copies:
        # Copies exist on the server: should anything below fail, the next attempt must list
        # them first rather than POST again.
        attempt["posted"] = True
    try:
        return _record_then_cancel_extras(reg, c, shard, batch, copies)
    finally:
        if copies:
            index.forget()  # its listing shows copies this call cancels


def _record_then_cancel_extras(
    reg: Registry,
    c: openai.OpenAI,
    shard: dict[str, Any],
    batch: dict[str, Any],
    copies: list[dict[str, Any]],
) -> dict[str, Any]:
    """Record ``batch`` as the shard's batch unless another caller recorded one first, then
    cancel every copy that is not the shard's batch. The first batch recorded for a shard wins
    and never changes, so nothing the shard holds is ever cancelled and it is paid for once."""
    try:
        attached = reg.record_batch(
            batch,
            backend=shard["backend"],
            run_id=shard["run_id"],
            shard=shard["shard"],
            idem_key=shard["idem_key"],
            sha256=shard["sha256"],
            only_if_free=True,
        )
    except Exception as exc:
        # Nothing may run (and be paid for) without a record of it: cancel every copy made.
        ours = list(dict.fromkeys(b["id"] for b in [batch, *copies]))
        outcome = _cancel_all(c, ours)
        failed = [bid for bid, err in outcome.items() if err]
        if failed:
            raise RegistryError(
                f"Shard {shard['shard']} of run {shard['run_id']}: batch(es) {', '.join(ours)} "
                f"were created but could not be recorded ({exc}), and cancelling "
                f"{', '.join(failed)} failed ({outcome[failed[0]]}). Cancel them yourself, or "
                f"they are billed: client.batches.cancel({failed[0]!r})."
            ) from exc
        raise RegistryError(
            f"Shard {shard['shard']} of run {shard['run_id']}: batch(es) {', '.join(ours)} were "
            f"created but could not be recorded in the job registry ({exc}); they were "
            "cancelled (or had already ended), so nothing runs untracked. Fix the registry "
            "(PORTFOLIO_BATCH_HOME) and submit again."
        ) from exc
    winner = (
        batch["id"]
        if attached
        else (reg.shard(shard["run_id"], shard["shard"]) or {}).get("batch_id")
    )
    if not attached:
        log.warning(
            "shard %s of run %s: another caller recorded batch %s for it meanwhile; cancelling "
            "the copies this one made",
            shard["shard"],
            shard["run_id"],
            winner,
        )
    extras = list(dict.fromkeys(b["id"] for b in [*copies, batch] if b["id"] != winner))
    outcome = _cancel_all(c, extras)
    failed = [bid for bid, err in outcome.items() if err]
    if failed:
        raise SubmitError(
            f"Batch(es) {', '.join(failed)} are extra copies of shard {shard['shard']} of run "
            f"{shard['run_id']} (its batch is {winner}), and cancelling them failed "
            f"({outcome[failed[0]]}). Cancel them yourself, or they are billed: "
            f"client.batches.cancel({failed[0]!r})."
        )
    if not attached:
        raise _ClaimLost
    return batch


def _cancel_all(c: openai.OpenAI, batch_ids: list[str]) -> dict[str, str | None]:
    """Try to cancel every batch (one failure does not stop the rest); the error per id."""
    outcome: dict[str, str | None] = {}
    for batch_id in batch_ids:
        log.info("cancelling duplicate batch %s", batch_id)
        try:
            cancel_batch(c, batch_id)
            outcome[batch_id] = None
        except openai.APIError as exc:
            outcome[batch_id] = f"{type(exc).__name__}: {exc}"
    return outcome


def _copies(index: ServerIndex, shard: dict[str, Any]) -> list[dict[str, Any]]:
    index.batches(refresh=True)
    return index.batches_for(shard["sha256"], run_id=shard["run_id"], shard=shard["shard"])


def _choose(
    reg: Registry,
    c: openai.OpenAI,
    shard: dict[str, Any],
    copies: list[dict[str, Any]],
    returned: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Which of a shard's batches to record: the one the shard already has (another caller
    took it over and recorded it), else the copy furthest along (a finished one is paid for
    already), else the one the SDK returned, else the oldest. Nothing is cancelled here."""
    attached = (reg.shard(shard["run_id"], shard["shard"]) or {}).get("batch_id")
    if attached:
        known = next((b for b in copies if b["id"] == attached), None)
        return known if known is not None else _dump(c.batches.retrieve(attached))
    if not copies:
        return returned
    returned_id = returned["id"] if returned else None
    return max(
        copies,
        key=lambda b: (
            PROGRESS.get(b["status"], 0),
            b["id"] == returned_id,
            -(b.get("created_at") or 0),
        ),
    )


def cancel_batch(c: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    """Cancel a batch; one that has already ended (the server refuses to cancel it) is returned
    as it is."""
    try:
        return _dump(c.batches.cancel(batch_id))
    except (openai.BadRequestError, openai.ConflictError):
        batch = _dump(c.batches.retrieve(batch_id))
        if batch["status"] in TERMINAL or batch["status"] == "cancelling":
            return batch
        raise


def _json_dict(text: str | None) -> dict[str, str]:
    import orjson

    value = orjson.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


def submit_ready(
    reg: Registry, c: openai.OpenAI, run_ids: Iterable[str], *, index: ServerIndex | None = None
) -> int:
    """Create the batches of queued shards that fit under their run's ``max_enqueued_tokens``,
    in shard order. Returns how many were created."""
    index = index or ServerIndex(c)
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
            if create_shard_batch(reg, c, index, shard) is not None:
                created += 1
    return created
