"""OpenAI's Batch API (and Azure OpenAI's, Groq's, the local server's) as a ``Backend``, over an
``openai.OpenAI`` / ``openai.AzureOpenAI`` client: every call is the SDK's.

The pipeline still talks to the ``openai`` client itself on this path (``_create`` uploads and
creates, ``_download`` streams the result files), so its requests, files, registry rows and
batch metadata are what they always were; ``OpenAIBackend`` is what provider-neutral code sees
(``_providers.backend_of``): the limits, the run's batches (``discover``), the five counts.

    >>> import openai
    >>> b = OpenAIBackend(openai.OpenAI(api_key="sk-test", base_url="http://127.0.0.1:9/v1"))
    >>> b.name, b.limits.max_requests, b.limits.creations_per_hour
    ('openai', 50000, 2000)
"""

from __future__ import annotations

import builtins
import hashlib
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import openai
import orjson

from portfolio_batch._contract import CANCELLING, TERMINAL
from portfolio_batch._create import MAX_BATCHES_PER_HOUR, list_batches
from portfolio_batch._providers._protocol import Backend, BatchState, Limits, status_error
from portfolio_batch._requests import SUPPORTED_ENDPOINTS as _URLS  # what build_requests makes
from portfolio_batch._version import __version__
from portfolio_batch.errors import InputError

__all__ = [
    "BASE_URL_VAR",
    "KEY_VARS",
    "LIMITS",
    "MAX_BYTES",
    "MAX_REQUESTS",
    "RUN_HASH",
    "OpenAIBackend",
    "backend",
    "in_run",
    "run_hash_of",
]

KEY_VARS = ("OPENAI_API_KEY",)
BASE_URL_VAR = "OPENAI_BASE_URL"  # the openai SDK's own

# OpenAI's limits per batch input file (batch guide, rate limits): also to_jsonl's shard defaults.
# Azure's Global Batch takes more per file (100,000 requests); OpenAI's lower ones serve both.
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 2**20
# OpenAI states no custom_id rule but uniqueness: any non-empty id goes (old runs' "%2F" ones too)
_ANY_ID = r"(?s).+"
LIMITS = Limits(
    max_requests=MAX_REQUESTS,
    max_bytes=MAX_BYTES,
    id_pattern=_ANY_ID,
    creations_per_hour=MAX_BATCHES_PER_HOUR,
)
_CHUNK = 1 << 20
# A run hash (requests.attrs["prompt_version"], the last "-" part of every custom_id): id
# characters without "-", so never a run id _submit.new_run_id() makes.
RUN_HASH = re.compile(r"[A-Za-z0-9_]{1,64}")


def backend(
    *,
    api_key: str,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float | None = None,
) -> OpenAIBackend:
    """The backend over ``openai.OpenAI(api_key=..., base_url=...)``.

    >>> backend(api_key="sk-test", base_url="http://127.0.0.1:9/v1").base_url
    'http://127.0.0.1:9/v1/'
    """
    options: dict[str, Any] = {"api_key": api_key, "max_retries": max_retries}
    if base_url is not None:
        options["base_url"] = base_url
    if timeout is not None:
        options["timeout"] = timeout
    return OpenAIBackend(openai.OpenAI(**options))


def run_hash_of(custom_id: str) -> str | None:
    """The run hash a custom_id carries (its last ``-`` part), None when it has none.

    >>> run_hash_of("risk-AAPL-3eb420ac"), run_hash_of("plain")
    ('3eb420ac', None)
    """
    head, sep, tail = custom_id.rpartition("-")
    return tail if sep and head and RUN_HASH.fullmatch(tail) else None


def in_run(batch: Mapping[str, Any], key: str) -> bool:
    """Whether a batch (an OpenAI ``Batch`` as a dict) belongs to run ``key``: its metadata's
    ``pb_run_id`` is ``key``. The one rule ``resume`` finds a run's batches by without a
    registry on an OpenAI-shaped server: the pipeline writes the run id there, and
    ``OpenAIBackend.submit`` (which knows no run id) the run hash of its custom_ids.

    >>> in_run({"metadata": {"pb_run_id": "run-1"}}, "run-1"), in_run({"metadata": None}, "run-1")
    (True, False)
    """
    return (batch.get("metadata") or {}).get("pb_run_id") == key


class OpenAIBackend:
    """``Backend`` over an ``openai.OpenAI`` client (``AzureOpenAI``, Groq's
    ``CompatibleClient`` and the embedded local server's client are ones too)."""

    def __init__(self, client: openai.OpenAI) -> None:
        self.client = client
        spec = getattr(client, "spec", None)  # _providers.compatible.CompatibleClient
        if isinstance(client, openai.AzureOpenAI):
            self.name = "azure"
        elif spec is not None:
            self.name = spec.name
        else:
            self.name = "openai"
        limits = getattr(spec, "limits", None)
        self.limits: Limits = LIMITS if limits is None else limits
        self.base_url = str(client.base_url)
        self.max_retries = client.max_retries

    def __repr__(self) -> str:
        return f"<OpenAIBackend {self.name} at {self.base_url}>"

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> OpenAIBackend:
        options: dict[str, Any] = {}
        if max_retries is not None:
            options["max_retries"] = max_retries
        if timeout is not None:
            options["timeout"] = timeout
        return OpenAIBackend(self.client.with_options(**options)) if options else self

    def prepare(self, line: Mapping[str, Any]) -> Any:
        """The canonical line is OpenAI's own: checked, then sent as it is."""
        cid = line.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise InputError(
                f"custom_id {cid!r}: a batch line needs a non-empty string custom_id; build the "
                "lines with build_requests."
            )
        method, url = line.get("method"), line.get("url")
        if method != "POST" or url not in _URLS:
            raise InputError(
                f"custom_id {cid!r}: method {method!r} url {url!r}; a {self.name} batch line is "
                f"POST to one of {', '.join(_URLS)}. Build the lines with build_requests."
            )
        if not isinstance(line.get("body"), Mapping):
            raise InputError(f"custom_id {cid!r}: its body is not a JSON object.")
        return line

    def submit(self, requests: Sequence[Any], *, display_name: str) -> BatchState:
        """Upload the lines (streamed through a temporary file) and create their batch with
        the metadata the pipeline writes: ``pb_sha256`` (of the file: the creation rule's
        look-up finds it), ``pb_version`` and, as the run id, the run hash the custom_ids share
        (as ``_facade.BatchClient.recover`` names a run it finds)."""
        if not requests:
            raise InputError(f"{display_name}: no requests to submit.")
        digest, hashes = hashlib.sha256(), set()
        with tempfile.TemporaryFile() as fh:
            for line in requests:
                raw = orjson.dumps(line) + b"\n"
                digest.update(raw)
                fh.write(raw)
                hashes.add(run_hash_of(str(line["custom_id"])))
            fh.seek(0)
            uploaded = self.client.files.create(file=(display_name, fh), purpose="batch")
        metadata = {"pb_sha256": digest.hexdigest(), "pb_version": __version__}
        if len(hashes) == 1 and None not in hashes:
            metadata["pb_run_id"] = str(hashes.pop())
        made = self.client.with_options(max_retries=0).batches.create(
            input_file_id=uploaded.id,
            endpoint=requests[0]["url"],
            completion_window="24h",
            metadata=metadata,
        )
        return state_of(made)

    def status(self, batch_id: str) -> BatchState:
        return state_of(self.client.batches.retrieve(batch_id))

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The output file's lines, then the error file's: OpenAI's lines already."""
        batch = self.client.batches.retrieve(batch_id)
        if batch.status not in TERMINAL:
            raise status_error(404, f"Batch {batch_id} is still {batch.status}: no results yet.")
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            with self.client.files.with_streaming_response.content(file_id) as response:
                rest = b""
                for block in response.iter_bytes(_CHUNK):
                    *lines, rest = (rest + block).split(b"\n")
                    for raw in lines:
                        if raw.strip():
                            yield orjson.loads(raw)
                if rest.strip():
                    yield orjson.loads(rest)

    def cancel(self, batch_id: str) -> BatchState:
        return state_of(self.client.batches.cancel(batch_id))

    def list(self) -> Iterator[BatchState]:
        """The key's batches, newest first (as OpenAI lists them), page by page (the SDK's
        cursor pagination)."""
        for batch in self.client.batches.list(limit=100):
            yield state_of(batch)

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Ids of the batches of the last 30 days (``_create.list_batches``, the listing the
        creation rule reads) that belong to run ``run_hash`` by ``in_run``; newest first.

        OpenAI keeps the run in each batch's metadata, so an unfinished batch is found too.
        The pipeline's batches carry the run id (``run-…``); a batch ``submit`` made here, the
        run hash. The custom_ids are in the input files, which are not downloaded to look."""
        return [b["id"] for b in list_batches(self.client) if in_run(b, run_hash)]


def state_of(batch: Any) -> BatchState:
    """An OpenAI ``Batch`` as a ``BatchState``.

    OpenAI counts only ``completed`` and ``failed`` requests (and ``total``). ``failed`` is
    split by the batch's status, the only thing that tells why: in an expired batch they count
    as expired, in a cancelling or cancelled one as cancelled, else as errored (an expired or
    cancelled batch's failed count may also hold a few requests that errored before it ended:
    the result lines' error codes tell them apart). What is neither completed nor failed is
    still processing (all of it while ``total`` is 0, when validating).

    >>> from openai.types import Batch, BatchRequestCounts
    >>> b = Batch(id="b", object="batch", endpoint="/v1/chat/completions", input_file_id="f",
    ...           completion_window="24h", status="expired", created_at=1,
    ...           request_counts=BatchRequestCounts(total=5, completed=2, failed=3))
    >>> s = state_of(b); (s.succeeded, s.expired, s.errored, s.processing)
    (2, 3, 0, 0)
    """
    counts = batch.request_counts
    total = counts.total if counts else 0
    done = counts.completed if counts else 0
    failed = counts.failed if counts else 0
    status = str(batch.status)
    errored = expired = cancelled = 0
    if status == "expired":
        expired = failed
    elif status == "cancelled" or status in CANCELLING:
        cancelled = failed
    else:
        errored = failed
    ended = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at or None
    return BatchState(
        id=batch.id,
        status=status,
        provider_status=status,
        succeeded=done,
        errored=errored,
        expired=expired,
        cancelled=cancelled,
        processing=max(total - done - failed, 0),
        created_at=batch.created_at,
        ended_at=ended if status in TERMINAL else None,
        expires_at=batch.expires_at,
        cancel_requested=status in CANCELLING or status == "cancelled" or bool(batch.cancelling_at),
    )


def _is_backend(b: OpenAIBackend) -> Backend:
    return b  # mypy: OpenAIBackend implements the protocol
