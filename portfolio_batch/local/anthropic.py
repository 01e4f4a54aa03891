"""Anthropic's Message Batches API on the local server, as ``anthropic-python`` calls it:

    POST   /v1/messages/batches                      create ({"requests": [{custom_id, params}]})
    GET    /v1/messages/batches                      list (newest first; after_id, before_id, limit)
    GET    /v1/messages/batches/{id}                 retrieve
    POST   /v1/messages/batches/{id}/cancel          cancel (processing_status "canceling")
    DELETE /v1/messages/batches/{id}                 delete an ended batch
    GET    /v1/messages/batches/{id}/results         the results, one JSON line per request

Each request's ``params`` (system, messages, max_tokens, temperature, structured output by
``output_config.format`` / ``output_format`` or a forced tool) becomes an OpenAI chat-completions
line of an internal batch run by the server's worker and engine; its results come back as
Anthropic's ``{custom_id, result: succeeded | errored | canceled | expired}``. As on Anthropic,
the batch request itself is checked at create (a ``custom_id`` outside
``^[a-zA-Z0-9_-]{1,64}$``, a repeated one, over 100,000 requests or 256 MB: a 400/413), but each
request's ``params`` only when the batch ends (``max_tokens: 0`` or an unknown parameter is an
``errored`` result). ``request_counts`` show every request as ``processing`` until the batch
ends; a batch past its window ends with its unrun requests ``expired``.

    >>> client = anthropic.Anthropic(api_key=server.api_key, base_url=server.root_url)  # doctest: +SKIP
    >>> batch = client.messages.batches.create(requests=[...])                           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from portfolio_batch.local.app import DownloadCut, ServerState, State, _json
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.dialects import AnthropicError
from portfolio_batch.local.providers import (
    Outcome,
    drop_batch,
    ended,
    iso,
    missing_kind,
    outcomes,
    read_lines,
    start_batch,
    sub_state,
    write_file,
)
from portfolio_batch.local.store import ApiError

__all__ = ["CUSTOM_ID", "MAX_BATCH_BYTES", "MAX_REQUESTS", "router"]

router = APIRouter()

NAME = "anthropic"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
_PREFIX = "msgbatch_"
# The Messages API parameters a batch request may carry (anthropic-python 2.x
# MessageCreateParamsNonStreaming, plus the sampling ones older models take and the beta-era
# output_format); anything else is a per-request error at the end.
_PARAMS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "output_config",
        "output_format",
        "thinking",
        "service_tier",
        "cache_control",
        "container",
        "inference_geo",
        "speed",
        "diagnostics",
        "user_profile_id",
        "stream",
    }
)


class _Invalid(Exception):
    """A request's params are not valid: its result is ``errored`` (invalid_request_error)."""


def _wrap(exc: ApiError) -> ApiError:
    kind = "rate_limit_error" if exc.status == 429 else None
    error = AnthropicError(exc.status, exc.message, kind=kind)
    error.headers = exc.headers
    return error


# params -> OpenAI chat line --------------------------------------------------------------------
def _text(content: Any, where: str) -> str:
    """The text of a message's content: a string, or the text of its blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise _Invalid(f"{where}: Input should be a valid string or a non-empty list of blocks")
    parts = []
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _Invalid(f"{where}.{index}: each content block needs a 'type'")
        if block["type"] == "text":
            if not isinstance(block.get("text"), str):
                raise _Invalid(f"{where}.{index}.text: Field required")
            parts.append(block["text"])
        elif block["type"] == "tool_result":
            inner = block.get("content", "")
            parts.append(inner if isinstance(inner, str) else _text(inner, f"{where}.{index}"))
        # images, documents, tool_use blocks: nothing the local engines read
    return "\n".join(parts)


def _schema(params: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(JSON schema of the structured output, name of the forced tool) of a request."""
    output = params.get("output_config")
    fmt = output.get("format") if isinstance(output, dict) else None
    fmt = fmt if fmt is not None else params.get("output_format")
    if fmt is not None:
        if (
            not isinstance(fmt, dict)
            or fmt.get("type") != "json_schema"
            or not isinstance(fmt.get("schema"), dict)
        ):
            raise _Invalid(
                "output_config.format: expected {'type': 'json_schema', 'schema': {...}}"
            )
        return fmt["schema"], None
    tools = params.get("tools")
    if tools is None:
        return None, None
    if not isinstance(tools, list):
        raise _Invalid("tools: Input should be a valid list")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _Invalid(f"tools.{index}.name: Field required")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise _Invalid(f"tools.{index}.input_schema: Field required")
    choice = params.get("tool_choice") or {"type": "auto"}
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    forced = None
    if choice["type"] == "tool":
        forced = next((t for t in tools if t.get("name") == choice.get("name")), None)
        if forced is None:
            raise _Invalid(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
    elif choice["type"] == "any" and len(tools) == 1:
        forced = tools[0]
    if forced is None or not isinstance(forced.get("input_schema"), dict):
        return None, None  # the model may answer in text; the local engines do
    return forced["input_schema"], forced["name"]


def to_chat(params: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The OpenAI chat-completions body of a request's ``params`` and its forced tool's name;
    ``_Invalid`` with Anthropic's wording when the params are not valid.

    >>> to_chat({"model": "claude-x", "max_tokens": 5, "system": "S",
    ...          "messages": [{"role": "user", "content": "hi"}]})[0]["messages"]
    [{'role': 'system', 'content': 'S'}, {'role': 'user', 'content': 'hi'}]
    """
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise _Invalid(f"{unknown[0]}: Extra inputs are not permitted")
    if params.get("stream"):
        raise _Invalid("stream: Streaming is not supported in the Message Batches API")
    model = params.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model: Field required")
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _Invalid("max_tokens: Field required (an integer)")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages: Field required (a non-empty list)")
    chat: list[dict[str, Any]] = []
    system = params.get("system")
    if system is not None:
        chat.append({"role": "system", "content": _text(system, "system")})
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        chat.append(
            {
                "role": message["role"],
                "content": _text(message.get("content"), f"messages.{index}.content"),
            }
        )
    body: dict[str, Any] = {"model": model, "messages": chat, "max_tokens": max_tokens}
    temperature = params.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise _Invalid("temperature: Input should be a valid number")
        if not 0 <= temperature <= 1:
            raise _Invalid("temperature: Input should be between 0 and 1")
        body["temperature"] = temperature
    schema, tool = _schema(params)
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": tool or "output", "schema": schema},
        }
    return body, tool


def _translate(requests: list[dict[str, Any]]) -> tuple[list[bytes], list[bytes]]:
    """(internal OpenAI batch lines, manifest lines ``{custom_id, model, tool, error}``)."""
    lines, manifest = [], []
    for item in requests:
        custom_id, params = item["custom_id"], item["params"]
        entry: dict[str, Any] = {"custom_id": custom_id, "model": params.get("model")}
        try:
            body, entry["tool"] = to_chat(params)
        except _Invalid as exc:
            entry["error"] = str(exc)
        else:
            lines.append(
                orjson.dumps(
                    {
                        "custom_id": custom_id,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        # one model per internal batch; the result names the request's own
                        "body": {**body, "model": "local-anthropic"},
                    }
                )
            )
        manifest.append(orjson.dumps(entry))
    return lines, manifest


def _check_create(raw: bytes) -> list[dict[str, Any]]:
    """The requests of a create body, or the 400/413 Anthropic answers for the whole batch."""
    if len(raw) > MAX_BATCH_BYTES:
        raise AnthropicError(
            413,
            f"The batch is {len(raw):,} bytes; a Message Batch can be at most "
            f"{MAX_BATCH_BYTES:,} bytes (256 MB). Split it into several batches.",
        )
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise AnthropicError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
        raise AnthropicError(400, "requests: Field required")
    extra = sorted(set(body) - {"requests"})
    if extra:
        raise AnthropicError(400, f"{extra[0]}: Extra inputs are not permitted")
    requests = body["requests"]
    if not requests:
        raise AnthropicError(400, "requests: List should have at least 1 item")
    if len(requests) > MAX_REQUESTS:
        raise AnthropicError(
            400,
            f"requests: a Message Batch can have at most {MAX_REQUESTS:,} requests; this one has "
            f"{len(requests):,}. Split it into several batches.",
        )
    seen: set[str] = set()
    for index, item in enumerate(requests):
        if not isinstance(item, dict):
            raise AnthropicError(400, f"requests.{index}: Input should be a valid dictionary")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            raise AnthropicError(
                400,
                f"requests.{index}.custom_id: String should match pattern "
                f"'^[a-zA-Z0-9_-]{{1,64}}$' (got {custom_id!r}).",
            )
        if custom_id in seen:
            raise AnthropicError(
                400,
                f"requests.{index}.custom_id: Duplicate custom_id {custom_id!r}; each request "
                "in a batch needs its own.",
            )
        seen.add(custom_id)
        if not isinstance(item.get("params"), dict):
            raise AnthropicError(400, f"requests.{index}.params: Field required")
        extra = sorted(set(item) - {"custom_id", "params"})
        if extra:
            raise AnthropicError(
                400, f"requests.{index}.{extra[0]}: Extra inputs are not permitted"
            )
    return requests


# internal batch -> Anthropic objects -----------------------------------------------------------
def _internal_id(batch_id: str) -> str:
    if not batch_id.startswith(_PREFIX):
        return ""
    return "batch_" + batch_id[len(_PREFIX) :]


def _get(sub: ServerState, batch_id: str) -> dict[str, Any]:
    try:
        batch = sub.store.get_batch(_internal_id(batch_id))
    except ApiError:
        raise AnthropicError(404, f"No Message Batch with id {batch_id!r}.") from None
    return batch


def _public_id(batch: dict[str, Any]) -> str:
    return _PREFIX + batch["id"][len("batch_") :]


def _message_id(batch: dict[str, Any], custom_id: str) -> str:
    # the same id each time the results are read
    return "msg_" + hashlib.sha256(f"{batch['id']}/{custom_id}".encode()).hexdigest()[:24]


def _message(batch: dict[str, Any], outcome: Outcome, entry: dict[str, Any]) -> dict[str, Any]:
    body = outcome.body or {}
    choice = (body.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    stop_reason = "max_tokens" if choice.get("finish_reason") == "length" else "end_turn"
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    tool = entry.get("tool")
    if tool and stop_reason == "end_turn":
        try:
            arguments = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            tool_id = "toolu_" + _message_id(batch, outcome.custom_id)[4:]
            content = [{"type": "tool_use", "id": tool_id, "name": tool, "input": arguments}]
            stop_reason = "tool_use"
    return {
        "id": _message_id(batch, outcome.custom_id),
        "type": "message",
        "role": "assistant",
        "model": entry.get("model") or body.get("model"),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0) - cached,
            "output_tokens": usage.get("completion_tokens", 0),
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
            "service_tier": "batch",
        },
    }


def _errored(kind: str, message: str) -> dict[str, Any]:
    return {
        "type": "errored",
        "error": {"type": "error", "error": {"type": kind, "message": message}},
    }


def _results(sub: ServerState, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every request's result line, in no particular order (as on Anthropic)."""
    manifest = {
        entry["custom_id"]: entry for entry in read_lines(sub.store, batch.get("_manifest_file_id"))
    }
    seen: set[str] = set()
    for outcome in outcomes(sub, batch):
        seen.add(outcome.custom_id)
        entry = manifest.get(outcome.custom_id, {})
        result: dict[str, Any]
        if outcome.kind == "succeeded":
            result = {"type": "succeeded", "message": _message(batch, outcome, entry)}
        elif outcome.kind == "errored":
            kind = "invalid_request_error" if 400 <= outcome.status < 500 else "api_error"
            result = _errored(kind, outcome.message)
        else:
            result = {"type": outcome.kind}
        yield {"custom_id": outcome.custom_id, "result": result}
    kind, message = missing_kind(batch)
    for custom_id, entry in manifest.items():
        if custom_id in seen:
            continue
        if entry.get("error"):
            # checked at create, shown only now: Anthropic validates each request at the end
            result = _errored("invalid_request_error", entry["error"])
        elif kind == "errored":
            result = _errored("api_error", message)
        else:
            result = {"type": kind}
        yield {"custom_id": custom_id, "result": result}


def _counts(sub: ServerState, batch: dict[str, Any]) -> dict[str, int]:
    total = batch.get("_total", 0)
    if not ended(batch):
        # as on Anthropic: every request counts as processing until the whole batch ends
        return {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    counts = batch.get("_counts")
    if counts is None:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for line in _results(sub, batch):
            counts[line["result"]["type"]] += 1
        sub.store.update_batch(batch["id"], _counts=counts)
    return dict(counts)


def _public(request: Request, sub: ServerState, batch: dict[str, Any]) -> dict[str, Any]:
    with sub.store.lock:
        batch = dict(batch)
    status = batch["status"]
    done = ended(batch)
    ended_at = next(
        (
            batch[key]
            for key in ("completed_at", "failed_at", "expired_at", "cancelled_at")
            if batch.get(key) is not None
        ),
        None,
    )
    batch_id = _public_id(batch)
    root = str(request.base_url).rstrip("/")
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "ended"
        if done
        else ("canceling" if status == "cancelling" else "in_progress"),
        "request_counts": _counts(sub, batch),
        "ended_at": iso(ended_at) if done else None,
        "created_at": iso(batch["created_at"]),
        "expires_at": iso(batch["expires_at"]),
        "archived_at": None,
        "cancel_initiated_at": iso(batch.get("cancelling_at")),
        "results_url": f"{root}/v1/messages/batches/{batch_id}/results" if done else None,
    }


def _lost_answer(config: ServerConfig, error: ApiError) -> Response:
    """What a create carried out answers when its answer is lost (``anthropic_lost_creates``): the
    connection cut once the headers are out (``lost_create_answer="drop"``), or a 500."""
    if config.lost_create_answer == "500":
        return _json(error.body(), 500)

    def cut() -> Iterator[bytes]:
        raise DownloadCut(
            "a batch create's answer dropped (fault injection: anthropic_lost_creates)"
        )
        yield b""  # a generator: the headers go out, then the connection is cut

    return StreamingResponse(cut(), media_type="application/json")


# routes ----------------------------------------------------------------------------------------
@router.post("/v1/messages/batches")
async def create_message_batch(request: Request, state: State) -> Response:
    raw = await request.body()
    requests = await anyio.to_thread.run_sync(_check_create, raw)
    sub = sub_state(state, NAME)

    def start() -> dict[str, Any]:
        lines, manifest = _translate(requests)
        manifest_id = write_file(sub.store, manifest, filename="anthropic_requests.jsonl")
        return start_batch(
            sub,
            lines,
            name=NAME,
            extra={"_total": len(requests), "_manifest_file_id": manifest_id},
            wrap=_wrap,
        )

    batch = await anyio.to_thread.run_sync(start)
    if sub.config._take("anthropic_lost_creates"):
        return _lost_answer(sub.config, AnthropicError(500, "Internal server error (injected)"))
    return _json(_public(request, sub, batch))


@router.get("/v1/messages/batches")
def list_message_batches(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    raw = request.query_params.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise AnthropicError(400, f"limit: Input should be an integer from 1 to 1000 (got {raw!r})")
    with sub.store.lock:
        items = list(sub.store.batches.values())
    items.reverse()  # newest first
    ids = [_public_id(b) for b in items]
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    for cursor in (after, before):
        if cursor is not None and cursor not in ids:
            raise AnthropicError(400, f"No Message Batch with id {cursor!r} in this list.")
    if after is not None:
        rest = items[ids.index(after) + 1 :]
        page, has_more = rest[:limit], len(rest) > limit
    elif before is not None:
        rest = items[: ids.index(before)]
        page, has_more = rest[-limit:], len(rest) > limit
    else:
        page, has_more = items[:limit], len(items) > limit
    data = [_public(request, sub, b) for b in page]
    return _json(
        {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/v1/messages/batches/{batch_id}")
def retrieve_message_batch(batch_id: str, request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    return _json(_public(request, sub, _get(sub, batch_id)))


@router.post("/v1/messages/batches/{batch_id}/cancel")
def cancel_message_batch(batch_id: str, request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = _get(sub, batch_id)
    with sub.store.lock:
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            sub.store.update_batch(
                batch["id"], status="cancelling", cancelling_at=int(sub.config.now())
            )
    # an ended batch is answered as it is; requests already done keep their results
    sub.worker.cancel(batch["id"])
    return _json(_public(request, sub, batch))


@router.delete("/v1/messages/batches/{batch_id}")
def delete_message_batch(batch_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = _get(sub, batch_id)
    if not ended(batch):
        raise AnthropicError(
            400,
            f"Message Batch {batch_id} is still processing and cannot be deleted; cancel it "
            "and delete it once it has ended.",
        )
    drop_batch(sub, batch)
    return _json({"id": batch_id, "type": "message_batch_deleted"})


@router.get("/v1/messages/batches/{batch_id}/results")
def message_batch_results(batch_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = _get(sub, batch_id)
    if not ended(batch):
        raise AnthropicError(
            404,
            f"Message Batch {batch_id} has not ended yet: its results are available once "
            "processing_status is 'ended'.",
        )

    def lines() -> Iterator[bytes]:
        for line in _results(sub, batch):
            yield orjson.dumps(line) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-jsonl")
