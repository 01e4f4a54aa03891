"""``BatchClient``: a ``Backend`` dressed as the part of ``openai.OpenAI`` the pipeline uses, so
``submit``, ``poll``, ``aggregate_df``, ``retry_failed``, ``resume``, ``cancel`` and ``start``
run unchanged on any provider.

What a provider does not keep, the facade keeps in the home, under
``home()/providers/<name>/files/`` (files 0600):

- uploaded input files, streamed to ``<sha256>.jsonl`` and keyed by their content
  (``file-<sha256>``), with a ``.json`` record of their name and size;
- one ``batch-<id>.json`` record per batch: its input file, endpoint, model and metadata (which
  Anthropic has no room for), so the creation rule's look-up by ``pb_sha256`` works there too;
- one ``intent-<id>.json`` per create in flight, written before it is sent (input file, sha256,
  request count, display name, metadata, model, endpoint, time sent; time given up once the
  answer is lost) and removed once its batch is recorded: when the create's answer is lost but
  the provider made the batch, ``list`` recognises that batch by it (``BatchClient._adopt_lost``:
  Gemini by its exact display name, Anthropic by request count and creation time) and records
  it, so the creation rule adopts it instead of sending (and paying) again; several Anthropic
  candidates raise a ``SubmitError`` naming them. An Anthropic batch adopted while it runs (no
  custom_ids to read yet) is recorded unconfirmed and checked once it has ended
  (``BatchClient._check_adopted``): without the file's custom_ids it is disowned
  (``foreign-<id>.json``, never cancelled from here) and shows as ``failed``, so ``submit``
  sends the shard again;
- the result files, made from ``Backend.results`` on the first download: the answers to
  ``file-out-<batch id>``, everything else (errored, expired, cancelled) to
  ``file-err-<batch id>``, as OpenAI splits them.

    >>> from portfolio_batch._providers.anthropic import backend
    >>> c = BatchClient(backend(api_key="...", base_url="http://127.0.0.1:8000"))  # doctest: +SKIP
    >>> pb.submit(manifest, client=c)                                             # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx2
import openai
import orjson
from openai.types import Batch, BatchError, BatchRequestCounts, FileObject
from openai.types.batch import Errors

from portfolio_batch._contract import DEAD, TERMINAL
from portfolio_batch._home import home
from portfolio_batch._providers._protocol import Backend, BatchState, status_error
from portfolio_batch.errors import InputError, SubmitError

__all__ = ["BatchClient"]

log = logging.getLogger("portfolio_batch")

_CHUNK = 1 << 20
_lock = threading.Lock()

# A create whose answer was lost (a timeout, a connection cut after sending, a 5xx) may have
# made its batch all the same. Its intent (written before sending) is matched to a listed batch
# that has no record and was created, by the provider's clock, from INTENT_BEFORE_SECONDS before
# the send by ours (our clock ahead of the provider's: NTP keeps them within a second, a minute
# covers a badly set machine) to INTENT_AFTER_SECONDS after the create was given up (a provider
# acting on a request late, our clock behind; from the give-up, not the send, because a 256 MB
# body or a 2 GB Gemini upload can take longer than that to send). A Gemini job with the
# intent's exact name has no upper bound: the name (content and run hash) is the proof. Wider would only make more ambiguous
# candidates, never a wrong adoption: several candidates raise rather than guess.
INTENT_BEFORE_SECONDS = 60
INTENT_AFTER_SECONDS = 15 * 60
# An intent with no candidate this long after its window ended (a listing that lags) made
# nothing: it is removed, so it never matches a later batch.
INTENT_LIST_LAG_SECONDS = 60
INTENT_MAX_AGE_SECONDS = 30 * 24 * 3600


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (a temporary file renamed), mode 0600."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


class _Store:
    """The facade's directory: input files, batch records, result files."""

    def __init__(self, name: str, root: Path | None = None) -> None:
        self.dir = (root or home() / "providers" / name / "files").resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def data(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.jsonl"

    def meta(self, file_id: str) -> Path:
        return self.dir / f"{file_id}.json"

    def record(self, batch_id: str) -> dict[str, Any] | None:
        try:
            value = orjson.loads((self.dir / f"batch-{_safe(batch_id)}.json").read_bytes())
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None

    def save_record(self, batch_id: str, record: dict[str, Any]) -> None:
        _write_private(self.dir / f"batch-{_safe(batch_id)}.json", orjson.dumps(record))

    # A batch adopted after a lost create that its custom_ids then showed was another's: its
    # record is removed and this says why, so it is never adopted again nor taken for ours.
    def foreign(self, batch_id: str) -> dict[str, Any] | None:
        try:
            value = orjson.loads((self.dir / f"foreign-{_safe(batch_id)}.json").read_bytes())
        except FileNotFoundError:
            return None
        return value if isinstance(value, dict) else None

    def disown(self, batch_id: str, why: str) -> None:
        _write_private(
            self.dir / f"foreign-{_safe(batch_id)}.json",
            orjson.dumps({"id": batch_id, "message": why}),
        )
        (self.dir / f"batch-{_safe(batch_id)}.json").unlink(missing_ok=True)

    # A create's intent: written before the create is sent, removed once its answer is recorded.
    def _intent_path(self, intent_id: str) -> Path:
        return self.dir / f"intent-{_safe(intent_id)}.json"

    def save_intent(self, intent: dict[str, Any]) -> None:
        _write_private(self._intent_path(intent["id"]), orjson.dumps(intent))

    def drop_intent(self, intent_id: str) -> None:
        self._intent_path(intent_id).unlink(missing_ok=True)

    def intents(self) -> list[dict[str, Any]]:
        """The intents still open, oldest first (one older than ``INTENT_MAX_AGE_SECONDS`` is
        removed: no batch that old is looked for)."""
        out = []
        for path in self.dir.glob("intent-*.json"):
            try:
                value = orjson.loads(path.read_bytes())
            except FileNotFoundError:  # removed meanwhile (its batch was recorded)
                continue
            if not isinstance(value, dict):
                continue
            if float(value.get("sent_at") or 0) < time.time() - INTENT_MAX_AGE_SECONDS:
                path.unlink(missing_ok=True)
                continue
            out.append(value)
        return sorted(out, key=lambda i: (i.get("sent_at") or 0, i.get("id") or ""))


def _made_nothing(exc: BaseException) -> bool:
    """Whether a failed create surely made no batch: refused (a 4xx, a rate limit included),
    or a connection that could not even be made; not a timeout, a cut connection or a 5xx."""
    if isinstance(exc, InputError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return 400 <= exc.status_code < 500
    return isinstance(exc, openai.APIConnectionError) and isinstance(
        exc.__cause__, (httpx2.ConnectError, httpx2.ConnectTimeout)
    )


def _window_end(intent: dict[str, Any]) -> float:
    """The latest creation time of the intent's batch: ``INTENT_AFTER_SECONDS`` after the create
    was given up (``answered_at``; a create still uploading hundreds of MB makes its batch long
    after it was sent), or after it was sent for an intent that has no such time."""
    return float(intent.get("answered_at") or intent.get("sent_at") or 0) + INTENT_AFTER_SECONDS


def _in_window(intent: dict[str, Any], state: BatchState, *, bounded: bool = True) -> bool:
    start = float(intent.get("sent_at") or 0) - INTENT_BEFORE_SECONDS
    return start <= state.created_at and (not bounded or state.created_at <= _window_end(intent))


def _nearest(intents: list[dict[str, Any]], state: BatchState) -> dict[str, Any]:
    """Of the intents claiming a batch, the one sent closest to its creation."""
    return min(intents, key=lambda i: abs(state.created_at - float(i.get("sent_at") or 0)))


def _ambiguous(
    intent: dict[str, Any],
    found: list[BatchState],
    claimed_by: dict[str, list[dict[str, Any]]],
    provider: str,
) -> SubmitError:
    ids = ", ".join(s.id for s in found)
    others = sorted(
        {str(i.get("display_name")) for s in found for i in claimed_by[s.id] if i is not intent}
    )
    sent = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(intent.get("sent_at") or 0)))
    also = f" (or of {', '.join(others)}, whose create got no answer either)" if others else ""
    md = intent.get("metadata") or {}
    what = (
        f"shard {md['pb_shard']} of run {md['pb_run_id']}"
        if md.get("pb_run_id") and md.get("pb_shard") is not None
        else str(intent.get("display_name"))
    )
    return SubmitError(
        f"The create of the batch of {what} ({intent.get('display_name')}, "
        f"{intent.get('n_requests')} requests) was sent to {provider} at {sent} and got no "
        f"answer; {provider} now has {len(found)} batches with no record here that could be "
        f"it: {ids}{also}. {provider.capitalize()} keeps no metadata, so which one it is cannot "
        "be told while they run, and nothing was sent again. Cancel the one(s) you did not make "
        "(e.g. another tool's batch of the same size): "
        f"pb.client(provider={provider!r}).batches.cancel('<batch id>'); the next submit() then "
        "adopts the one left. Or wait until they have ended: their custom_ids then show which "
        "is this file's, and the next submit() adopts it."
    )


def _safe(ident: str) -> str:
    if not ident or "/" in ident or ident.startswith(".") or "\x00" in ident:
        raise status_error(404, f"No such id {ident!r}.")
    return ident


class _StreamedContent:
    """What ``files.with_streaming_response.content`` yields: a status and the bytes."""

    def __init__(self, path: Path, start: int) -> None:
        self._path, self._start = path, start
        self.status_code = 206 if start else 200

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        with self._path.open("rb") as fh:
            fh.seek(self._start)
            while block := fh.read(chunk_size or _CHUNK):
                yield block


class _Streaming:
    def __init__(self, files: _Files) -> None:
        self._files = files

    @contextmanager
    def content(
        self, file_id: str, *, extra_headers: dict[str, str] | None = None, **_: Any
    ) -> Iterator[_StreamedContent]:
        path = self._files.path_of(file_id)
        start = 0
        rng = (extra_headers or {}).get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = min(int(rng[6:-1] or 0), path.stat().st_size)
        yield _StreamedContent(path, start)


class _Files:
    """``client.files``: uploads kept in the home, result files made from the backend."""

    def __init__(self, owner: BatchClient) -> None:
        self._c = owner
        self.with_streaming_response = _Streaming(self)

    def create(self, *, file: tuple[str, IO[bytes]] | Any, purpose: str, **_: Any) -> FileObject:
        name, fh = file if isinstance(file, tuple) else (getattr(file, "name", "upload"), file)
        store = self._c._store
        digest, size = hashlib.sha256(), 0
        tmp = store.dir / f".upload-{secrets.token_hex(6)}.tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            while block := fh.read(_CHUNK):
                digest.update(block)
                size += len(block)
                out.write(block)
        file_id = f"file-{digest.hexdigest()}"
        os.replace(tmp, store.data(file_id))
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": os.path.basename(str(name)),
            "purpose": purpose,
            "status": "processed",
        }
        _write_private(store.meta(file_id), orjson.dumps(meta))
        return FileObject.model_validate(meta)

    def retrieve(self, file_id: str, **_: Any) -> FileObject:
        path = self.path_of(file_id)
        meta_path = self._c._store.meta(file_id)
        if meta_path.exists():
            return FileObject.model_validate(orjson.loads(meta_path.read_bytes()))
        return FileObject(
            id=file_id,
            object="file",
            bytes=path.stat().st_size,
            created_at=int(path.stat().st_mtime),
            filename=path.name,
            purpose="batch_output",
            status="processed",
        )

    def list(self, *, purpose: str | None = None, **_: Any) -> list[FileObject]:
        out = []
        for meta in sorted(self._c._store.dir.glob("file-*.json")):
            obj = orjson.loads(meta.read_bytes())
            if purpose is None or obj.get("purpose") == purpose:
                out.append(FileObject.model_validate(obj))
        return sorted(out, key=lambda f: -f.created_at)

    def path_of(self, file_id: str) -> Path:
        """The file's data on disk; a result file is made from the backend's results first."""
        store = self._c._store
        path = store.data(_safe(file_id))
        if path.exists():
            return path
        for prefix in ("file-out-", "file-err-"):
            if file_id.startswith(prefix):
                self._c._materialise(file_id[len(prefix) :])
                if path.exists():
                    return path
        raise status_error(404, f"No such File object: {file_id}")


class _Batches:
    """``client.batches`` over the backend."""

    def __init__(self, owner: BatchClient) -> None:
        self._c = owner

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        **_: Any,
    ) -> Batch:
        c = self._c
        path = c.files.path_of(input_file_id)
        meta = c.files.retrieve(input_file_id)
        requests, model, size, first, last = [], None, 0, None, None
        limits = c.backend.limits
        id_rule = re.compile(limits.id_pattern)
        with path.open("rb") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                size += len(raw)
                line = orjson.loads(raw)
                cid = line.get("custom_id")
                if not isinstance(cid, str) or not id_rule.fullmatch(cid):
                    raise InputError(
                        f"custom_id {cid!r} ({meta.filename}) does not match {c.backend.name}'s "
                        f"rule {limits.id_pattern}; nothing was sent. Build the requests with "
                        "this version's build_requests (its ids fit every provider)."
                    )
                model = model or (line.get("body") or {}).get("model")
                first, last = first or cid, cid
                requests.append(c.backend.prepare(line))
        if len(requests) > limits.max_requests or size > limits.max_bytes:
            raise status_error(
                400,
                f"{meta.filename} has {len(requests):,} requests ({size:,} bytes); a "
                f"{c.backend.name} batch takes at most {limits.max_requests:,} requests and "
                f"{limits.max_bytes:,} bytes. Make smaller shards with to_jsonl(..., "
                f"max_requests={limits.max_requests}).",
            )
        record = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "model": model,
            "metadata": dict(metadata or {}),
            "completion_window": completion_window,
            "cancel_requested": False,
        }
        # Written before sending: if the answer is lost, the batch the provider made all the
        # same is recognised by it (BatchClient._adopt_lost), not sent and paid again.
        namer = getattr(c.backend, "display_name_for", None)
        intent_id = f"{int(time.time())}-{secrets.token_hex(6)}"
        intent = {
            **record,
            "id": intent_id,
            "sha256": input_file_id.removeprefix("file-"),
            "n_requests": len(requests),
            "display_name": meta.filename,
            "shown_name": namer(requests, meta.filename) if namer is not None else None,
            "first_custom_id": first,
            "last_custom_id": last,
            "sent_at": time.time(),
        }
        c._store.save_intent(intent)
        try:
            state = c.backend.submit(requests, display_name=meta.filename)
        except BaseException as exc:
            if _made_nothing(exc):
                c._store.drop_intent(intent_id)
            else:  # a slow upload makes its batch late: the window runs from when we gave up
                c._store.save_intent({**intent, "answered_at": time.time()})
            raise
        record = {"id": state.id, **record}
        c._store.save_record(state.id, record)
        c._store.drop_intent(intent_id)
        return c._batch(state, record)

    def retrieve(self, batch_id: str, **_: Any) -> Batch:
        c = self._c
        state = c.backend.status(batch_id)
        foreign = c._store.foreign(batch_id)
        if foreign is not None:
            return c._foreign_batch(state, foreign)
        record = c._store.record(batch_id)
        if record is None and c._store.intents():
            c._adopt_lost(c._listed_for_intents()[0], strict=False)
            record = c._store.record(batch_id)
        return c._batch(state, c._check_adopted(state, record))

    def list(self, *, limit: int | None = None, **_: Any) -> Iterator[Batch]:
        """The provider's batches, newest first. A batch with no record that is the batch of a
        create whose answer was lost gets its record first (``BatchClient._adopt_lost``), so the
        creation rule finds it by ``pb_sha256``; ``SubmitError`` when that cannot be told."""
        c = self._c
        window, rest = c._listed_for_intents()
        c._adopt_lost(window, strict=True)
        for state in itertools.chain(window, rest):
            yield c._batch(state, c._check_adopted(state, c._store.record(state.id)))

    def cancel(self, batch_id: str, **_: Any) -> Batch:
        c = self._c
        foreign = c._store.foreign(batch_id)
        if foreign is not None:  # another's batch, once taken for ours: never cancelled from here
            log.warning("not cancelling batch %s: %s", batch_id, foreign["message"])
            return c._foreign_batch(c.backend.status(batch_id), foreign)
        record = c._store.record(batch_id)
        if record is not None:
            c._store.save_record(batch_id, {**record, "cancel_requested": True})
            if (record.get("adopted") or {}).get("confirmed") is False:
                log.warning(
                    "cancelling %s batch %s, taken for the batch of %s whose create got no "
                    "answer by its size and creation time alone (its custom_ids cannot be read "
                    "before it ends): if it is another run's batch of the same size on this "
                    "key, that run is cancelled too",
                    c.backend.name,
                    batch_id,
                    (record.get("adopted") or {}).get("display_name"),
                )
        state = c.backend.cancel(batch_id)
        return c._batch(state, c._store.record(batch_id))


class BatchClient:
    """The subset of ``openai.OpenAI`` the pipeline calls, over a ``Backend``.

    ``label`` is the backend's name in the registry and idempotency key (``_backend.backend_name``);
    ``simulated_engine`` names the local engine when the backend is the embedded local server,
    so its answers are marked simulated like every local answer.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        label: str | None = None,
        simulated_engine: str | None = None,
        store_dir: Path | None = None,
    ) -> None:
        self.backend = backend
        self.label = label or backend.name
        self.simulated_engine = simulated_engine
        self.base_url = httpx2.URL(backend.base_url.rstrip("/") + "/")
        self.max_retries = backend.max_retries
        self._store = _Store(backend.name, store_dir)
        self.files = _Files(self)
        self.batches = _Batches(self)

    def __repr__(self) -> str:
        return f"<BatchClient {self.label} at {self.base_url}>"

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None, **_: Any
    ) -> BatchClient:
        return BatchClient(
            self.backend.with_options(max_retries=max_retries, timeout=timeout),
            label=self.label,
            simulated_engine=self.simulated_engine,
            store_dir=self._store.dir,
        )

    def discover(self, run_hash: str) -> list[str]:
        """The provider's batches whose custom_ids carry ``run_hash`` (no local record needed)."""
        return self.backend.discover(run_hash)

    def recover(self, run_hash: str) -> list[Batch]:
        """The batches of the run whose custom_ids end in ``-{run_hash}``, found on the provider
        (``Backend.discover``) when this home has no record of them (another machine, a deleted
        home): ``_submit.resume`` calls it with a run hash.

        A batch without a record gets one rebuilt from what the provider still has, marked
        ``"recovered"``: endpoint ``/v1/chat/completions`` (the only one these providers take),
        the answering model, the number of requests and the first and last custom_id, read
        from its results (written to the result files on the way, so ``aggregate_df`` reads
        them without a second download). The run id becomes the run hash and the shards are
        numbered in the order the batches were created. Not recoverable: the run id, the
        user's metadata, the input file and its sha256 (so ``submit`` of the same manifest
        cannot prove it is the same content and sends it again). Anthropic shows no custom_ids
        before a batch ends, so a batch still in progress is not found (``discover`` logs it).

            >>> jobs = pb.resume(requests.attrs["prompt_version"])   # doctest: +SKIP
        """
        # discover lists newest first, finer than created_at's seconds: reversed, oldest first
        found = reversed(list(dict.fromkeys(self.backend.discover(run_hash))))
        states = sorted((self.backend.status(i) for i in found), key=lambda st: st.created_at)
        if self._store.intents():  # a lost create's batch gets the record it was sent with
            self._adopt_lost(self._listed_for_intents()[0], strict=False)
        out = []
        for shard, state in enumerate(states):
            record = self._store.record(state.id)
            if record is None:
                record = self._rebuilt_record(state, run_hash, shard)
                self._store.save_record(state.id, record)
            out.append(self._batch(state, record))
        return out

    def _rebuilt_record(self, state: BatchState, run_hash: str, shard: int) -> dict[str, Any]:
        """The record of a batch found by ``discover`` (see ``recover``)."""
        ids: list[str] = []
        model = None
        if state.status in TERMINAL:
            self._materialise(state.id)
            for file_id in (f"file-out-{state.id}", f"file-err-{state.id}"):
                path = self._store.data(file_id)
                if not path.exists():
                    continue
                with path.open("rb") as fh:
                    for raw in fh:
                        line = orjson.loads(raw)
                        ids.append(line["custom_id"])
                        body = (line.get("response") or {}).get("body") or {}
                        model = model or body.get("model")
        return {
            "id": state.id,
            "input_file_id": "",
            "endpoint": "/v1/chat/completions",
            "model": model,
            "metadata": {"pb_run_id": run_hash, "pb_shard": str(shard)},
            "completion_window": "24h",
            "cancel_requested": state.cancel_requested,
            "recovered": {
                "by": "discover",
                "run_hash": run_hash,
                "n_requests": state.total,
                "first_custom_id": min(ids) if ids else None,
                "last_custom_id": max(ids) if ids else None,
            },
        }

    # -- creates whose answer was lost ------------------------------------------------------------
    def _listed_for_intents(self) -> tuple[list[BatchState], Iterator[BatchState]]:
        """The backend's listing split in two: the batches down to the oldest open intent's
        window (read now; none without an open intent), and an iterator over the rest."""
        states = iter(self.backend.list())
        intents = self._store.intents()
        if not intents:
            return [], states
        floor = min(float(i.get("sent_at") or 0) for i in intents) - INTENT_BEFORE_SECONDS
        window: list[BatchState] = []
        for state in states:  # newest first: past the floor, none can be an intent's batch
            window.append(state)
            if state.created_at < floor:
                break
        return window, states

    def _adopt_lost(self, states: list[BatchState], *, strict: bool) -> None:
        """Write the record of each batch in ``states`` that has none but is the batch of an
        open intent (a create whose answer was lost), from the intent: its metadata (with
        ``pb_sha256``), model, endpoint and input file.

        A candidate has no record, is not cancelled, dead or disowned, and was created from
        ``INTENT_BEFORE_SECONDS`` before the intent's send; on Gemini it carries the intent's
        exact display name (content hash and run hash: every candidate is a copy of the same
        requests, so all are adopted and the creation rule keeps one, cancelling the others).
        On Anthropic, which keeps no name, it was created at most ``INTENT_AFTER_SECONDS``
        after the create was given up (``_window_end``), has the intent's number of requests,
        and once ended its first result's custom_id must be one of the input file's. One
        candidate claimed by this intent alone, or candidates all confirmed by their
        custom_ids, are adopted (the first unconfirmed while it runs: ``_check_adopted``);
        anything else is ambiguous: with ``strict`` a ``SubmitError`` naming the candidates
        (nothing is sent until a person decides), else left as it is. An intent with no
        candidate past its window is removed.
        """
        intents = self._store.intents()
        if not intents:
            return
        orphans = [
            s
            for s in states
            if s.status not in DEAD
            and not s.cancel_requested
            # a provider that keeps metadata (compatible.JobState) shows it on the batch the
            # lost create made: the creation rule finds that one by it, so none is guessed at
            and not hasattr(s, "metadata")
            and self._store.record(s.id) is None
            and self._store.foreign(s.id) is None
        ]
        confirmed: dict[tuple[str, str], bool | None] = {}
        claims = {i["id"]: self._candidates(i, orphans, confirmed) for i in intents}
        claimed_by: dict[str, list[dict[str, Any]]] = {}
        for intent in intents:
            for state in claims[intent["id"]]:
                claimed_by.setdefault(state.id, []).append(intent)
        # past an intent's window by our clock, or by the provider's (a batch listed as made
        # later): nothing it could still make would fall in its window
        now = max([time.time(), *(s.created_at for s in states)])
        for intent in intents:
            found = claims[intent["id"]]
            if not found:
                if now > _window_end(intent) + INTENT_LIST_LAG_SECONDS:
                    self._store.drop_intent(intent["id"])  # it made nothing
                continue
            by_name = bool(intent.get("shown_name")) and found[0].display_name is not None
            sure = all(confirmed.get((intent["id"], s.id)) for s in found)
            alone = all(len(claimed_by[s.id]) == 1 for s in found)
            if by_name or sure or (len(found) == 1 and alone):
                for state in found:
                    if _nearest(claimed_by[state.id], state)["id"] == intent["id"]:
                        self._adopt(intent, state, confirmed=by_name or sure)
                self._store.drop_intent(intent["id"])
            elif strict:
                raise _ambiguous(intent, found, claimed_by, self.backend.name)

    def _candidates(
        self,
        intent: dict[str, Any],
        orphans: list[BatchState],
        confirmed: dict[tuple[str, str], bool | None],
    ) -> list[BatchState]:
        """The batches of ``orphans`` that may be the intent's (see ``_adopt_lost``);
        ``confirmed`` gets, per (intent, batch) matched by count, what its custom_ids say."""
        found = []
        for state in orphans:
            if intent.get("shown_name") and state.display_name is not None:
                # the exact name (content and run hash) is the proof: no upper bound
                if state.display_name == intent["shown_name"] and _in_window(
                    intent, state, bounded=False
                ):
                    found.append(state)
                continue
            if not _in_window(intent, state):
                continue
            if state.total != intent.get("n_requests"):
                continue
            ok = self._confirmed(intent, state)
            if ok is not False:
                confirmed[intent["id"], state.id] = ok
                found.append(state)
        return found

    def _confirmed(self, intent: dict[str, Any], state: BatchState) -> bool | None:
        """Whether an ended batch's first result's custom_id is one of the intent's input file
        (None: not ended, results gone, or the input file no longer here)."""
        path = self._store.data(str(intent.get("input_file_id") or ""))
        if state.ended_at is None or not path.exists():
            return None
        results = self.backend.results(state.id)
        try:
            line = next(iter(results), None)
        except openai.NotFoundError:
            return None
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        if line is None:
            return None
        cid = line.get("custom_id")
        with path.open("rb") as fh:
            return any(orjson.loads(raw).get("custom_id") == cid for raw in fh if raw.strip())

    def _adopt(self, intent: dict[str, Any], state: BatchState, *, confirmed: bool) -> None:
        """Record ``state`` as the intent's batch; ``confirmed`` False when only its size and
        creation time say so (``_check_adopted`` reads its custom_ids once it has ended)."""
        record = {
            "id": state.id,
            **{
                k: intent.get(k)
                for k in ("input_file_id", "endpoint", "model", "metadata", "completion_window")
            },
            "cancel_requested": False,
            "adopted": {
                "intent": intent["id"],
                "sent_at": intent.get("sent_at"),
                "confirmed": confirmed,
                "n_requests": intent.get("n_requests"),
                "display_name": intent.get("display_name"),
            },
        }
        remember = getattr(self.backend, "remember", None)
        path = self._store.data(str(intent.get("input_file_id") or ""))
        if remember is not None and path.exists():
            with path.open("rb") as fh:
                keys = [orjson.loads(raw)["custom_id"] for raw in fh if raw.strip()]
            remember(state.id, keys)
        self._store.save_record(state.id, record)
        log.warning(
            "%s batch %s is the batch of %s whose create got no answer (sent at %s): recorded "
            "with its metadata, not sent again",
            self.backend.name,
            state.id,
            intent.get("display_name"),
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(intent.get("sent_at") or 0))),
        )

    def _check_adopted(
        self, state: BatchState, record: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The record of ``state``, its adoption confirmed once it has ended when only its size
        and creation time made it ours (Anthropic, while it ran: another run on the same key
        can make a batch of the same size in the same minutes): its request count and first
        result's custom_id must be its input file's. If they are not, it is another's batch:
        its record is removed (``_Store.disown``) and ``SubmitError`` says so."""
        adopted = (record or {}).get("adopted") or {}
        if record is None or adopted.get("confirmed", True) or state.status not in TERMINAL:
            return record
        ok = state.total == adopted.get("n_requests") and self._confirmed(record, state)
        if ok is None:  # results or input file gone: nothing to read, still unconfirmed
            return record
        if ok:
            record = {**record, "adopted": {**adopted, "confirmed": True}}
            self._store.save_record(state.id, record)
            return record
        md = record.get("metadata") or {}
        what = (
            f"shard {md['pb_shard']} of run {md['pb_run_id']}"
            if md.get("pb_run_id") and md.get("pb_shard") is not None
            else "the shard"
        )
        touched = (
            "it was cancelled from here while taken for ours: tell whoever made it"
            if record.get("cancel_requested")
            else "nothing of it was touched"
        )
        why = (
            f"{self.backend.name} batch {state.id} was taken for the batch of {what} "
            f"({adopted.get('display_name')}, input file {record.get('input_file_id')}) whose "
            "create got no answer, by its size and creation time alone; now it has ended, its "
            "custom_ids are not that file's: it is another run's batch on this key, not ours. "
            f"Its record here is removed and {touched}. The shard's requests were never sent: "
            "submit() the manifest again to send them."
        )
        self._store.disown(state.id, why)
        raise SubmitError(why)

    def _foreign_batch(self, state: BatchState, foreign: dict[str, Any]) -> Batch:
        """A disowned batch (``_check_adopted``) as a failed ``Batch`` with no result files,
        so the shard that took it is no longer live and ``submit`` sends it again."""
        return self._batch(state, None).model_copy(
            update={
                "status": "failed",
                "failed_at": state.ended_at or state.created_at,
                "completed_at": None,
                "cancelled_at": None,
                "expired_at": None,
                "output_file_id": None,
                "error_file_id": None,
                "errors": Errors(
                    object="list",
                    data=[BatchError(code="not_this_shards_batch", message=foreign["message"])],
                ),
            }
        )

    # -- mapping --------------------------------------------------------------------------------
    def _batch(self, state: BatchState, record: dict[str, Any] | None) -> Batch:
        """A ``BatchState`` (and the facade's record of the batch) as an OpenAI ``Batch``."""
        rec = record or {}
        ended = state.status in TERMINAL
        when = state.ended_at if ended else None
        return Batch(
            id=state.id,
            object="batch",
            endpoint=rec.get("endpoint") or "/v1/chat/completions",
            model=rec.get("model"),
            input_file_id=rec.get("input_file_id") or "",
            completion_window=rec.get("completion_window") or "24h",
            status=state.status,  # type: ignore[arg-type]
            created_at=state.created_at,
            in_progress_at=state.created_at,
            expires_at=state.expires_at,
            cancelling_at=None if not state.cancel_requested else (state.ended_at or None),
            completed_at=when if state.status == "completed" else None,
            expired_at=when if state.status == "expired" else None,
            cancelled_at=when if state.status == "cancelled" else None,
            failed_at=when if state.status == "failed" else None,
            output_file_id=f"file-out-{state.id}" if ended and state.succeeded else None,
            error_file_id=f"file-err-{state.id}" if ended and state.failed else None,
            metadata=rec.get("metadata") or None,
            request_counts=BatchRequestCounts(
                total=state.total, completed=state.succeeded, failed=state.failed
            ),
        )

    def _materialise(self, batch_id: str) -> None:
        """Write the ended batch's result files from ``Backend.results``, streamed (once: a
        marker file says both were written)."""
        store = self._store
        done = store.dir / f"batch-{_safe(batch_id)}.results"
        ids = (f"file-out-{batch_id}", f"file-err-{batch_id}")
        with _lock:
            if done.exists():
                return
            state = self.backend.status(batch_id)
            if state.status not in TERMINAL:
                raise status_error(
                    404, f"Batch {batch_id} is still {state.status}: no result files yet."
                )
            foreign = store.foreign(batch_id)
            if foreign is not None:
                raise SubmitError(foreign["message"])
            self._check_adopted(state, store.record(batch_id))
            fingerprint = f"fp_local_{self.simulated_engine}" if self.simulated_engine else None
            tmps = [store.dir / f".{i}.{secrets.token_hex(4)}.tmp" for i in ids]
            outs = [
                os.fdopen(os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
                for t in tmps
            ]
            counts = [0, 0]
            try:
                for line in self.backend.results(batch_id):
                    resp = line.get("response") or {}
                    ok = resp.get("status_code") == 200
                    body = resp.get("body")
                    if ok and fingerprint is not None and isinstance(body, dict):
                        body["system_fingerprint"] = fingerprint
                    outs[0 if ok else 1].write(orjson.dumps(line) + b"\n")
                    counts[0 if ok else 1] += 1
            finally:
                for fh in outs:
                    fh.close()
            for tmp, file_id, n in zip(tmps, ids, counts, strict=True):
                if n:
                    os.replace(tmp, store.data(file_id))
                else:
                    tmp.unlink()
            _write_private(done, b"")
