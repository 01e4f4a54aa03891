"""Anthropic's Message Batches as a ``Backend`` (``_protocol``), over the ``anthropic`` SDK.

``prepare`` turns an OpenAI chat-completions batch line into a Message Batches request
(``{"custom_id", "params"}``): system messages into ``system``, ``max_tokens`` /
``max_completion_tokens`` into ``max_tokens``, a ``json_schema`` response format into
``output_config.format``. ``results`` turns each result back into an OpenAI batch output line:
the answer text (or a tool call's input as JSON text) as ``choices[0].message.content``, usage
in OpenAI's names (cache reads and writes inside ``prompt_tokens``), ``errored`` as an HTTP
failure, ``canceled`` / ``expired`` as ``batch_cancelled`` / ``batch_expired``.

    >>> b = backend(api_key="sk-ant-...", base_url="http://127.0.0.1:8000")
    >>> b.prepare({"custom_id": "risk-KO-1", "method": "POST", "url": "/v1/chat/completions",
    ...            "body": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [
    ...                {"role": "system", "content": "S"}, {"role": "user", "content": "U"}]}})
    {'custom_id': 'risk-KO-1', 'params': {'model': 'claude-haiku-4-5', 'max_tokens': 50, 'messages': [{'role': 'user', 'content': 'U'}], 'system': 'S'}}
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import openai

from portfolio_batch._providers._protocol import (
    PORTABLE_ID,
    BatchState,
    Limits,
    connection_error,
    status_error,
)
from portfolio_batch.errors import InputError, missing_extra

__all__ = ["BASE_URL_VAR", "DEFAULT_BASE_URL", "KEY_VARS", "AnthropicBackend", "backend"]

KEY_VARS = ("ANTHROPIC_API_KEY",)
BASE_URL_VAR = "ANTHROPIC_BASE_URL"
DEFAULT_BASE_URL = "https://api.anthropic.com"
log = logging.getLogger("portfolio_batch")
LIMITS = Limits(max_requests=100_000, max_bytes=256 * 1024 * 1024, id_pattern=PORTABLE_ID)

# OpenAI chat parameters carried over as they are (same name, same meaning)
_SAME = ("temperature", "top_p")
# OpenAI chat parameters with no effect on an Anthropic answer that our requests may carry
_IGNORED = frozenset({"n", "seed", "store", "user", "metadata", "stream_options"})
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",  # a forced tool's input is the answer
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
# Anthropic error type -> the HTTP status it would have answered (docs: errors)
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def backend(
    *,
    api_key: str,
    base_url: str | None = None,
    max_retries: int = 2,
    timeout: float | None = None,
) -> AnthropicBackend:
    """The Anthropic backend for a key (``base_url``: another endpoint, e.g. the local server)."""
    return AnthropicBackend(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
    )


def _seconds(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


class AnthropicBackend:
    """Message Batches through ``anthropic.Anthropic`` (see the module docstring)."""

    name = "anthropic"
    limits = LIMITS

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout: float | None = None,
    ) -> None:
        try:
            import anthropic
        except ImportError as exc:
            raise missing_extra("anthropic", "anthropic") from exc
        self._anthropic = anthropic
        self._key, self._timeout = api_key, timeout
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.max_retries = max_retries
        kwargs: dict[str, Any] = {"api_key": api_key, "base_url": self.base_url}
        if timeout is not None:
            kwargs["timeout"] = timeout
        self._client = anthropic.Anthropic(max_retries=max_retries, **kwargs)

    def with_options(
        self, *, max_retries: int | None = None, timeout: float | None = None
    ) -> AnthropicBackend:
        return AnthropicBackend(
            api_key=self._key,
            base_url=self.base_url,
            max_retries=self.max_retries if max_retries is None else max_retries,
            timeout=self._timeout if timeout is None else timeout,
        )

    # -- requests ------------------------------------------------------------------------------
    def prepare(self, line: Mapping[str, Any]) -> dict[str, Any]:
        """One OpenAI chat-completions batch line -> ``{"custom_id", "params"}``."""
        cid = line.get("custom_id")
        url = str(line.get("url") or "")
        if not url.endswith("/chat/completions"):
            raise InputError(
                f"custom_id {cid!r}: Anthropic's Message Batches take chat requests; this line "
                f"is for {url!r}. Build the requests with endpoint='/v1/chat/completions'."
            )
        body = dict(line.get("body") or {})
        model = body.pop("model", None)
        max_tokens = body.pop("max_completion_tokens", None) or body.pop("max_tokens", None)
        body.pop("max_tokens", None)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(
                f"custom_id {cid!r}: Anthropic needs max_tokens (a positive integer) in every "
                "request; build_requests(..., max_tokens=400) sets it."
            )
        params: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        system, messages = [], []
        for i, msg in enumerate(body.pop("messages", None) or []):
            role, text = msg.get("role"), _text(msg.get("content"), cid, i)
            if role in ("system", "developer"):
                system.append(text)
            elif role in ("user", "assistant"):
                messages.append({"role": role, "content": text})
            else:
                raise InputError(
                    f"custom_id {cid!r}: message {i} has role {role!r}; Anthropic takes system, "
                    "user and assistant messages."
                )
        params["messages"] = messages
        if system:
            params["system"] = "\n\n".join(system)
        for key in _SAME:
            if body.get(key) is not None:
                params[key] = body.pop(key)
        stop = body.pop("stop", None)
        if stop:
            params["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        fmt = body.pop("response_format", None)
        if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, Mapping):
                raise InputError(
                    f"custom_id {cid!r}: response_format json_schema has no schema object."
                )
            params["output_config"] = {"format": {"type": "json_schema", "schema": dict(schema)}}
        elif fmt is not None and not (isinstance(fmt, Mapping) and fmt.get("type") == "text"):
            raise InputError(
                f"custom_id {cid!r}: response_format {fmt!r} has no Anthropic equivalent; use a "
                "json_schema (schema=) or none."
            )
        left = sorted(k for k in body if k not in _IGNORED and body[k] is not None)
        if left:
            raise InputError(
                f"custom_id {cid!r}: parameter(s) {', '.join(left)} cannot be sent to Anthropic "
                "(e.g. reasoning_effort is OpenAI's); build the requests without them."
            )
        return {"custom_id": cid, "params": params}

    # -- batches -------------------------------------------------------------------------------
    def submit(self, requests: Sequence[Any], *, display_name: str) -> BatchState:
        # Anthropic keeps no name or metadata on a batch; the facade records display_name.
        return self._call(
            lambda: self._state(self._client.messages.batches.create(requests=list(requests)))
        )

    def status(self, batch_id: str) -> BatchState:
        return self._call(lambda: self._state(self._client.messages.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> BatchState:
        return self._call(lambda: self._state(self._client.messages.batches.cancel(batch_id)))

    def list(self) -> Iterator[BatchState]:
        """The key's batches, newest first (as Anthropic lists them), page by page."""
        page = self._call(lambda: self._client.messages.batches.list(limit=100))
        while True:
            for batch in page.data:
                yield self._state(batch)
            if not page.has_next_page():
                return
            page = self._call(page.get_next_page)

    def results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The ended batch's results as OpenAI batch output lines, streamed."""
        stream = self._call(lambda: self._client.messages.batches.results(batch_id))
        for item in stream:
            yield result_line(item.model_dump(mode="json"), batch_id)

    def discover(self, run_hash: str) -> builtins.list[str]:
        """Ended batches whose custom_ids end in ``-{run_hash}`` (judged by the first result),
        newest first.

        Anthropic keeps no metadata and shows a batch's custom_ids only in its results, once it
        has ended: a batch still in progress cannot be told apart, and is logged (with its id)
        rather than guessed at; so is an ended one whose results Anthropic no longer has (it
        keeps them 29 days). One results request per ended batch of the key.
        """
        found, waiting, gone = [], [], []
        for state in self.list():
            if state.ended_at is None:
                waiting.append(state.id)
                continue
            try:
                first = self._first_result(state.id)
            except openai.NotFoundError:
                gone.append(state.id)
                continue
            # the run hash is the id's LAST "-" part (_requests.custom_id_for), never a substring
            if first is not None and first.custom_id.rsplit("-", 1)[-1] == run_hash:
                found.append(state.id)
        if waiting:
            log.warning(
                "%d Anthropic batch(es) still in progress were not looked at for run hash %s "
                "(%s): Anthropic shows a batch's custom_ids only once it has ended. Resume "
                "again after they end, or pass their batch ids.",
                len(waiting),
                run_hash,
                ", ".join(waiting[:5]) + (", ..." if len(waiting) > 5 else ""),
            )
        if gone:
            log.warning(
                "%d ended Anthropic batch(es) have no results any more (%s): not looked at",
                len(gone),
                ", ".join(gone[:5]) + (", ..." if len(gone) > 5 else ""),
            )
        return found

    def _first_result(self, batch_id: str) -> Any:
        stream = self._call(lambda: self._client.messages.batches.results(batch_id))
        try:
            return next(iter(stream), None)
        finally:
            stream.close()

    # -- helpers -------------------------------------------------------------------------------
    def _state(self, b: Any) -> BatchState:
        counts = b.request_counts
        ended_at, expires_at = _seconds(b.ended_at), _seconds(b.expires_at)
        cancel_requested = b.cancel_initiated_at is not None
        return BatchState(
            id=b.id,
            status=batch_status(
                b.processing_status,
                cancel_requested=cancel_requested,
                expired=counts.expired,
                ended_at=ended_at,
                expires_at=expires_at,
            ),
            provider_status=b.processing_status,
            succeeded=counts.succeeded,
            errored=counts.errored,
            expired=counts.expired,
            cancelled=counts.canceled,
            processing=counts.processing,
            created_at=_seconds(b.created_at) or 0,
            ended_at=ended_at,
            expires_at=expires_at,
            cancel_requested=cancel_requested,
        )

    def _call(self, fn: Any) -> Any:
        """Run an SDK call, its errors as the openai SDK's (``_protocol``)."""
        a = self._anthropic
        try:
            return fn()
        except a.APIStatusError as exc:
            headers = {k: v for k, v in exc.response.headers.items() if k.startswith("retry-after")}
            raise status_error(
                exc.status_code, exc.message, headers=headers, url=str(exc.request.url)
            ) from exc
        except a.APITimeoutError as exc:
            raise connection_error(str(exc), sent=True, url=str(exc.request.url)) from exc
        except a.APIConnectionError as exc:
            sent = not _connect_failed(exc)
            raise connection_error(str(exc), sent=sent, url=str(exc.request.url)) from exc


def _connect_failed(exc: BaseException) -> bool:
    """Whether the connection could not even be made (nothing reached Anthropic)."""
    cause = exc.__cause__
    return cause is not None and type(cause).__name__ in ("ConnectError", "ConnectTimeout")


def _text(content: Any, cid: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        if all(isinstance(p, str) for p in parts) and parts:
            return "\n".join(parts)  # type: ignore[arg-type]
    raise InputError(
        f"custom_id {cid!r}: message {index} has content {content!r}; Anthropic requests are "
        "built from text content only."
    )


def batch_status(
    processing_status: str,
    *,
    cancel_requested: bool,
    expired: int,
    ended_at: int | None,
    expires_at: int | None,
) -> str:
    """Our batch status of an Anthropic batch.

    ``canceling`` is ``cancelling``; an ``ended`` batch is ``cancelled`` when a cancel was asked,
    ``expired`` when requests expired because it reached its 24 h window, else ``completed``.

    >>> batch_status("ended", cancel_requested=False, expired=2, ended_at=200, expires_at=200)
    'expired'
    >>> batch_status("canceling", cancel_requested=True, expired=0, ended_at=None, expires_at=9)
    'cancelling'
    """
    if processing_status == "in_progress":
        return "in_progress"
    if processing_status == "canceling":
        return "cancelling"
    if processing_status != "ended":
        raise ValueError(f"unknown Anthropic processing_status {processing_status!r}")
    if cancel_requested:
        return "cancelled"
    if expired and ended_at is not None and expires_at is not None and ended_at >= expires_at:
        return "expired"
    return "completed"


def result_line(item: Mapping[str, Any], batch_id: str) -> dict[str, Any]:
    """One Anthropic result line ``{custom_id, result}`` -> an OpenAI batch output line.

    >>> result_line({"custom_id": "a", "result": {"type": "expired"}}, "msgbatch_1")["error"]
    {'code': 'batch_expired', 'message': 'the batch reached its 24 h window before this request ran'}
    """
    cid, result = item["custom_id"], item["result"]
    kind = result.get("type")
    line: dict[str, Any] = {
        "id": f"{batch_id}-{cid}",
        "custom_id": cid,
        "response": None,
        "error": None,
    }
    if kind == "succeeded":
        line["response"] = {
            "status_code": 200,
            "request_id": "",
            "body": chat_completion(result["message"]),
        }
    elif kind == "errored":
        outer = result.get("error") or {}
        inner = outer.get("error")
        err: Mapping[str, Any] = inner if isinstance(inner, Mapping) else outer
        etype = str(err.get("type") or "api_error")
        line["response"] = {
            "status_code": _ERROR_STATUS.get(etype, 500),
            "request_id": "",
            "body": {
                "error": {"code": etype, "message": str(err.get("message") or ""), "type": etype}
            },
        }
    elif kind == "expired":
        line["error"] = {
            "code": "batch_expired",
            "message": "the batch reached its 24 h window before this request ran",
        }
    elif kind == "canceled":
        line["error"] = {
            "code": "batch_cancelled",
            "message": "the batch was cancelled before this request ran",
        }
    else:
        line["error"] = {"code": f"anthropic_{kind}", "message": f"unknown result type {kind!r}"}
    return line


def chat_completion(message: Mapping[str, Any]) -> dict[str, Any]:
    """An Anthropic message -> the OpenAI ``chat.completion`` body ``_decode`` reads.

    >>> body = chat_completion({"id": "msg_1", "model": "claude-haiku-4-5",
    ...     "content": [{"type": "text", "text": "{}"}], "stop_reason": "max_tokens",
    ...     "usage": {"input_tokens": 10, "cache_read_input_tokens": 90,
    ...               "cache_creation_input_tokens": 5, "output_tokens": 7}})
    >>> body["choices"][0]["finish_reason"], body["usage"]["prompt_tokens"]
    ('length', 105)
    """
    blocks = message.get("content") or []
    tools = [b for b in blocks if b.get("type") == "tool_use"]
    if tools:  # a forced tool: its input is the answer
        content: str | None = json.dumps(tools[0].get("input"), ensure_ascii=False)
    else:
        texts = [b.get("text") or "" for b in blocks if b.get("type") == "text"]
        content = "".join(texts) if texts else None
    stop = message.get("stop_reason")
    refusal = None
    if stop == "refusal":
        content, refusal = None, content or "the model declined to answer"
    usage = message.get("usage") or {}
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + read + written
    completion = int(usage.get("output_tokens") or 0)
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": _FINISH.get(str(stop), stop),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        },
    }
