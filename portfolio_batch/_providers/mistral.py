"""Mistral's batch jobs as a ``Backend`` (``_protocol``), over its REST API with ``httpx2``.

Mistral's API (docs.mistral.ai batch; the OpenAPI spec as generated into ``mistralai``'s
``BatchJobIn`` / ``BatchJobOut``): the input is a JSONL file of ``{custom_id, body}`` lines
uploaded to ``POST /v1/files`` (``purpose=batch``), a job is ``POST /v1/batch/jobs``
``{input_files, endpoint, model, metadata, timeout_hours}``, read back by
``GET /v1/batch/jobs/{id}`` (``status``, ``total_requests``, ``succeeded_requests``,
``failed_requests``, ``completed_requests``, ``output_file``, ``error_file``, ``metadata``),
listed by ``GET /v1/batch/jobs`` (``page``, ``page_size``; ``{data, total}``) and cancelled by
``POST /v1/batch/jobs/{id}/cancel``; files are read by ``GET /v1/files/{id}/content``.

Mistral keeps a job's ``metadata``, so pb's (``pb_sha256``, ``pb_run_id``, ``pb_shard``, ...)
goes there (with ``pb_run_hash``, the last part of the custom_ids): a create whose answer was
lost is found by ``pb_sha256`` (``compatible.MetadataBatchClient``) and ``discover`` finds a
run's jobs by ``pb_run_hash``, running or ended, without reading any results.

``MISTRAL_BASE_URL`` is the API root with its ``/v1`` (default ``https://api.mistral.ai/v1``).

    >>> b = backend(api_key="...", base_url="http://127.0.0.1:8000/mistral/v1")
    >>> b.prepare({"custom_id": "risk-KO-1", "method": "POST", "url": "/v1/chat/completions",
    ...            "body": {"model": "mistral-small-latest", "max_completion_tokens": 50,
    ...                     "messages": [{"role": "user", "content": "U"}], "store": True}})
    {'custom_id': 'risk-KO-1', 'body': {'model': 'mistral-small-latest', 'messages': [{'role': 'user', 'content': 'U'}], 'max_tokens': 50}}
"""

from __future__ import annotations

import builtins
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from portfolio_batch._providers._protocol import PORTABLE_ID, Limits, status_error
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
    "MistralBackend",
    "backend",
    "batch_status",
]

SPEC = PROVIDERS["mistral"]
KEY_VARS = SPEC.key_vars
BASE_URL_VAR = SPEC.base_url_var
DEFAULT_BASE_URL = SPEC.base_url
# where the embedded local server answers as Mistral (local/mistral.py)
LOCAL_PATH = "/mistral/v1"
# the facade that hands pb's metadata to submit and reads it back from listed jobs
CLIENT = MetadataBatchClient
# 1M requests a job (providers.md); no byte limit is stated by any source we read, so none is
# checked here (Mistral refuses a file it will not take, and the pipeline sees that error)
LIMITS = Limits(max_requests=1_000_000, max_bytes=1 << 62, id_pattern=PORTABLE_ID)
ENDPOINT = "/v1/chat/completions"
TIMEOUT_HOURS = 24  # Mistral's default (BatchJobIn.timeout_hours), as OpenAI's 24 h window

# Mistral's job status -> ours
_STATUS = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}
# OpenAI chat parameters Mistral's chat completions take under the same name
_SAME = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "response_format",
        "tools",
        "tool_choice",
        "presence_penalty",
        "frequency_penalty",
        "n",
        "parallel_tool_calls",
    }
)
# OpenAI parameters with no effect on a Mistral answer that our requests may carry
_IGNORED = frozenset({"store", "user", "metadata", "stream_options", "service_tier"})


def backend(
    *,
    api_key: str,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float | None = None,
) -> MistralBackend:
    """The Mistral backend for a key (``base_url``: another endpoint, e.g. the local server's
    ``<root>/mistral/v1``)."""
    return MistralBackend(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
    )


def batch_status(status: str, *, batch_id: str | None = None) -> str:
    """Our batch status of a Mistral job status.

    >>> batch_status("TIMEOUT_EXCEEDED"), batch_status("CANCELLATION_REQUESTED")
    ('expired', 'cancelling')
    """
    try:
        return _STATUS[status]
    except KeyError:
        raise UnknownStatusError("Mistral", batch_id, status) from None


class MistralBackend:
    """Mistral's batch jobs through its REST API (see the module docstring)."""

    name = "mistral"
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
        # set by MetadataBatchClient.batches.create for the one submit it makes
        self.pending_metadata: dict[str, str] = {}

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> MistralBackend:
        return MistralBackend(
            api_key=self._key,
            base_url=self.base_url,
            max_retries=self.max_retries if max_retries is None else max_retries,
            timeout=self._timeout if timeout is None else timeout,
        )

    # -- requests ------------------------------------------------------------------------------
    def prepare(self, line: Mapping[str, Any]) -> dict[str, Any]:
        """One OpenAI chat-completions batch line -> Mistral's ``{"custom_id", "body"}``."""
        cid = line.get("custom_id")
        url = str(line.get("url") or "")
        if not url.endswith("/chat/completions"):
            raise InputError(
                f"custom_id {cid!r}: this Mistral batch runs chat requests; this line is for "
                f"{url!r}. Build the requests with endpoint='/v1/chat/completions'."
            )
        body = dict(line.get("body") or {})
        tokens = body.pop("max_completion_tokens", None)
        if tokens is not None:
            body["max_tokens"] = tokens
        seed = body.pop("seed", None)
        out = {k: v for k, v in body.items() if k in _SAME and v is not None}
        if seed is not None:
            out["random_seed"] = seed  # Mistral's name for it
        left = sorted(
            k for k in body if k not in _SAME and k not in _IGNORED and body[k] is not None
        )
        if left:
            raise InputError(
                f"custom_id {cid!r}: parameter(s) {', '.join(left)} cannot be sent to Mistral "
                "(e.g. reasoning_effort is OpenAI's); build the requests without them."
            )
        if not isinstance(out.get("model"), str) or not out["model"]:
            raise InputError(f"custom_id {cid!r}: the request names no model.")
        return {"custom_id": cid, "body": out}

    # -- batches -------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Any], *, display_name: str) -> JobState:
        """Upload the lines as ``display_name`` and create one job with pb's metadata."""
        # streamed through a temporary file, not held whole in memory (a retry re-reads it)
        with tempfile.TemporaryFile() as fh:
            for r in requests:
                fh.write(orjson.dumps(r) + b"\n")
            fh.seek(0)
            uploaded = self._rest.json(
                "POST",
                "/files",
                files={"file": (display_name, fh, "application/jsonl")},
                data={"purpose": "batch"},
            )
        metadata = dict(self.pending_metadata)
        if requests:
            # the run hash is the custom_id's LAST "-" part (_requests.custom_id_for)
            metadata["pb_run_hash"] = str(requests[0]["custom_id"]).rsplit("-", 1)[-1]
        job = self._rest.json(
            "POST",
            "/batch/jobs",
            json={
                "input_files": [uploaded["id"]],
                "endpoint": ENDPOINT,
                "model": requests[0]["body"]["model"] if requests else None,
                "metadata": metadata,
                "timeout_hours": TIMEOUT_HOURS,
            },
        )
        return self._state(job)

    def status(self, batch_id: str) -> JobState:
        return self._state(self._rest.json("GET", f"/batch/jobs/{batch_id}"))

    def cancel(self, batch_id: str) -> JobState:
        return self._state(self._rest.json("POST", f"/batch/jobs/{batch_id}/cancel"))

    def list(self) -> Iterator[JobState]:
        """The key's jobs, page by page (newest first, as Mistral lists them)."""
        page, size = 0, 100
        while True:
            answer = self._rest.json("GET", "/batch/jobs", params={"page": page, "page_size": size})
            data = answer.get("data") or []
            for job in data:
                yield self._state(job)
            total = answer.get("total")
            if not data or len(data) < size or (total is not None and (page + 1) * size >= total):
                return
            page += 1

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The ended job's output and error lines, then one line for each request that has
        neither (not run: ``batch_cancelled`` / ``batch_expired``), from its input file."""
        job = self._rest.json("GET", f"/batch/jobs/{batch_id}")
        status = batch_status(str(job["status"]), batch_id=batch_id)
        if (
            status == "completed"
            and int(job.get("succeeded_requests") or 0)
            and not job.get("output_file")
        ):
            # ended before its output file is attached (OpenAI does this): a 404, as for a job
            # still running, so the facade caches nothing and a later read gets the answers
            raise status_error(
                404,
                f"Mistral job {batch_id} is SUCCESS with {job['succeeded_requests']} succeeded "
                "request(s) but no output file yet; read its results again in a few minutes.",
            )
        seen: set[str] = set()
        for key in ("output_file", "error_file"):
            if job.get(key):
                for line in self._rest.lines(f"/files/{job[key]}/content"):
                    out = result_line(line, batch_id)
                    seen.add(out["custom_id"])
                    yield out
        total = int(job.get("total_requests") or 0)
        if len(seen) >= total:
            return
        for file_id in job.get("input_files") or []:
            for line in self._rest.lines(f"/files/{file_id}/content"):
                cid = str(line.get("custom_id"))
                if cid not in seen:
                    seen.add(cid)
                    yield unrun_line(cid, batch_id, status)

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Jobs whose metadata says they carry ``run_hash`` (``pb_run_hash``), newest first:
        running ones too, no results read."""
        return [s.id for s in self.list() if (s.metadata or {}).get("pb_run_hash") == run_hash]

    # -- helpers -------------------------------------------------------------------------------
    def _state(self, job: Mapping[str, Any]) -> JobState:
        status = batch_status(str(job["status"]), batch_id=str(job.get("id")))
        total = int(job.get("total_requests") or 0)
        done = int(job.get("completed_requests") or 0)
        succeeded = int(job.get("succeeded_requests") or 0)
        failed = int(job.get("failed_requests") or 0)
        unrun = max(0, total - max(done, succeeded + failed))
        ended = status in ("completed", "failed", "expired", "cancelled")
        created = int(job.get("created_at") or 0)
        metadata = job.get("metadata")
        return JobState(
            id=str(job["id"]),
            status=status,
            provider_status=str(job["status"]),
            succeeded=succeeded,
            errored=failed + (unrun if ended and status in ("completed", "failed") else 0),
            expired=unrun if status == "expired" else 0,
            cancelled=unrun if status == "cancelled" else 0,
            processing=0 if ended else unrun,
            created_at=created,
            ended_at=int(job["completed_at"]) if ended and job.get("completed_at") else None,
            # assumed: a job ends by timeout_hours after its creation (BatchJobIn.timeout_hours)
            expires_at=created + TIMEOUT_HOURS * 3600 if created else None,
            cancel_requested=status in ("cancelling", "cancelled"),
            metadata={str(k): str(v) for k, v in metadata.items()}
            if isinstance(metadata, Mapping)
            else None,
            model=job.get("model"),
            endpoint=str(job.get("endpoint") or ENDPOINT),
        )
