"""What a batch provider must offer: the ``Backend`` protocol, its ``Limits`` and ``BatchState``.

A backend speaks its provider's own API and answers in OUR vocabulary: batch statuses from
``_contract.BATCH_STATUSES``, five request counts, and result lines in OpenAI's batch output
format, so ``_decode.row_of`` reads every provider's results unchanged. ``_facade.BatchClient``
turns a backend into the subset of ``openai.OpenAI`` the pipeline uses. OpenAI's own API (and
Azure's, Groq's, the local server's) is ``openai.OpenAIBackend`` over the ``openai`` client the
pipeline already holds; ``backend_of(client)`` (in ``_providers``) is the backend behind any
client. ``tests/test_backend_protocol.py`` checks every backend against this protocol.

    >>> state = BatchState(id="b1", status="in_progress", provider_status="in_progress",
    ...                    succeeded=1, errored=0, expired=0, cancelled=0, processing=2,
    ...                    created_at=0)
    >>> state.total, state.failed
    (3, 0)
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "PORTABLE_ID",
    "Backend",
    "BatchState",
    "Limits",
    "connection_error",
    "provider_of",
    "status_error",
]

# The custom_id rule every provider accepts (Anthropic's is the strictest).
PORTABLE_ID = r"^[A-Za-z0-9_-]{1,64}$"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one batch may hold on a provider."""

    max_requests: int  # per batch
    max_bytes: int  # per batch payload
    id_pattern: str = PORTABLE_ID  # custom_id rule
    max_enqueued_tokens: int | None = None
    creations_per_hour: int | None = None


@dataclass(frozen=True, kw_only=True)
class BatchState:
    """A batch as a backend sees it, in our vocabulary.

    ``status`` is one of ``_contract.BATCH_STATUSES``; ``provider_status`` is the provider's own
    word (``"canceling"``, ``"JOB_STATE_RUNNING"``). The five counts add up to the batch's
    requests (a provider that reports fewer counts puts the unknown ones in ``processing``).
    ``cancel_requested`` is True once a cancel was asked (by us or on the provider's side), so an
    ended batch maps to ``cancelled``. Times are Unix seconds. ``display_name`` is the name the
    provider shows for the batch (Gemini's ``displayName``), None where it keeps none (Anthropic).
    """

    id: str
    status: str
    provider_status: str
    succeeded: int
    errored: int
    expired: int
    cancelled: int
    processing: int
    created_at: int
    ended_at: int | None = None
    expires_at: int | None = None
    cancel_requested: bool = False
    display_name: str | None = None

    @property
    def total(self) -> int:
        return self.succeeded + self.errored + self.expired + self.cancelled + self.processing

    @property
    def failed(self) -> int:
        """OpenAI's ``request_counts.failed``: every request that ended without an answer."""
        return self.errored + self.expired + self.cancelled


class Backend(Protocol):
    """One batch provider.

    Errors: a backend raises the openai SDK's error classes (build them with ``status_error``
    and ``connection_error`` below from its own SDK's errors), so the pipeline's handling applies
    unchanged: a 404 means gone, a 429 is waited out, a create that got no answer is looked
    for instead of sent again, any ``openai.APIError`` is looked at before anything else.

    Construction: the module ``portfolio_batch._providers.<name>`` has
    ``KEY_VARS`` (the environment variables of its key, first found wins), ``BASE_URL_VAR``
    and ``def backend(*, api_key: str, base_url: str | None = None, max_retries: int = 2,
    timeout: float | None = None) -> Backend``; ``_backend.client(provider=<name>)`` calls it
    (with the embedded local server's root url and key when no key is set). ``openai.py`` has
    them too (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``), though ``_backend.client`` builds the
    ``openai`` client itself for OpenAI and Azure.

    ``results`` yields, in any order, one OpenAI batch OUTPUT line per request::

        {"id": str, "custom_id": str,
         "response": {"status_code": 200, "request_id": str, "body": <chat.completion>},
         "error": None}
        # errored:   "response": {"status_code": 400 (or the provider's), "request_id": "",
        #                         "body": {"error": {"code": str, "message": str, "type": str}}}
        # expired:   "response": None, "error": {"code": "batch_expired", "message": str}
        # cancelled: "response": None, "error": {"code": "batch_cancelled", "message": str}

    the chat.completion body has ``model``, ``choices[0].message.content``,
    ``choices[0].finish_reason`` (``stop``/``length``/...) and ``usage`` in OpenAI's names
    (``prompt_tokens`` including cached ones, ``prompt_tokens_details.cached_tokens`` and
    ``cache_write_tokens``, ``completion_tokens``).
    """

    name: str  # "anthropic", "gemini", ...
    limits: Limits
    base_url: str  # where the provider is reached (the facade's client.base_url)
    max_retries: int  # the SDK's retries (the creation rule posts max_retries + 1 times at most)

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> Backend:
        """The same backend with other retries/timeout (creates go out with max_retries=0)."""
        ...

    def prepare(self, line: Mapping[str, Any]) -> Any:
        """One canonical OpenAI batch line ``{custom_id, method, url, body}`` -> the provider's
        request (raise ``errors.InputError`` naming the custom_id for what it cannot carry)."""
        ...

    def submit(self, requests: Sequence[Any], *, display_name: str) -> BatchState:
        """Create one batch of prepared requests; ``display_name`` is the input file's name."""
        ...

    def status(self, batch_id: str) -> BatchState: ...

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The ended batch's result lines, streamed (see the class docstring)."""
        ...

    def cancel(self, batch_id: str) -> BatchState: ...

    def list(self) -> Iterator[BatchState]:
        """The key's batches, newest first."""
        ...

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Ids of the batches of the run ``run_hash`` (recovery without a local record); newest
        first. Where batches keep metadata (OpenAI) the run named there (the pipeline's run id;
        the run hash for a batch ``submit`` made); elsewhere the run hash their custom_ids carry."""
        ...


def provider_of(model: str | None) -> str:
    """The provider a model name belongs to: ``claude-*`` anthropic, ``gemini-*`` gemini, else
    openai.

    >>> provider_of("gemini-2.5-flash"), provider_of("gpt-5-mini"), provider_of(None)
    ('gemini', 'openai', 'openai')
    """
    m = (model or "").lower()
    if m.startswith("claude-"):
        return "anthropic"
    if m.startswith(("gemini-", "models/gemini-")):
        return "gemini"
    return "openai"


def status_error(
    status: int, message: str, *, headers: Mapping[str, str] | None = None, url: str = ""
) -> Exception:
    """The openai SDK's error for an HTTP ``status`` (404 -> ``NotFoundError``, 429 ->
    ``RateLimitError`` with its ``retry-after`` header kept, ...).

    >>> type(status_error(404, "no such batch")).__name__
    'NotFoundError'
    """
    import httpx2
    import openai

    request = httpx2.Request("GET", url or "http://provider.invalid/")
    response = httpx2.Response(status, headers=dict(headers or {}), request=request)
    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        409: openai.ConflictError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
    }
    cls = classes.get(status) or (
        openai.InternalServerError if status >= 500 else openai.APIStatusError
    )
    return cls(message, response=response, body={"error": {"message": message}})


def connection_error(message: str, *, sent: bool, url: str = "") -> Exception:
    """The openai SDK's error for a request that got no answer: ``sent=False`` when the
    connection could not even be made (safe to send again), ``sent=True`` when the provider may
    have received it (a timeout, a connection lost after sending: look before sending again).

    >>> connection_error("refused", sent=False).__cause__.__class__.__name__
    'ConnectError'
    """
    import httpx2
    import openai

    request = httpx2.Request("POST", url or "http://provider.invalid/")
    if sent:
        return openai.APITimeoutError(request=request)
    exc = openai.APIConnectionError(message=message, request=request)
    exc.__cause__ = httpx2.ConnectError(message, request=request)
    return exc
