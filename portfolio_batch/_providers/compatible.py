"""OpenAI-compatible batch providers: a small table of what differs, and a client for the ones
whose Files + Batches API is OpenAI's.

Only ``provider=`` selects these (``pb.client(provider="groq")``, the CLI's ``--provider``):
``provider_of(model)`` never guesses them from a model name, since their models
(``llama-3.3-70b-versatile``, ``meta-llama/...``, ``mistral-...``) are open models that other
providers and self-hosted servers serve too. A lone ``GROQ_API_KEY`` does not select Groq either.

A provider goes through ``openai.OpenAI(base_url=...)`` only when its Files + Batches API is
OpenAI's as it is (lines ``{custom_id, method, url, body}``, ``/v1/files`` with
``purpose=batch``, ``/v1/batches`` with OpenAI's statuses and ``metadata``): the pipeline's
creation rule finds a batch whose answer was lost by its ``metadata["pb_sha256"]``, and polling
reads OpenAI's lower-case statuses, so a provider without them cannot be made to work by
rewriting lines. Mistral and Together are close but not the same (``{custom_id, body}``
lines, their own statuses and counts, Together without metadata): each has a ``Backend`` of
its own (``mistral.py``, ``together.py``, over their REST APIs) behind ``_facade.BatchClient``,
built on what this module shares (``Rest``, ``JobState``, ``MetadataBatchClient``,
``result_line``). The others (Fireworks) are in the table so that asking for them says what is
missing instead of failing half-way.

    >>> PROVIDERS["groq"].openai_batches, PROVIDERS["mistral"].openai_batches
    (True, False)
    >>> SUPPORTED
    ('groq', 'together', 'mistral')
    >>> c = client("groq", api_key="gsk-test")            # doctest: +SKIP
    >>> str(c.base_url), c.label                          # doctest: +SKIP
    ('https://api.groq.com/openai/v1/', 'groq')
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import openai
import orjson

from portfolio_batch._providers._facade import BatchClient, _Batches
from portfolio_batch._providers._protocol import PORTABLE_ID, BatchState, Limits
from portfolio_batch.errors import InputError, PortfolioBatchError

__all__ = [
    "PROVIDERS",
    "SUPPORTED",
    "Compatible",
    "CompatibleClient",
    "UnknownStatusError",
    "client",
]

_MB = 1_000_000


@dataclass(frozen=True, kw_only=True)
class Compatible:
    """One OpenAI-compatible batch provider: where it is, its key, its limits and how its batch
    API differs from OpenAI's. ``None`` means not stated by any source we read."""

    name: str  # the provider= / --provider value, and the head of backend_name
    title: str
    base_url: str  # default; <base_url_var> overrides it
    key_vars: tuple[str, ...]  # first set wins
    base_url_var: str  # ours (Groq's SDK reads the same one)
    openai_batches: bool  # Files + Batches exactly OpenAI's: goes through openai.OpenAI
    backend: bool = False  # else: a Backend of its own, _providers/<name>.py (BatchClient)
    line_shape: str  # the input line the provider takes
    max_requests: int | None  # per batch
    max_bytes: int | None  # per input file
    id_rule: str | None  # custom_id rule beyond uniqueness (a regex)
    windows: tuple[str, ...] | None  # completion windows accepted (a range: first..last)
    missing: str = ""  # why it cannot go through openai.OpenAI (when openai_batches is False)
    source: str = ""

    @property
    def limits(self) -> Limits | None:
        """The provider's ``Limits`` when its request and byte limits are known."""
        if self.max_requests is None or self.max_bytes is None:
            return None
        return Limits(
            max_requests=self.max_requests,
            max_bytes=self.max_bytes,
            id_pattern=self.id_rule or PORTABLE_ID,
        )


_OPENAI_LINE = "{custom_id, method, url, body}"
_BODY_LINE = "{custom_id, body} (no method/url)"

PROVIDERS: dict[str, Compatible] = {
    p.name: p
    for p in (
        Compatible(
            name="groq",
            title="Groq",
            base_url="https://api.groq.com/openai/v1",
            key_vars=("GROQ_API_KEY",),
            base_url_var="GROQ_BASE_URL",
            openai_batches=True,
            line_shape=_OPENAI_LINE,
            # not in providers.md: Groq's batch guide (console.groq.com/docs/batch) as quoted by
            # secondary sources gives 50,000 lines and 100 MB (another 200 MB): the lower is kept
            max_requests=50_000,
            max_bytes=100 * _MB,
            id_rule=None,
            windows=("24h", "7d"),
            source="providers.md: 'Groq: OpenAI's files + batches exactly', window '24 h to 7 d'",
        ),
        Compatible(
            name="together",
            title="Together AI",
            base_url="https://api.together.xyz/v1",
            key_vars=("TOGETHER_API_KEY",),
            base_url_var="TOGETHER_BASE_URL",
            openai_batches=False,
            backend=True,
            line_shape=_BODY_LINE,
            max_requests=50_000,
            max_bytes=100 * _MB,
            id_rule=r"^.{1,64}$",
            windows=("24h",),
            missing="no batch metadata (its input file's name carries pb's instead), no "
            "request counts (counted from its files), {custom_id, body} lines, upper-case "
            "statuses: _providers/together.py speaks its API",
            source="providers.md: lines {custom_id, body}, 50k / 100 MB, ids <= 64 chars, "
            "batch metadata none; docs.together.ai reference upload-file (POST /files/upload, "
            "purpose batch-api), batch-create ({job, warning}), batch-cancel; together SDK "
            "types/batch.py (BatchJob, statuses incl. CANCELING). Assumed: output/error lines "
            "in OpenAI's shape",
        ),
        Compatible(
            name="mistral",
            title="Mistral",
            base_url="https://api.mistral.ai/v1",
            key_vars=("MISTRAL_API_KEY",),
            base_url_var="MISTRAL_BASE_URL",
            openai_batches=False,
            backend=True,
            line_shape=_BODY_LINE,
            max_requests=1_000_000,
            max_bytes=None,
            id_rule=None,
            windows=None,
            missing="its own jobs API (/v1/batch/jobs with input_files, model, metadata and "
            "timeout_hours; statuses QUEUED, RUNNING, SUCCESS, ...): _providers/mistral.py "
            "speaks it",
            source="providers.md: files or inline, lines {custom_id, body}, up to 1M requests, "
            "timeout_hours, statuses QUEUED..CANCELLED; mistralai SDK models BatchJobIn / "
            "BatchJobOut (total/succeeded/failed/completed_requests, output_file, error_file, "
            "metadata); its inline example reads outputs[i]['response']['body']. Assumed: "
            "output/error file lines in OpenAI's shape; no byte limit stated",
        ),
        Compatible(
            name="fireworks",
            title="Fireworks AI",
            base_url="https://api.fireworks.ai/inference/v1",
            key_vars=("FIREWORKS_API_KEY",),
            base_url_var="FIREWORKS_BASE_URL",
            openai_batches=False,
            line_shape=_BODY_LINE,
            max_requests=None,
            max_bytes=500 * _MB,
            id_rule=None,
            windows=None,
            missing="its batch inference jobs are its own API with JOB_STATE_* statuses, not "
            "OpenAI's /v1/batches",
            source="providers.md: lines {custom_id, body}, < 500 MB, JOB_STATE_* statuses; "
            "docs.fireworks.ai batch inference",
        ),
    )
}

# The providers that work: pb.client(provider=<name>) and the CLI's --provider <name>.
SUPPORTED = tuple(name for name, p in PROVIDERS.items() if p.openai_batches or p.backend)
# ...of which these go through openai.OpenAI as they are (client() below)
OPENAI_SHAPED = tuple(name for name, p in PROVIDERS.items() if p.openai_batches)


class CompatibleClient(openai.OpenAI):
    """``openai.OpenAI`` for a provider whose Files + Batches API is OpenAI's; ``label`` is its
    name in ``_backend.backend_name`` (``"groq"``, or ``"groq:<base url>"`` for another
    endpoint), kept by ``copy``/``with_options``."""

    label: str

    def __init__(self, *, label: str = "compatible", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label

    def copy(self, *args: Any, **kwargs: Any) -> Self:
        made = super().copy(*args, **kwargs)
        made.label = self.label
        return made

    with_options = copy

    @property
    def spec(self) -> Compatible:
        """The provider's row of ``PROVIDERS``."""
        return PROVIDERS[self.label.split(":", 1)[0]]


def shown_url(url: str) -> str:
    """``url`` without its ``user:password@`` part, for backend names and logs (which are kept
    in the registry); the requests still use the whole url.

    >>> shown_url("https://me:secret@proxy.example/v1")
    'https://proxy.example/v1'
    """
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def client(name: str, *, engine: str | None = None, **overrides: Any) -> CompatibleClient:
    """A client for the OpenAI-compatible provider ``name``, key and base URL from the
    environment (``overrides`` go to ``openai.OpenAI``: ``max_retries=``, ``timeout=`` ...).

    Raises ``InputError`` for a provider whose batch API is not OpenAI's (naming what is
    missing), for ``engine=`` (the embedded local server is not Groq), and for a missing key
    (naming its variable).

    >>> client("fireworks")
    Traceback (most recent call last):
    ...
    portfolio_batch.errors.InputError: provider='fireworks': Fireworks AI's batch API is not OpenAI's: ...
    """
    spec = PROVIDERS.get(name)
    if spec is None:
        raise InputError(
            f"provider={name!r} is not an OpenAI-compatible batch provider we know; use one of "
            f"{', '.join(PROVIDERS)}."
        )
    if spec.backend:
        raise InputError(
            f"provider={name!r}: {spec.title} has a backend of its own; use "
            f"pb.client(provider={name!r})."
        )
    if not spec.openai_batches:
        raise InputError(
            f"provider={name!r}: {spec.title}'s batch API is not OpenAI's: {spec.missing}. "
            "portfolio_batch cannot run batches there; use provider "
            f"{', '.join(repr(s) for s in SUPPORTED)}, 'openai', 'anthropic' or 'gemini', or "
            "send the shards with the provider's own tools."
        )
    if engine is not None:
        raise InputError(
            f"engine={engine!r} selects the embedded local server, not {spec.title}. For an "
            f"offline {spec.title} run, set {spec.base_url_var} to a local server's url "
            f"(portfolio-batch serve) and {spec.key_vars[0]} to its key; or drop provider={name!r}."
        )
    key = overrides.pop("api_key", None) or next(
        (os.environ[v] for v in spec.key_vars if os.environ.get(v)), None
    )
    if not key:
        raise InputError(
            f"provider={name!r} needs {' or '.join(spec.key_vars)}, which is not set. Set it to "
            f"your {spec.title} API key ({spec.base_url_var} reaches another endpoint)."
        )
    base = str(
        overrides.pop("base_url", None) or os.environ.get(spec.base_url_var) or spec.base_url
    ).rstrip("/")
    # another endpoint is another place for batches: its url is part of the name (never the key)
    label = name if base == spec.base_url else f"{name}:{shown_url(base)}"
    return CompatibleClient(label=label, base_url=base, api_key=key, **overrides)


# -- what the REST backends (mistral.py, together.py) share ------------------------------------
# Tests swap in a transport that loses a reply (the creation rule's case); None: the network.
TRANSPORT: Any = None
_RETRIED = frozenset({408, 409, 429, 500, 502, 503, 504})


class Rest:
    """A provider's REST API over ``httpx2`` (the openai SDK's own HTTP library), its errors as
    the openai SDK's (``_protocol.status_error`` / ``connection_error``). ``max_retries``
    retries a refused connection, a 408/409/429/5xx and a timeout, as the openai SDK does (the
    facade creates with ``max_retries=0``).

        >>> Rest(api_key="k", base_url="https://api.mistral.ai/v1").url("/batch/jobs")
        'https://api.mistral.ai/v1/batch/jobs'
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        max_retries: int = 2,
        timeout: float | None = None,
        spec: Compatible | None = None,
    ) -> None:
        import httpx2

        self.base_url = base_url.rstrip("/")
        self.spec = spec  # names the provider's base URL variable in a misrouted answer's error
        self.max_retries = max_retries
        self._httpx = httpx2
        self._client = httpx2.Client(
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=httpx2.Timeout(timeout if timeout is not None else 600.0, connect=10.0),
            transport=TRANSPORT,
            follow_redirects=False,
        )

    def url(self, path: str) -> str:
        return self.base_url + path

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer of ``method path`` (a 2xx), after the retries."""
        from portfolio_batch._providers._protocol import connection_error, status_error

        httpx2 = self._httpx
        url = self.url(path)
        attempt = 0
        while True:
            try:
                answer = self._client.request(method, url, **kwargs)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                error: Exception = connection_error(str(exc), sent=False, url=url)
                cause: Exception = exc
            except httpx2.TransportError as exc:  # a timeout, a connection lost after sending
                error, cause = connection_error(str(exc), sent=True, url=url), exc
            else:
                if 200 <= answer.status_code < 300:
                    return answer
                if answer.status_code < 400:  # a redirect (http:// for https://, a moved root)
                    raise self._not_the_api(url, answer)
                headers = {
                    k: v for k, v in answer.headers.items() if k.lower().startswith("retry-after")
                }
                error = status_error(answer.status_code, _message(answer), headers=headers, url=url)
                cause = error
                if answer.status_code not in _RETRIED:
                    raise error
            if attempt >= self.max_retries:
                raise error from (None if cause is error else cause)
            attempt += 1
            time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self.call(method, path, **kwargs)
        try:
            return orjson.loads(answer.content)
        except orjson.JSONDecodeError:  # a proxy's or a login page's HTML, not the API
            raise self._not_the_api(self.url(path), answer) from None

    def _not_the_api(self, url: str, answer: Any) -> InputError:
        """The error for an answer that is not the API's: a redirect, or a 2xx that is not JSON."""
        spec = self.spec
        var = spec.base_url_var if spec else "the provider's *_BASE_URL"
        what = (
            f"HTTP {answer.status_code}, a redirect to {answer.headers.get('location')!r}"
            if 300 <= answer.status_code < 400
            else f"HTTP {answer.status_code} with a body that is not JSON "
            f"({answer.headers.get('content-type') or 'no content type'})"
        )
        example = f" (e.g. {spec.base_url})" if spec else ""
        return InputError(
            f"{url} answered {what}: this is not the {spec.title if spec else 'provider'} API. "
            f"Set {var} to the API root, https and with /v1{example}."
        )

    def lines(self, path: str) -> Iterator[dict[str, Any]]:
        """The JSON lines of a downloaded file, streamed."""
        from portfolio_batch._providers._protocol import connection_error

        url = self.url(path)
        try:
            with self._client.stream("GET", url) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    from portfolio_batch._providers._protocol import status_error

                    raise status_error(answer.status_code, _message(answer), url=url)
                if answer.status_code >= 300:
                    raise self._not_the_api(url, answer)
                for raw in answer.iter_lines():
                    if raw.strip():
                        yield orjson.loads(raw)
        except self._httpx.TransportError as exc:
            raise connection_error(str(exc), sent=True, url=url) from exc


def _message(answer: Any) -> str:
    """The error message of a provider's answer (``{"error": {"message"}}``, ``{"message"}``,
    ``{"detail"}``), else its text."""
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:500] or f"HTTP {answer.status_code}"
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


class UnknownStatusError(PortfolioBatchError, ValueError):
    """A provider reported a batch status this version of portfolio_batch does not know.

    >>> raise UnknownStatusError("Mistral", "job-1", "PAUSED")
    Traceback (most recent call last):
    ...
    portfolio_batch._providers.compatible.UnknownStatusError: Mistral batch job-1 reports status 'PAUSED', which this version of portfolio_batch does not know. ...
    """

    def __init__(self, provider: str, batch_id: str | None, status: str) -> None:
        which = f"batch {batch_id}" if batch_id else "a batch"
        super().__init__(
            f"{provider} {which} reports status {status!r}, which this version of "
            "portfolio_batch does not know. Upgrade portfolio_batch (pip install -U "
            "portfolio-batch), or report it at the project's issue tracker with this message; "
            "the batch itself is untouched on the provider."
        )
        self.provider, self.batch_id, self.status = provider, batch_id, status


@dataclass(frozen=True, kw_only=True)
class JobState(BatchState):
    """A ``BatchState`` with what a provider keeps on its side: the batch's ``metadata`` (Mistral
    keeps ours; Together's is rebuilt from the input file's name), ``model`` and ``endpoint``."""

    metadata: dict[str, str] | None = None
    model: str | None = None
    endpoint: str = "/v1/chat/completions"


class MetadataBatchClient(BatchClient):
    """``BatchClient`` for a backend that keeps batch metadata: ``batches.create`` hands the
    pipeline's metadata to ``Backend.submit`` (``metadata=``), and a listed batch with no record
    in this home shows the metadata the provider kept, so the creation rule finds a batch whose
    create got no answer by its ``pb_sha256`` (``_create._adoptable``)."""

    def __init__(self, backend: Any, **kwargs: Any) -> None:
        super().__init__(backend, **kwargs)
        self.batches = _MetadataBatches(self)

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None, **_: Any
    ) -> MetadataBatchClient:
        return MetadataBatchClient(
            self.backend.with_options(max_retries=max_retries, timeout=timeout),
            label=self.label,
            simulated_engine=self.simulated_engine,
            store_dir=self._store.dir,
        )

    def _batch(self, state: BatchState, record: dict[str, Any] | None) -> Any:
        if isinstance(state, JobState) and state.metadata:
            kept = {k: v for k, v in state.metadata.items() if k != "pb_run_hash"}
            # under the record's: a record rebuilt by recover() has pb_run_id/pb_shard but no
            # pb_sha256, and without the provider's the same manifest would be created again
            record = {
                **(record or {}),
                "metadata": {**kept, **((record or {}).get("metadata") or {})},
                "model": (record or {}).get("model") or state.model,
                "endpoint": (record or {}).get("endpoint") or state.endpoint,
            }
        return super()._batch(state, record)


class _MetadataBatches(_Batches):
    def create(self, *, metadata: dict[str, str] | None = None, **kwargs: Any) -> Any:
        # the facade calls Backend.submit(requests, display_name=...); the metadata rides on
        # this client's own backend (the pipeline creates on a with_options copy, one create
        # each, so no other create shares it)
        backend: Any = self._c.backend
        backend.pending_metadata = dict(metadata or {})
        try:
            return super().create(metadata=metadata, **kwargs)
        finally:
            backend.pending_metadata = {}


def result_line(line: Mapping[str, Any], batch_id: str) -> dict[str, Any]:
    """A provider's output or error line in OpenAI's shape (``{custom_id, response:
    {status_code, body}, error}``) as the pipeline reads it: an ``id``, a ``request_id``, a
    failed response's body as ``{"error": {code, message, type}}``.

    >>> result_line({"custom_id": "a", "response": {"status_code": 422, "body": "bad"}}, "j")
    {'id': 'j-a', 'custom_id': 'a', 'response': {'status_code': 422, 'request_id': '', 'body': {'error': {'code': 'http_422', 'message': 'bad', 'type': 'invalid_request_error'}}}, 'error': None}
    """
    cid = str(line.get("custom_id"))
    out: dict[str, Any] = {
        "id": str(line.get("id") or f"{batch_id}-{cid}"),
        "custom_id": cid,
        "response": None,
        "error": None,
    }
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, Mapping) and response.get("status_code") is not None:
        status = int(response["status_code"])
        body = response.get("body")
        if status != 200 and not (
            isinstance(body, Mapping) and isinstance(body.get("error"), Mapping)
        ):
            message = body.get("message") if isinstance(body, Mapping) else body
            body = {
                "error": {
                    "code": f"http_{status}",
                    "message": str(message or error or f"HTTP {status}"),
                    "type": "invalid_request_error" if status < 500 else "server_error",
                }
            }
        out["response"] = {
            "status_code": status,
            "request_id": str(response.get("request_id") or ""),
            "body": body,
        }
        return out
    if isinstance(error, Mapping):
        out["error"] = {
            "code": str(error.get("code") or "provider_error"),
            "message": str(error.get("message") or ""),
        }
    else:
        out["error"] = {"code": "provider_error", "message": str(error or "no response")}
    return out


def unrun_line(custom_id: str, batch_id: str, status: str) -> dict[str, Any]:
    """The line of a request a ``status`` batch ended without running (no line of its own)."""
    code, why = {
        "expired": ("batch_expired", "the batch reached its time limit before this request ran"),
        "cancelled": ("batch_cancelled", "the batch was cancelled before this request ran"),
    }.get(status, ("batch_failed", f"the batch ended {status} before this request ran"))
    return {
        "id": f"{batch_id}-{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": why},
    }
