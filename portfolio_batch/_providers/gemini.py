"""Gemini's Batch API (Developer API) as a ``Backend``, through ``google-genai``, in file mode with
keys: every request goes as a ``{"key": custom_id, "request": GenerateContentRequest}`` line of an
uploaded JSONL file, and every answer comes back under its key. Inline mode is never used: its
answers carry no key, and their order is not guaranteed (python-genai #1909).

- key: ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``; base URL: ``GOOGLE_GEMINI_BASE_URL`` (read by
  google-genai itself), else Google's.
- structured output: the request's JSON schema goes unchanged as
  ``generationConfig.responseJsonSchema`` (google-genai recommends it over the OpenAPI-subset
  ``responseSchema``, which cannot say ``additionalProperties``), with
  ``responseMimeType: application/json``.
- names: a job and its input file are named ``pb-<sha256>.run-<run hash>.jsonl``
  (``job_display_name``), Gemini's only label: a job whose create got no answer is found by it
  (``_facade``), and a run's jobs by ``discover(run_hash)`` with no record in the home.
- usage: ``usageMetadata`` in OpenAI's names: ``cachedContentTokenCount`` →
  ``prompt_tokens_details.cached_tokens``, ``thoughtsTokenCount`` → reasoning tokens (part of
  ``completion_tokens``, as on OpenAI).

    >>> backend = GeminiBackend(api_key="AIza-test")               # doctest: +SKIP
    >>> backend.prepare(line)["request"]["systemInstruction"]      # doctest: +SKIP
    {'parts': [{'text': 'You are a portfolio risk analyst. ...'}]}
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from portfolio_batch._providers._protocol import (
    Backend,
    BatchState,
    Limits,
    connection_error,
    status_error,
)
from portfolio_batch.errors import InputError, PortfolioBatchError, missing_extra

__all__ = [
    "BASE_URL_VAR",
    "KEY_VARS",
    "GeminiBackend",
    "backend",
    "batch_state",
    "job_display_name",
    "output_line",
    "prepare",
    "run_hash_of",
    "state_of",
]

log = logging.getLogger("portfolio_batch")

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BASE_URL_VAR = "GOOGLE_GEMINI_BASE_URL"  # google-genai reads it too (google/genai/_base_url.py)
# Gemini's input file may reach 2 GB. It documents no request count per batch: 50,000 is ours
# (OpenAI's). Nor a rule for keys: any non-empty string (ids of runs made before the portable
# ids, such as risk-BRK.B-..., still go).
LIMITS = Limits(max_requests=50_000, max_bytes=2 * 1024**3, id_pattern=r"^.+$")

# Every google.genai.types.JobState (3.6.1) and the REST names it is mapped from
# (BATCH_STATE_*, google/genai/_transformers.py t_job_state) -> our batch status.
_STATUS = {
    "JOB_STATE_QUEUED": "validating",
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_UPDATING": "in_progress",  # a running job being updated goes back to RUNNING
    "JOB_STATE_PAUSED": "in_progress",  # stopped but resumable: not an end
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_SUCCEEDED": "completed",
    # some answers missing after errors: ended, and each missing key becomes an error line
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
# the REST API's names of the same states
_STATUS |= {
    f"BATCH_STATE_{word}": _STATUS[f"JOB_STATE_{word}"]
    for word in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
}
_ACTIVE = frozenset({"validating", "in_progress", "cancelling"})

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
# google.rpc.Code of a per-request status -> (HTTP status, code name)
_RPC = {
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    11: (400, "OUT_OF_RANGE"),
    12: (501, "UNIMPLEMENTED"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    15: (500, "DATA_LOSS"),
    16: (401, "UNAUTHENTICATED"),
}
_CANCELLED, _DEADLINE = 1, 4  # CANCELLED: never run; DEADLINE_EXCEEDED: ran out of the window

# OpenAI's reasoning_effort as a Gemini 2.x thinking budget (Gemini's OpenAI-compatibility table)
_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_BODY_KEYS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "response_format",
        "reasoning_effort",
        "temperature",
        "top_p",
        "seed",
        "stop",
    }
)


# -- requests ----------------------------------------------------------------------------------
def _text(content: Any, where: str) -> str:
    """A chat message's text (a string, or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InputError(
                    f"{where}: a {kind!r} part cannot be sent to Gemini by portfolio_batch; "
                    "send text parts only"
                )
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise InputError(f"{where}: content must be a string or a list of text parts")


def _contents(custom_id: str, messages: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Gemini contents) of a chat messages list."""
    if not isinstance(messages, list) or not messages:
        raise InputError(f"custom_id {custom_id!r}: body.messages must be a non-empty list")
    system, contents = [], []
    for i, message in enumerate(messages):
        where = f"custom_id {custom_id!r}: body.messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        text = _text(message.get("content") if isinstance(message, dict) else None, where)
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            gemini_role = "model" if role == "assistant" else "user"
            contents.append({"role": gemini_role, "parts": [{"text": text}]})
        else:
            raise InputError(
                f"{where}: role {role!r} has no Gemini equivalent; use system, user or assistant"
            )
    if not contents:
        raise InputError(f"custom_id {custom_id!r}: body.messages has no user message")
    return system, contents


def _generation_config(custom_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        config["maxOutputTokens"] = limit
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    stop = body.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")  # type: ignore[union-attr]
        if not isinstance(schema, dict):
            raise InputError(
                f"custom_id {custom_id!r}: response_format.json_schema.schema must be an object"
            )
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = schema
    elif kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind not in (None, "text"):
        raise InputError(
            f"custom_id {custom_id!r}: response_format type {kind!r} is not one of "
            "json_schema, json_object, text"
        )
    effort = body.get("reasoning_effort")
    if effort is not None:
        model = str(body.get("model", "")).removeprefix("models/")
        if model.startswith("gemini-2"):  # 2.x takes a token budget, later models a level
            config["thinkingConfig"] = {"thinkingBudget": _BUDGETS.get(effort, 8192)}
        else:
            config["thinkingConfig"] = {"thinkingLevel": "minimal" if effort == "none" else effort}
    return config


def prepare(line: Mapping[str, Any]) -> dict[str, Any]:
    """One canonical OpenAI chat batch line -> ``{"key", "model", "request"}``; ``submit`` writes
    ``{"key", "request"}`` and sends ``model`` once for the batch (it is per batch on Gemini).

    >>> prepare({"custom_id": "risk-KO-1", "url": "/v1/chat/completions",
    ...          "body": {"model": "gemini-2.5-flash", "max_tokens": 50,
    ...                   "messages": [{"role": "system", "content": "Be brief."},
    ...                                {"role": "user", "content": "KO?"}]}})["request"]
    {'contents': [{'role': 'user', 'parts': [{'text': 'KO?'}]}], 'systemInstruction': {'parts': [{'text': 'Be brief.'}]}, 'generationConfig': {'maxOutputTokens': 50}}
    """
    custom_id = str(line.get("custom_id", ""))
    url = line.get("url")
    if url not in ("/v1/chat/completions", "/chat/completions"):
        raise InputError(
            f"custom_id {custom_id!r}: url {url!r} cannot go to Gemini; build the requests "
            "for /v1/chat/completions (build_requests' default endpoint)"
        )
    body = line.get("body")
    if not isinstance(body, Mapping) or not body.get("model"):
        raise InputError(f"custom_id {custom_id!r}: the line has no body with a model")
    unknown = sorted(set(body) - _BODY_KEYS)
    if unknown:
        raise InputError(
            f"custom_id {custom_id!r}: body field(s) {unknown} have no Gemini equivalent here; "
            f"drop them (supported: {sorted(_BODY_KEYS)})"
        )
    system, contents = _contents(custom_id, body.get("messages"))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    config = _generation_config(custom_id, body)
    if config:
        request["generationConfig"] = config
    return {"key": custom_id, "model": str(body["model"]), "request": request}


# -- results -----------------------------------------------------------------------------------
def _usage(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return {
        "prompt_tokens": prompt,  # Gemini's promptTokenCount includes the cached tokens
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": int(meta.get("cachedContentTokenCount") or 0),
            "cache_write_tokens": 0,
        },
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def _completion(key: str, response: Mapping[str, Any], model: str) -> dict[str, Any]:
    """A GenerateContentResponse as OpenAI's chat.completion body."""
    candidates = response.get("candidates") or []
    content: str | None = None
    refusal: str | None = None
    finish: str | None
    if candidates:
        first = candidates[0]
        parts = (first.get("content") or {}).get("parts") or []
        texts = [
            p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")
        ]
        content = "".join(texts) if texts else None
        reason = first.get("finishReason")
        finish = _FINISH.get(reason, str(reason).lower()) if reason else None
    else:  # the prompt itself was blocked
        block = (response.get("promptFeedback") or {}).get("blockReason", "no candidates")
        refusal, finish = f"Gemini blocked the prompt ({block})", "content_filter"
    return {
        "id": response.get("responseId") or key,
        "object": "chat.completion",
        "created": 0,
        "model": response.get("modelVersion") or model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": _usage(response.get("usageMetadata")),
    }


def _ended_line(key: str, code: str, message: str) -> dict[str, Any]:
    return {
        "id": f"gemini-{key}",
        "custom_id": key,
        "response": None,
        "error": {"code": code, "message": message},
    }


def output_line(line: Mapping[str, Any], *, model: str = "") -> dict[str, Any]:
    """One line of a Gemini responses file (``{key, response}`` or ``{key, status}``) as an OpenAI
    batch output line.

    >>> output_line({"key": "k", "status": {"code": 3, "message": "bad"}})["response"]
    {'status_code': 400, 'request_id': '', 'body': {'error': {'code': 'INVALID_ARGUMENT', 'message': 'bad', 'type': 'gemini_error'}}}
    """
    key = line.get("key")
    if not isinstance(key, str):
        raise PortfolioBatchError(
            f"A Gemini responses line has no key ({str(dict(line))[:200]}); its answer cannot be "
            "joined to a request. Report it; the other lines are joined by their keys."
        )
    response = line.get("response")
    if isinstance(response, Mapping):
        body = _completion(key, response, model)
        return {
            "id": f"gemini-{key}",
            "custom_id": key,
            "response": {"status_code": 200, "request_id": body["id"], "body": body},
            "error": None,
        }
    status = line.get("status") or {}
    code = int(status.get("code") or 2)
    message = str(status.get("message") or "Gemini returned no response for this request")
    if code == _CANCELLED:
        return _ended_line(key, "batch_cancelled", message)
    if code == _DEADLINE:
        return _ended_line(key, "batch_expired", message)
    http, name = _RPC.get(code, (500, f"RPC_{code}"))
    error = {"code": name, "message": message, "type": "gemini_error"}
    return {
        "id": f"gemini-{key}",
        "custom_id": key,
        "response": {"status_code": http, "request_id": "", "body": {"error": error}},
        "error": None,
    }


# -- states ------------------------------------------------------------------------------------
def _seconds(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())


def state_of(word: str) -> str:
    """Our batch status of a Gemini job state (``JOB_STATE_*`` or the REST ``BATCH_STATE_*``).

    >>> state_of("JOB_STATE_RUNNING"), state_of("BATCH_STATE_EXPIRED")
    ('in_progress', 'expired')
    """
    try:
        return _STATUS[word]
    except KeyError:
        raise PortfolioBatchError(
            f"Gemini reported the job state {word!r}, which portfolio_batch does not know; "
            "upgrade portfolio_batch, or look at the job in Google AI Studio"
        ) from None


def batch_state(operation: Mapping[str, Any], *, cancel_asked: bool = False) -> BatchState:
    """A Gemini batch as the REST API returns it (an Operation whose ``metadata`` is the
    GenerateContentBatch) as our ``BatchState``.

    google-genai's ``BatchJob`` drops ``batchStats`` on the Developer API, hence the REST answer.
    Counts: running, failed requests are ``errored``; in a cancelled job they are ``cancelled``,
    in an expired one every request without an answer is ``expired`` (the stats do not split
    them; the result lines do).
    """
    meta = operation.get("metadata") or {}
    name = str(meta.get("name") or operation.get("name")).removeprefix("batches/")
    word = str(meta.get("state") or "JOB_STATE_UNSPECIFIED")
    status = state_of(word)
    stats = meta.get("batchStats") or {}
    total = int(stats.get("requestCount") or 0)
    ok = int(stats.get("successfulRequestCount") or 0)
    failed = int(stats.get("failedRequestCount") or 0)
    pending = max(0, total - ok - failed)
    errored, expired, cancelled, processing = failed, 0, 0, pending
    if status == "expired":
        errored, expired, processing = 0, total - ok, 0
    elif status == "cancelled":
        errored, cancelled, processing = 0, failed + pending, 0
    elif status in ("completed", "failed"):
        errored, processing = failed + pending, 0
    if cancel_asked and status in ("validating", "in_progress"):
        status = "cancelling"
    return BatchState(
        id=name,
        status=status,
        provider_status=word,
        succeeded=ok,
        errored=errored,
        expired=expired,
        cancelled=cancelled,
        processing=processing,
        created_at=_seconds(meta.get("createTime")) or 0,
        ended_at=_seconds(meta.get("endTime")) if status not in _ACTIVE else None,
        cancel_requested=cancel_asked or status in ("cancelling", "cancelled"),
        display_name=str(meta.get("displayName") or "") or None,
    )


# -- names -------------------------------------------------------------------------------------
# Gemini keeps no metadata on a job, only its display name: the facade's file name (the content
# hash, ``pb-<sha256>.jsonl``) with the run hash the keys share, so that a job whose create got
# no answer is found by its exact name (``_facade``) and a run by its hash (``discover``).
_RUN_TAG = re.compile(r"\.run-(?P<hash>[A-Za-z0-9_]+)\.jsonl$")
_ID_PART = re.compile(r"[A-Za-z0-9_]+")
MAX_DISPLAY_NAME = 128


def job_display_name(display_name: str, keys: Iterable[str]) -> str:
    """The display name a job (and its input file) gets: ``display_name`` with the run hash the
    keys share (each key's last ``-`` part, ``_requests.custom_id_for``); unchanged when they
    share none, or the name would pass ``MAX_DISPLAY_NAME``.

    >>> job_display_name("pb-ab12.jsonl", ["risk-KO-3f9a1c2e", "risk-BRK_B-0907ab-3f9a1c2e"])
    'pb-ab12.run-3f9a1c2e.jsonl'
    >>> job_display_name("pb-ab12.jsonl", ["risk-KO-3f9a1c2e", "risk-KO-77aa"])
    'pb-ab12.jsonl'
    """
    hashes = {str(k).rsplit("-", 1)[-1] for k in keys if "-" in str(k)}
    if len(hashes) != 1:
        return display_name
    run_hash = hashes.pop()
    name = f"{display_name.removesuffix('.jsonl')}.run-{run_hash}.jsonl"
    if not _ID_PART.fullmatch(run_hash) or len(name) > MAX_DISPLAY_NAME:
        return display_name
    return name


def run_hash_of(display_name: str | None) -> str | None:
    """The run hash a job's display name carries (``job_display_name``), else None (a job made
    before names carried it: ``pb-<sha256>.jsonl``).

    >>> run_hash_of("pb-ab12.run-3f9a1c2e.jsonl"), run_hash_of("pb-ab12.jsonl")
    ('3f9a1c2e', None)
    """
    found = _RUN_TAG.search(display_name or "")
    return found.group("hash") if found else None


# -- the backend -------------------------------------------------------------------------------
def _genai() -> Any:
    try:
        from google import genai
    except ImportError as exc:
        raise missing_extra(
            "google-genai", "gemini", alternative="Gemini's Batch API is reached through it"
        ) from exc
    return genai


def _transport_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(refused, unanswered) exception classes of the HTTP libraries google-genai may use
    (httpx, or httpx2 when it is installed)."""
    refused: list[type[BaseException]] = []
    unanswered: list[type[BaseException]] = []
    for module in ("httpx", "httpx2"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        refused.append(lib.ConnectError)
        unanswered.append(lib.TransportError)
    return tuple(refused), tuple(unanswered)


@contextmanager
def _openai_errors(what: str) -> Iterator[None]:
    """google-genai's errors as the openai SDK's (the pipeline's handling applies unchanged)."""
    from google.genai import errors

    refused, unanswered = _transport_errors()
    try:
        yield
    except errors.APIError as exc:
        response = getattr(exc, "response", None)
        headers = dict(getattr(response, "headers", None) or {})
        status = exc.status or ""
        message = f"Gemini: {what} failed: {exc.code} {status} {exc.message or ''}".rstrip()
        raise status_error(int(exc.code or 500), message, headers=headers) from exc
    except refused as exc:
        raise connection_error(f"Gemini: {what}: {exc}", sent=False) from exc
    except unanswered as exc:
        raise connection_error(f"Gemini: {what}: {exc}", sent=True) from exc


def _name(batch_id: str) -> str:
    """Gemini's resource name of our batch id (``abc`` -> ``batches/abc``): our ids carry no
    ``/``, as they name files in the home."""
    return batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"


class GeminiBackend:
    """Gemini's Batch API through ``google-genai`` (file mode with keys); a ``Backend``.

    ``client`` is a ready ``google.genai.Client`` (tests, custom transports); else one is made
    from ``api_key`` (default ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY``) and ``base_url``
    (default ``GOOGLE_GEMINI_BASE_URL``, else Google's). Batch ids are Gemini's names without
    ``batches/``.

    >>> backend = GeminiBackend(api_key="AIza-test", base_url="http://127.0.0.1:8000")
    >>> backend.name, backend.base_url, backend.max_retries
    ('gemini', 'http://127.0.0.1:8000', 2)
    """

    name = "gemini"
    limits = LIMITS

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout: float | None = None,
        client: Any = None,
        keys_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(BASE_URL_VAR) or DEFAULT_BASE_URL).rstrip("/")
        self.max_retries = max_retries
        self._timeout = timeout
        self._api_key = api_key or next((os.environ[v] for v in KEY_VARS if os.environ.get(v)), "")
        if client is None:
            if not self._api_key:
                raise InputError(
                    "No Gemini key: set GEMINI_API_KEY (or GOOGLE_API_KEY) to a Gemini API key "
                    "from Google AI Studio, or pass api_key="
                )
            client = self._make_client()
        self.client = client
        self._keys_dir = Path(keys_dir) if keys_dir is not None else None
        self._cancel_asked: set[str] = set()

    def _make_client(self) -> Any:
        genai = _genai()
        from google.genai import types

        options = types.HttpOptions(
            base_url=self.base_url + "/",
            # attempts include the first: a create goes out max_retries + 1 times at most
            retry_options=types.HttpRetryOptions(attempts=self.max_retries + 1),
            timeout=None if self._timeout is None else int(self._timeout * 1000),
        )
        return genai.Client(api_key=self._api_key, http_options=options)

    def __repr__(self) -> str:
        return f"<GeminiBackend at {self.base_url}>"

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> GeminiBackend:
        """The same backend with other retries/timeout (a new SDK client, the same key)."""
        other = GeminiBackend(
            api_key=self._api_key,
            base_url=self.base_url,
            max_retries=self.max_retries if max_retries is None else max_retries,
            timeout=self._timeout if timeout is None else timeout,
            client=None if self._api_key else self.client,
            keys_dir=self._keys_dir,
        )
        other._cancel_asked = self._cancel_asked
        return other

    # The keys each batch was sent, kept in the home: an expired job has no responses file, yet
    # each of its requests gets an expired line, and a key missing from a responses file shows.
    def _keys_path(self, batch_id: str) -> Path:
        if self._keys_dir is None:
            from portfolio_batch._home import home

            self._keys_dir = home() / "providers" / "gemini" / "keys"
        self._keys_dir.mkdir(parents=True, exist_ok=True)
        return self._keys_dir / f"{batch_id.removeprefix('batches/')}.keys"

    def _sent_keys(self, batch_id: str) -> list[str] | None:
        try:
            return self._keys_path(batch_id).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None

    def prepare(self, line: Mapping[str, Any]) -> dict[str, Any]:
        return prepare(line)

    def display_name_for(self, requests: Sequence[Any], display_name: str) -> str:
        """The name ``submit`` gives the job of these prepared requests (``job_display_name``):
        the facade matches a job whose create got no answer by it."""
        return job_display_name(display_name, (r["key"] for r in requests))

    def remember(self, batch_id: str, keys: Sequence[str]) -> None:
        """Record the keys a job was sent (``submit`` does it on its answer; the facade, for a
        job whose create got no answer, once it has found it)."""
        self._keys_path(batch_id).write_text("\n".join(keys) + "\n", encoding="utf-8")

    def submit(self, requests: Sequence[Any], *, display_name: str) -> BatchState:
        """Write the requests as JSONL (a temporary file, streamed), upload it, create the job
        (named by ``display_name_for``: the file's name and the run hash; the model is the
        requests')."""
        if not requests:
            raise InputError(f"{display_name}: no requests to submit")
        display_name = self.display_name_for(requests, display_name)
        model = str(requests[0]["model"])
        keys = []
        with tempfile.TemporaryDirectory(prefix="pb-gemini-") as tmp:
            path = Path(tmp) / "requests.jsonl"
            with path.open("wb") as fh:
                for req in requests:
                    if req["model"] != model:
                        raise InputError(
                            f"custom_id {req['key']!r}: model {req['model']!r} differs from "
                            f"{model!r}; a Gemini batch runs one model, so split the requests "
                            "by model"
                        )
                    keys.append(req["key"])
                    line = {"key": req["key"], "request": req["request"]}
                    fh.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
            with _openai_errors(f"uploading {display_name}"):
                uploaded = self.client.files.upload(
                    file=str(path), config={"mime_type": "jsonl", "display_name": display_name}
                )
        with _openai_errors(f"creating the batch of {display_name}"):
            job = self.client.batches.create(
                model=model, src=uploaded.name, config={"display_name": display_name}
            )
        batch_id = str(job.name).removeprefix("batches/")
        self.remember(batch_id, keys)
        return self.status(batch_id)

    def _rest(self, path: str, what: str) -> dict[str, Any]:
        """A GET's REST answer: google-genai's ``BatchJob`` drops ``batchStats`` on the
        Developer API, so the jobs are read raw, through the SDK's own transport and key."""
        with _openai_errors(what):
            answer = self.client._api_client.request("get", path, {})
        return dict(json.loads(answer.body or "{}"))

    def status(self, batch_id: str) -> BatchState:
        operation = self._rest(_name(batch_id), f"reading batch {batch_id}")
        return batch_state(operation, cancel_asked=batch_id in self._cancel_asked)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every request's output line, joined by key: the responses file's lines, then, for
        each request sent from this home without one, an ``expired`` line (an expired job), a
        ``batch_cancelled`` line (a cancelled one) or a ``missing_result`` error line."""
        operation = self._rest(_name(batch_id), f"reading batch {batch_id}")
        state = batch_state(operation)
        if state.status in _ACTIVE:
            raise status_error(
                404, f"Gemini batch {batch_id} is still {state.provider_status}: no results yet."
            )
        meta = operation.get("metadata") or {}
        output = (meta.get("output") or {}).get("responsesFile")
        model = str(meta.get("model", "")).removeprefix("models/")
        seen: set[str] = set()
        if output:
            for line in self._download(str(output), batch_id):
                out = output_line(line, model=model)
                seen.add(out["custom_id"])
                yield out
        yield from self._unanswered(batch_id, state, seen)

    def _download(self, file_name: str, batch_id: str) -> Iterator[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="pb-gemini-") as tmp:
            path = Path(tmp) / "responses.jsonl"
            with _openai_errors(f"downloading the results of batch {batch_id}"):
                # streamed to disk in chunks, not held in memory
                self.client.files.download(file=file_name, destination=str(path))
            with path.open("rb") as fh:
                for raw in fh:
                    if raw.strip():
                        yield json.loads(raw)

    def _unanswered(
        self, batch_id: str, state: BatchState, seen: set[str]
    ) -> Iterator[dict[str, Any]]:
        sent = self._sent_keys(batch_id)
        if sent is None:
            if not seen:
                log.warning(
                    "Gemini batch %s (%s) has no responses, and this home has no record of its "
                    "requests: they show as missing in the results",
                    batch_id,
                    state.provider_status,
                )
            return
        for key in sent:
            if key in seen:
                continue
            if state.status == "expired":
                yield _ended_line(key, "batch_expired", "the Gemini batch expired before this ran")
            elif state.status == "cancelled":
                yield _ended_line(key, "batch_cancelled", "the Gemini batch was cancelled")
            else:
                error = {
                    "code": "missing_result",
                    "message": f"Gemini's responses file of batch {batch_id} has no line for "
                    "this key",
                    "type": "gemini_error",
                }
                yield {
                    "id": f"gemini-{key}",
                    "custom_id": key,
                    "response": {"status_code": 500, "request_id": "", "body": {"error": error}},
                    "error": None,
                }

    def cancel(self, batch_id: str) -> BatchState:
        with _openai_errors(f"cancelling batch {batch_id}"):
            self.client.batches.cancel(name=_name(batch_id))
        self._cancel_asked.add(batch_id)
        return self.status(batch_id)

    def _operations(self) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            path = "batches?pageSize=100" + (f"&pageToken={token}" if token else "")
            page = self._rest(path, "listing batches")
            yield from page.get("operations") or []
            token = page.get("nextPageToken") or ""
            if not token:
                return

    def list(self) -> Iterator[BatchState]:
        """The key's batches, newest first (Gemini lists them so)."""
        for operation in self._operations():
            state = batch_state(operation)
            if state.id in self._cancel_asked:
                state = batch_state(operation, cancel_asked=True)
            yield state

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Jobs of run ``run_hash``, newest first, running ones too: those whose display name
        carries it (``run_hash_of``; no record in this home needed), and those made before
        names carried it (``pb-<sha256>.jsonl``) whose keys recorded in this home end in
        ``-{run_hash}``. Gemini keeps no other label, and its input files cannot be downloaded.

            >>> backend.discover("3f9a1c2e")                       # doctest: +SKIP
            ['a1b2c3', '9f8e7d']
        """
        found = []
        for operation in self._operations():
            meta = operation.get("metadata") or {}
            batch_id = str(meta.get("name") or operation.get("name")).removeprefix("batches/")
            named = run_hash_of(str(meta.get("displayName") or ""))
            if named is not None:
                if named == run_hash:
                    found.append(batch_id)
                continue
            # the run hash is a key's LAST "-" part (_requests.custom_id_for), never a substring
            keys = self._sent_keys(batch_id) or []
            if any(k.rsplit("-", 1)[-1] == run_hash for k in keys):
                found.append(batch_id)
        return found


def backend(
    *,
    api_key: str,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float | None = None,
) -> Backend:
    """The Gemini backend ``_backend.client(provider="gemini")`` wraps.

    >>> backend(api_key="AIza-test", base_url="http://127.0.0.1:8000").name
    'gemini'
    """
    return GeminiBackend(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
    )
