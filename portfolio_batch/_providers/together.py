"""Together AI's Batch API as a ``Backend`` (``_protocol``), over its REST API with ``httpx2``.

Together's API (docs.together.ai reference: upload-file, batch-create, batch-cancel; the
``together`` SDK's ``types/batch.py``): the input is a JSONL file of ``{custom_id, body}`` lines
uploaded by ``POST /v1/files/upload`` (multipart ``file``, ``file_name``, ``purpose=batch-api``,
``file_type=jsonl``), a batch is ``POST /v1/batches`` ``{input_file_id, endpoint,
completion_window, model_id}`` answered as ``{"job": {...}, "warning"}``, read by
``GET /v1/batches/{id}`` (``status`` VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED,
CANCELLED, CANCELING; ``progress``, ``output_file_id``, ``error_file_id``, ``error``, ISO
times), listed by ``GET /v1/batches`` (a JSON array) and cancelled by
``POST /v1/batches/{id}/cancel``; files are read by ``GET /v1/files/{id}/content``. Limits:
50,000 requests and 100 MB a batch, custom_ids up to 64 characters (providers.md).

What Together does not give, and how it is made up (assumed where no source says):

- no request counts: ``status`` counts from the batch's files. A running batch shows all its
  requests as ``processing`` (its input file's lines, read once per process); an ended one is
  tallied from its output and error files (read once per process). ``list`` shows no counts
  (a download per batch; a listing is for finding batches by their metadata). Lines in those files are
  taken to be OpenAI's output shape ``{custom_id, response: {status_code, body}, error}``
  (assumed: Together documents them as OpenAI-compatible, not field by field).
- no metadata: the input file's name carries it instead,
  ``pbrun-<run hash>-<the facade's file name, pb-<sha256>.jsonl>``, so ``list`` shows
  ``metadata["pb_sha256"]`` of each batch (one file look-up per batch, cached) and the creation
  rule finds a batch whose create got no answer; ``discover`` finds a run's batches, running or
  ended, by the run hash in that name.

``TOGETHER_BASE_URL`` is the API root with its ``/v1`` (default ``https://api.together.xyz/v1``).

    >>> b = backend(api_key="...", base_url="http://127.0.0.1:8000/together/v1")
    >>> b.prepare({"custom_id": "risk-KO-1", "method": "POST", "url": "/v1/chat/completions",
    ...            "body": {"model": "m", "max_tokens": 5, "messages": []}})
    {'custom_id': 'risk-KO-1', 'body': {'model': 'm', 'max_tokens': 5, 'messages': []}}
"""

from __future__ import annotations

import builtins
import re
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import openai
import orjson

from portfolio_batch._contract import TERMINAL
from portfolio_batch._providers._protocol import status_error
from portfolio_batch._providers.compatible import (
    PROVIDERS,
    JobState,
    MetadataBatchClient,
    Rest,
    UnknownStatusError,
    result_line,
    unrun_line,
)
from portfolio_batch.errors import InputError

__all__ = [
    "BASE_URL_VAR",
    "CLIENT",
    "DEFAULT_BASE_URL",
    "KEY_VARS",
    "LOCAL_PATH",
    "TogetherBackend",
    "backend",
    "batch_status",
]

SPEC = PROVIDERS["together"]
KEY_VARS = SPEC.key_vars
BASE_URL_VAR = SPEC.base_url_var
DEFAULT_BASE_URL = SPEC.base_url
LOCAL_PATH = "/together/v1"  # where the embedded local server answers as Together
CLIENT = MetadataBatchClient  # shows the metadata rebuilt from the input file's name
LIMITS = SPEC.limits
assert LIMITS is not None
ENDPOINT = "/v1/chat/completions"

_STATUS = {
    "VALIDATING": "validating",
    "IN_PROGRESS": "in_progress",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "EXPIRED": "expired",
    "CANCELLED": "cancelled",
    "CANCELING": "cancelling",
}
_NAME = re.compile(r"^pbrun-(?P<run>[^-]+)-(?P<rest>.*)$")
_SHA = re.compile(r"pb-(?P<sha>[0-9a-f]{64})\.jsonl$")
# per process, keyed by (base url, id): file names, input line counts, ended batches' tallies
_cache: dict[tuple[str, str, str], Any] = {}
_cache_lock = threading.Lock()


def backend(
    *,
    api_key: str,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float | None = None,
) -> TogetherBackend:
    """The Together backend for a key (``base_url``: another endpoint, e.g. the local server's
    ``<root>/together/v1``)."""
    return TogetherBackend(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
    )


def batch_status(status: str, *, batch_id: str | None = None) -> str:
    """Our batch status of a Together batch status.

    >>> batch_status("CANCELING"), batch_status("COMPLETED")
    ('cancelling', 'completed')
    """
    try:
        return _STATUS[status]
    except KeyError:
        raise UnknownStatusError("Together", batch_id, status) from None


def _unattached(job: Mapping[str, Any]) -> bool:
    """Whether the batch says COMPLETED before its files are attached (OpenAI does this).
    Together shows no counts, so a batch whose every request failed (an error file alone) is
    told apart only by having neither file."""
    return str(job.get("status")) == "COMPLETED" and not (
        job.get("output_file_id") or job.get("error_file_id")
    )


def _instant(value: Any) -> float | None:
    """A time Together writes (RFC 3339, or epoch seconds) as epoch seconds, to the microsecond."""
    if value in (None, ""):
        return None
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _seconds(value: Any) -> int | None:
    instant = _instant(value)
    return None if instant is None else int(instant)


class TogetherBackend:
    """Together's Batch API through its REST API (see the module docstring)."""

    name = "together"
    limits = LIMITS

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout: float | None = None,
    ) -> None:
        self._key, self._timeout = api_key, timeout
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.max_retries = max_retries
        self._rest = Rest(
            api_key=api_key,
            base_url=self.base_url,
            max_retries=max_retries,
            timeout=timeout,
            spec=SPEC,
        )
        self.pending_metadata: dict[str, str] = {}  # Together keeps none (see the module)

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> TogetherBackend:
        return TogetherBackend(
            api_key=self._key,
            base_url=self.base_url,
            max_retries=self.max_retries if max_retries is None else max_retries,
            timeout=self._timeout if timeout is None else timeout,
        )

    # -- requests ------------------------------------------------------------------------------
    def prepare(self, line: Mapping[str, Any]) -> dict[str, Any]:
        """One OpenAI chat-completions batch line -> Together's ``{"custom_id", "body"}`` (the
        body as it is: Together's chat completions take OpenAI's parameters)."""
        cid = line.get("custom_id")
        url = str(line.get("url") or "")
        if url not in ("/v1/chat/completions", "/chat/completions"):
            raise InputError(
                f"custom_id {cid!r}: this Together batch runs chat requests; this line is for "
                f"{url!r}. Build the requests with endpoint='/v1/chat/completions'."
            )
        body = dict(line.get("body") or {})
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise InputError(f"custom_id {cid!r}: the request names no model.")
        return {"custom_id": cid, "body": body}

    # -- batches -------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Any], *, display_name: str) -> JobState:
        """Upload the lines under a name carrying the run hash and the content's sha256, then
        create the batch."""
        run_hash = str(requests[0]["custom_id"]).rsplit("-", 1)[-1] if requests else "none"
        name = f"pbrun-{run_hash}-{display_name}"
        # streamed through a temporary file, not held whole in memory (a retry re-reads it)
        with tempfile.TemporaryFile() as fh:
            for r in requests:
                fh.write(orjson.dumps(r) + b"\n")
            fh.seek(0)
            uploaded = self._rest.json(
                "POST",
                "/files/upload",
                files={"file": (name, fh, "application/jsonl")},
                data={"purpose": "batch-api", "file_name": name, "file_type": "jsonl"},
            )
        self._remember("name", uploaded["id"], name)
        self._remember("lines", uploaded["id"], len(requests))
        answer = self._rest.json(
            "POST",
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": ENDPOINT,
                "completion_window": "24h",
                "model_id": requests[0]["body"]["model"] if requests else None,
            },
        )
        job = answer.get("job", answer) if isinstance(answer, Mapping) else answer
        return self._state(job)

    def status(self, batch_id: str) -> JobState:
        return self._state(self._rest.json("GET", f"/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> JobState:
        self._rest.call("POST", f"/batches/{batch_id}/cancel")
        return self.status(batch_id)

    def list(self) -> Iterator[JobState]:
        """The key's batches, newest first (Together answers one array; sorted here)."""
        answer = self._rest.json("GET", "/batches")
        jobs = answer.get("data", []) if isinstance(answer, Mapping) else answer or []
        # by the creation time to the microsecond (created_at in whole seconds ties batches
        # made in one second); a tie: the later in Together's array first (assumed: its
        # array is in creation order, as the local server's)
        newest = sorted(
            enumerate(jobs),
            key=lambda p: (_instant(p[1].get("created_at")) or 0.0, p[0]),
            reverse=True,
        )
        # no counts here (they cost a download per batch, and a listing is for finding
        # batches): status() gives them
        for _, job in newest:
            yield self._state(job, counted=False)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The ended batch's output and error lines, then one line for each request that has
        neither (not run), from its input file."""
        job = self._rest.json("GET", f"/batches/{batch_id}")
        if _unattached(job):
            # a 404, as for a batch still running: the facade caches nothing, a later read works
            raise status_error(
                404,
                f"Together batch {batch_id} is COMPLETED but has no result file yet; read its "
                "results again in a few minutes.",
            )
        yield from self._lines(job)

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Batches whose input file's name carries ``run_hash`` (see the module), newest first."""
        return [s.id for s in self.list() if (s.metadata or {}).get("pb_run_hash") == run_hash]

    # -- helpers -------------------------------------------------------------------------------
    def _lines(self, job: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        batch_id = str(job["id"])
        status = batch_status(str(job["status"]), batch_id=batch_id)
        seen: set[str] = set()
        for key in ("output_file_id", "error_file_id"):
            if job.get(key):
                for line in self._rest.lines(f"/files/{job[key]}/content"):
                    out = result_line(line, batch_id)
                    seen.add(out["custom_id"])
                    yield out
        if job.get("input_file_id"):
            for line in self._rest.lines(f"/files/{job['input_file_id']}/content"):
                cid = str(line.get("custom_id"))
                if cid not in seen:
                    seen.add(cid)
                    yield unrun_line(cid, batch_id, status)

    def _remember(self, kind: str, ident: str, value: Any) -> None:
        with _cache_lock:
            _cache[(self.base_url, kind, ident)] = value

    def _recall(self, kind: str, ident: str) -> Any:
        with _cache_lock:
            return _cache.get((self.base_url, kind, ident))

    def _file_name(self, file_id: str) -> str:
        name = self._recall("name", file_id)
        if name is None:
            try:
                name = str(self._rest.json("GET", f"/files/{file_id}").get("filename") or "")
            except openai.NotFoundError:
                name = ""  # deleted: the batch shows no metadata
            self._remember("name", file_id, name)
        return str(name)

    def _counts(self, job: Mapping[str, Any], status: str) -> tuple[int, int, int, int, int]:
        """(succeeded, errored, expired, cancelled, processing) of a batch (see the module)."""
        batch_id, input_id = str(job["id"]), str(job.get("input_file_id") or "")
        if status not in TERMINAL or _unattached(job):  # not counted (nor cached) before then
            total = self._recall("lines", input_id)
            if total is None and input_id:
                total = sum(1 for _ in self._rest.lines(f"/files/{input_id}/content"))
                self._remember("lines", input_id, total)
            return 0, 0, 0, 0, int(total or 0)
        tally = self._recall("tally", batch_id)
        if tally is None:
            ok = errored = expired = cancelled = 0
            for line in self._lines(job):
                code = (line.get("error") or {}).get("code")
                if (line.get("response") or {}).get("status_code") == 200:
                    ok += 1
                elif code == "batch_expired":
                    expired += 1
                elif code == "batch_cancelled":
                    cancelled += 1
                else:
                    errored += 1
            tally = (ok, errored, expired, cancelled, 0)
            self._remember("tally", batch_id, tally)
        return tally  # type: ignore[no-any-return]

    def _state(self, job: Mapping[str, Any], *, counted: bool = True) -> JobState:
        status = batch_status(str(job["status"]), batch_id=str(job.get("id")))
        ok, errored, expired, cancelled, processing = (
            self._counts(job, status) if counted else (0, 0, 0, 0, 0)
        )
        created = _seconds(job.get("created_at")) or 0
        metadata = None
        match = _NAME.match(self._file_name(str(job.get("input_file_id") or "")))
        if match:
            metadata = {"pb_run_hash": match["run"]}
            sha = _SHA.search(match["rest"])
            if sha:
                metadata["pb_sha256"] = sha["sha"]
        return JobState(
            id=str(job["id"]),
            status=status,
            provider_status=str(job["status"]),
            succeeded=ok,
            errored=errored,
            expired=expired,
            cancelled=cancelled,
            processing=processing,
            created_at=created,
            ended_at=_seconds(job.get("completed_at")) if status in TERMINAL else None,
            expires_at=_seconds(job.get("job_deadline")),
            cancel_requested=status in ("cancelling", "cancelled"),
            metadata=metadata,
            model=job.get("model_id"),
            endpoint=str(job.get("endpoint") or ENDPOINT),
        )
