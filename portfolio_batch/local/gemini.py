"""Gemini's Batch API (Developer API, file mode) on the local server, as ``google-genai`` calls it:

    POST   /upload/v1beta/files                          resumable upload: start (X-Goog-Upload-*)
    POST   /upload/v1beta/files?upload_id=...            upload / "upload, finalize" chunks
    GET    /v1beta/files, /v1beta/files/{name}           list, get
    DELETE /v1beta/files/{name}
    GET    /v1beta/files/{name}:download?alt=media       a batch's responses file
    POST   /v1beta/models/{model}:batchGenerateContent   create ({"batch": {inputConfig.fileName}})
    GET    /v1beta/batches, /v1beta/batches/{name}       list, get (an Operation; metadata.state)
    POST   /v1beta/batches/{name}:cancel
    DELETE /v1beta/batches/{name}

Each input line ``{"key", "request": GenerateContentRequest}`` (contents, systemInstruction,
generationConfig with responseMimeType / responseSchema / responseJsonSchema / maxOutputTokens /
temperature) becomes an OpenAI chat-completions line of an internal batch run by the server's
worker and engine; the responses file has ``{"key", "response": {candidates, usageMetadata,
modelVersion}}`` or ``{"key", "status": {code, message}}`` per line. Inline requests are refused:
file mode with keys is the path whose results join back by key.

Knobs (``serve(**config)`` / ``configure``): ``gemini_shuffle_results`` writes the responses file
in a shuffled order (seeded), not input order; ``gemini_stuck_jobs`` makes jobs created while it
is on stay ``BATCH_STATE_RUNNING`` once done, past the 24 h window, until they expire at 48 h
with no responses file (python-genai #1482, #2974).

    >>> client = genai.Client(api_key=server.api_key,
    ...     http_options=types.HttpOptions(base_url=server.root_url))       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response, StreamingResponse

from portfolio_batch.local.app import DownloadCut, ServerState, State, _json
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.dialects import GeminiError
from portfolio_batch.local.providers import (
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
from portfolio_batch.local.store import ApiError, private_file

__all__ = ["MAX_FILE_BYTES", "router"]

router = APIRouter()

NAME = "gemini"
MAX_FILE_BYTES = 2 * 1024**3
# Uploaded files are kept 48 h, as on Gemini; a stuck job expires 48 h after creation.
FILE_TTL = 48 * 3600
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
# google.rpc.Code numbers of the per-line statuses
_CODES = {"invalid": 3, "canceled": 1, "expired": 4, "internal": 13}
_STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
}
_LOCK = threading.Lock()


def _wrap(exc: ApiError) -> ApiError:
    error = GeminiError(exc.status, exc.message)
    error.headers = exc.headers
    return error


# files -----------------------------------------------------------------------------------------
def _store_id(name: str) -> str:
    """The store's file id of a Gemini file name (``files/<hex>`` or ``files/batch-<hex>``)."""
    name = name.removeprefix("files/").removeprefix("batch-")
    return "file-" + name


def _file_name(obj: dict[str, Any]) -> str:
    hexid = obj["id"][len("file-") :]
    return "files/" + ("batch-" + hexid if obj["purpose"] == "batch_output" else hexid)


def _get_file(sub: ServerState, name: str) -> dict[str, Any]:
    try:
        obj = sub.store.get_file(_store_id(name))
    except ApiError:
        raise GeminiError(
            403,
            f"You do not have permission to access the File {name} or it may not exist.",
        ) from None
    if _file_name(obj) != "files/" + name.removeprefix("files/"):
        raise GeminiError(403, f"You do not have permission to access the File {name}.")
    return obj


def _public_file(request: Request, obj: dict[str, Any]) -> dict[str, Any]:
    name = _file_name(obj)
    root = str(request.base_url).rstrip("/")
    generated = obj["purpose"] == "batch_output"
    public = {
        "name": name,
        "displayName": obj.get("_display_name") or obj["filename"],
        "mimeType": obj.get("_mime_type") or "application/jsonl",
        "sizeBytes": str(obj["bytes"]),
        "createTime": iso(obj["created_at"]),
        "updateTime": iso(obj["created_at"]),
        "expirationTime": iso(obj["expires_at"]),
        "sha256Hash": obj.get("_sha256", ""),
        "uri": f"{root}/v1beta/{name}",
        "state": "ACTIVE",
        "source": "GENERATED" if generated else "UPLOADED",
    }
    if generated:
        public["downloadUri"] = f"{root}/v1beta/{name}:download?alt=media"
    return public


def _annotate(sub: ServerState, file_id: str, **fields: Any) -> None:
    """Keep Gemini's own file fields on the store's file object (private, persisted)."""
    store = sub.store
    with store.lock:
        obj = store.files[file_id]
        obj.update(fields)
        path = store.files_dir / f"{file_id}.json"
        tmp = path.with_name(path.name + ".tmp")
        with private_file(tmp) as handle:
            handle.write(orjson.dumps(obj))
        tmp.replace(path)


@dataclass
class _Upload:
    store_root: Path
    file_id: str
    size: int
    mime_type: str
    display_name: str | None
    received: int = 0


_UPLOADS: dict[str, _Upload] = {}


@router.post("/upload/v1beta/files")
async def upload_file(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    upload_id = request.query_params.get("upload_id")
    if upload_id is None:
        return await _start_upload(request, sub)
    return await _upload_chunk(request, sub, upload_id)


async def _start_upload(request: Request, sub: ServerState) -> Response:
    headers = request.headers
    if headers.get("x-goog-upload-protocol") != "resumable" or (
        headers.get("x-goog-upload-command") != "start"
    ):
        raise GeminiError(
            400,
            "Only resumable uploads are served: send X-Goog-Upload-Protocol: resumable and "
            "X-Goog-Upload-Command: start.",
        )
    try:
        size = int(headers.get("x-goog-upload-header-content-length", ""))
    except ValueError:
        raise GeminiError(400, "X-Goog-Upload-Header-Content-Length is required.") from None
    if not 0 < size <= MAX_FILE_BYTES:
        raise GeminiError(
            400, f"A file must be 1 byte to {MAX_FILE_BYTES:,} bytes (2 GB); this one is {size:,}."
        )
    raw = await request.body()
    try:
        meta = (orjson.loads(raw) if raw else {}).get("file") or {}
    except (orjson.JSONDecodeError, AttributeError):
        raise GeminiError(400, "The request body is not a JSON object.") from None
    upload_id = secrets.token_urlsafe(24)
    _UPLOADS[upload_id] = _Upload(
        store_root=sub.store.root,
        file_id=sub.store.new_file_id(),
        size=size,
        # google-genai sends the File in snake_case, the REST docs in camelCase
        mime_type=meta.get("mimeType")
        or meta.get("mime_type")
        or headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
        display_name=meta.get("displayName") or meta.get("display_name"),
    )
    root = str(request.base_url).rstrip("/")
    return Response(
        b"",
        headers={
            "x-goog-upload-url": f"{root}/upload/v1beta/files?upload_id={upload_id}"
            "&upload_protocol=resumable",
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": str(8 * 1024 * 1024),
        },
    )


async def _upload_chunk(request: Request, sub: ServerState, upload_id: str) -> Response:
    session = _UPLOADS.get(upload_id)
    if session is None or session.store_root != sub.store.root:
        raise GeminiError(404, "No upload session with this upload_id (finished or unknown).")
    command = {c.strip() for c in request.headers.get("x-goog-upload-command", "").split(",")}
    offset = request.headers.get("x-goog-upload-offset", "")
    if not command <= {"upload", "finalize"} or "upload" not in command:
        raise GeminiError(400, "X-Goog-Upload-Command must be 'upload' or 'upload, finalize'.")
    if offset != str(session.received):
        raise GeminiError(
            400, f"X-Goog-Upload-Offset is {offset!r}; the upload has {session.received} bytes."
        )
    chunk = await request.body()
    if session.received + len(chunk) > session.size:
        _UPLOADS.pop(upload_id, None)
        raise GeminiError(400, "More bytes were sent than X-Goog-Upload-Header-Content-Length.")
    partial = sub.store.partial_path(session.file_id)
    with open(partial, "ab") as handle:
        handle.write(chunk)
    session.received += len(chunk)
    if "finalize" not in command:
        return Response(b"", headers={"x-goog-upload-status": "active"})
    _UPLOADS.pop(upload_id, None)
    if session.received != session.size:
        partial.unlink(missing_ok=True)
        raise GeminiError(
            400,
            f"The upload was finalized at {session.received} bytes; it announced {session.size}.",
        )
    final = sub.store.content_path(session.file_id)
    partial.replace(final)
    digest = base64.b64encode(hashlib.sha256(final.read_bytes()).digest()).decode()
    sub.store.add_file(
        session.file_id,
        filename=session.display_name or session.file_id,
        purpose="batch",
        nbytes=session.size,
        expires_after=FILE_TTL,
    )
    _annotate(
        sub,
        session.file_id,
        _mime_type=session.mime_type,
        _display_name=session.display_name,
        _sha256=digest,
    )
    obj = sub.store.files[session.file_id]
    return Response(
        orjson.dumps({"file": _public_file(request, obj)}),
        media_type="application/json",
        headers={"x-goog-upload-status": "final"},
    )


@router.get("/v1beta/files")
def list_files(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    with sub.store.lock:
        items = [f for f in sub.store.files.values() if not sub.store._expired(f)]
    items = [f for f in items if f.get("_mime_type") or f["purpose"] == "batch_output"]
    return _json({"files": [_public_file(request, f) for f in reversed(items)]})


@router.get("/v1beta/files/{name}:download")
def download_file(name: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    obj = _get_file(sub, name)
    return FileResponse(sub.store.content_path(obj["id"]), media_type="application/octet-stream")


@router.get("/v1beta/files/{name}")
def get_file(name: str, request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    return _json(_public_file(request, _get_file(sub, name)))


@router.delete("/v1beta/files/{name}")
def delete_file(name: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    sub.store.delete_file(_get_file(sub, name)["id"])
    return _json({})


# requests -> OpenAI chat lines -----------------------------------------------------------------
class _Invalid(Exception):
    """A line's request is not valid: its result line carries an INVALID_ARGUMENT status."""


def _parts_text(content: Any, where: str) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise _Invalid(f"{where}.parts: must be a non-empty list")
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "\n".join(texts)


def json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset ``responseSchema`` (``type: "OBJECT"``, ``nullable``) as JSON
    Schema.

    >>> json_schema({"type": "OBJECT", "properties": {"a": {"type": "STRING"}}})
    {'type': 'object', 'properties': {'a': {'type': 'string'}}}
    """
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("propertyOrdering", "nullable", "format", "example"):
            continue
        if key == "type" and isinstance(value, str):
            out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out["properties"] = {k: json_schema(v) for k, v in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = json_schema(value)
        else:
            out[key] = value
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def to_chat(request: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI chat-completions body of a GenerateContentRequest.

    >>> to_chat({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})["messages"]
    [{'role': 'user', 'content': 'hi'}]
    """
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("contents: must be a non-empty list")
    messages: list[dict[str, Any]] = []
    system = request.get("systemInstruction", request.get("system_instruction"))
    if system is not None:
        messages.append({"role": "system", "content": _parts_text(system, "systemInstruction")})
    for index, content in enumerate(contents):
        role = content.get("role", "user") if isinstance(content, dict) else None
        if role not in ("user", "model"):
            raise _Invalid(f"contents[{index}].role: must be 'user' or 'model'")
        messages.append(
            {
                "role": "assistant" if role == "model" else "user",
                "content": _parts_text(content, f"contents[{index}]"),
            }
        )
    body: dict[str, Any] = {"model": "local-gemini", "messages": messages}
    config = request.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise _Invalid("generationConfig: must be an object")
    max_tokens = config.get("maxOutputTokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _Invalid("generationConfig.maxOutputTokens: must be a positive integer")
        body["max_tokens"] = max_tokens
    temperature = config.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise _Invalid("generationConfig.temperature: must be between 0 and 2")
        body["temperature"] = temperature
    schema = config.get("responseJsonSchema")
    if schema is None and config.get("responseSchema") is not None:
        schema = json_schema(config["responseSchema"])
    mime = config.get("responseMimeType", "text/plain")
    if schema is not None:
        if mime != "application/json":
            raise _Invalid(
                "generationConfig.responseMimeType: a responseSchema needs 'application/json'"
            )
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    elif mime == "application/json":
        body["response_format"] = {"type": "json_object"}
    return body


def _translate(path: Path) -> tuple[list[bytes], list[bytes], int]:
    """(internal lines, manifest lines ``{key, error}`` in input order, number of requests);
    GeminiError for a file that cannot be a batch (no key, a repeated key, not JSON lines)."""
    lines, manifest = [], []
    seen: set[str] = set()
    with open(path, "rb", buffering=1 << 20) as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise GeminiError(400, f"Line {number} of the input file is not JSON.") from None
            key = line.get("key") if isinstance(line, dict) else None
            if not isinstance(key, str) or not key:
                raise GeminiError(
                    400,
                    f'Line {number} has no string "key"; each line is '
                    '{"key": ..., "request": GenerateContentRequest}.',
                )
            if key in seen:
                raise GeminiError(
                    400, f"Line {number} repeats the key {key!r}; keys must be unique."
                )
            seen.add(key)
            entry: dict[str, Any] = {"key": key}
            request = line.get("request")
            try:
                if not isinstance(request, dict):
                    raise _Invalid("request: must be a GenerateContentRequest object")
                body = to_chat(request)
            except _Invalid as exc:
                entry["error"] = str(exc)
            else:
                lines.append(
                    orjson.dumps(
                        {
                            "custom_id": key,
                            "method": "POST",
                            "url": "/v1/chat/completions",
                            "body": body,
                        }
                    )
                )
            manifest.append(orjson.dumps(entry))
    if not seen:
        raise GeminiError(400, "The input file has no requests.")
    return lines, manifest, len(seen)


# batches ---------------------------------------------------------------------------------------
def _batch_name(batch: dict[str, Any]) -> str:
    return "batches/" + batch["id"][len("batch_") :]


def _get(sub: ServerState, name: str) -> dict[str, Any]:
    try:
        return sub.store.get_batch("batch_" + name.removeprefix("batches/"))
    except ApiError:
        raise GeminiError(404, f"Requested entity was not found: batches/{name}.") from None


def _stuck(sub: ServerState, batch: dict[str, Any]) -> str | None:
    """For a job made under ``gemini_stuck_jobs``: RUNNING until 48 h, then EXPIRED."""
    if not batch.get("_stuck"):
        return None
    if sub.config.now() < batch["created_at"] + FILE_TTL:
        return "BATCH_STATE_RUNNING"
    return "BATCH_STATE_EXPIRED"


def _state(sub: ServerState, batch: dict[str, Any]) -> str:
    return _stuck(sub, batch) or _STATES[batch["status"]]


def _response(outcome_body: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (outcome_body.get("choices") or [{}])[0]
    text = (choice.get("message") or {}).get("content") or ""
    usage = outcome_body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    prompt, output = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": text}], "role": "model"},
                "finishReason": "MAX_TOKENS" if choice.get("finish_reason") == "length" else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
            "cachedContentTokenCount": cached,
        },
        "modelVersion": model,
    }


def _result_lines(sub: ServerState, batch: dict[str, Any]) -> list[bytes]:
    """The responses file's lines, in input order unless ``gemini_shuffle_results``."""
    model = batch["_model"].removeprefix("models/")
    by_key: dict[str, dict[str, Any]] = {}
    for outcome in outcomes(sub, batch):
        if outcome.kind == "succeeded":
            by_key[outcome.custom_id] = {
                "key": outcome.custom_id,
                "response": _response(outcome.body or {}, model),
            }
        else:
            code = _CODES["invalid" if 400 <= outcome.status < 500 else "internal"]
            code = _CODES.get(outcome.kind, code)
            message = outcome.message or outcome.kind
            by_key[outcome.custom_id] = {
                "key": outcome.custom_id,
                "status": {"code": code, "message": message},
            }
    kind, message = missing_kind(batch)
    lines = []
    for entry in read_lines(sub.store, batch["_manifest_file_id"]):
        key = entry["key"]
        line = by_key.get(key)
        if line is None:
            if entry.get("error"):
                status = {"code": _CODES["invalid"], "message": entry["error"]}
            else:
                status = {"code": _CODES.get(kind, _CODES["internal"]), "message": message or kind}
            line = {"key": key, "status": status}
        lines.append(orjson.dumps(line))
    if sub.config.gemini_shuffle_results:
        with sub.config._lock:
            sub.config._rng.shuffle(lines)
    return lines


def _responses_file(sub: ServerState, batch: dict[str, Any]) -> str | None:
    """The store id of an ended job's responses file, written at first ask."""
    if not ended(batch) or _stuck(sub, batch):
        return None
    with _LOCK:
        file_id: str | None = batch.get("_responses_file_id")
        if file_id is None:
            file_id = write_file(
                sub.store, _result_lines(sub, batch), filename=f"{_batch_name(batch)}.jsonl"
            )
            sub.store.update_batch(batch["id"], _responses_file_id=file_id)
        return file_id


def _stats(sub: ServerState, batch: dict[str, Any]) -> dict[str, str]:
    total = batch["_total"]
    rejected = batch["_rejected"]
    counts = batch.get("request_counts") or {}
    done, failed = counts.get("completed", 0), counts.get("failed", 0) + rejected
    if ended(batch):
        failed = total - done
    if _stuck(sub, batch) == "BATCH_STATE_EXPIRED":
        done, failed = 0, total
    return {
        "requestCount": str(total),
        "successfulRequestCount": str(done),
        "failedRequestCount": str(failed),
        "pendingRequestCount": str(max(0, total - done - failed)),
    }


def _operation(sub: ServerState, batch: dict[str, Any]) -> dict[str, Any]:
    state = _state(sub, batch)
    terminal = state not in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING")
    responses = _responses_file(sub, batch) if terminal else None
    with sub.store.lock:
        batch = dict(batch)
    name = _batch_name(batch)
    end_keys = ("completed_at", "failed_at", "expired_at", "cancelled_at")
    end = next((batch[k] for k in end_keys if batch.get(k) is not None), None)
    if _stuck(sub, batch) == "BATCH_STATE_EXPIRED":
        end = batch["created_at"] + FILE_TTL
    metadata: dict[str, Any] = {
        "@type": _BATCH_TYPE,
        "model": batch["_model"],
        "displayName": batch.get("_display_name") or "",
        "inputConfig": {"fileName": batch["_input_name"]},
        "createTime": iso(batch["created_at"]),
        "updateTime": iso(end or batch.get("in_progress_at") or batch["created_at"]),
        "batchStats": _stats(sub, batch),
        "state": state,
        "name": name,
    }
    operation: dict[str, Any] = {"name": name, "metadata": metadata, "done": terminal}
    if terminal:
        metadata["endTime"] = iso(end)
    if responses is not None:
        output_name = _file_name(sub.store.files[responses])
        metadata["output"] = {"responsesFile": output_name}
        operation["response"] = {"@type": _OUTPUT_TYPE, "responsesFile": output_name}
    if state == "BATCH_STATE_FAILED":
        errors = (batch.get("errors") or {}).get("data") or [{}]
        operation["error"] = {"code": 13, "message": errors[0].get("message", "failed")}
    return operation


def _lost_answer(config: ServerConfig, error: ApiError) -> Response:
    """What a create carried out answers when its answer is lost (``gemini_lost_creates``): the
    connection cut once the headers are out (``lost_create_answer="drop"``), or a 500."""
    if config.lost_create_answer == "500":
        return _json(error.body(), 500)

    def cut() -> Iterator[bytes]:
        raise DownloadCut("a batch create's answer dropped (fault injection: gemini_lost_creates)")
        yield b""  # a generator: the headers go out, then the connection is cut

    return StreamingResponse(cut(), media_type="application/json")


@router.post("/v1beta/models/{model}:batchGenerateContent")
async def create_batch(model: str, request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GeminiError(400, "The request body is not valid JSON.") from None
    spec = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(spec, dict):
        raise GeminiError(400, "batch: required.")
    source = spec.get("inputConfig") or {}
    if "requests" in source:
        raise GeminiError(
            400,
            "The local server serves file mode only: upload a JSONL file of "
            '{"key", "request"} lines and pass its name (inline results are not keyed).',
        )
    file_name = source.get("fileName")
    if not isinstance(file_name, str):
        raise GeminiError(400, "batch.inputConfig.fileName: required.")
    input_file = _get_file(sub, file_name)
    lines, manifest, total = await anyio.to_thread.run_sync(
        _translate, sub.store.content_path(input_file["id"])
    )

    def start() -> dict[str, Any]:
        manifest_id = write_file(sub.store, manifest, filename="gemini_requests.jsonl")
        return start_batch(
            sub,
            lines,
            name=NAME,
            extra={
                "_total": total,
                "_rejected": total - len(lines),
                "_manifest_file_id": manifest_id,
                "_model": "models/" + model.removeprefix("models/"),
                "_display_name": spec.get("displayName"),
                "_input_name": _file_name(input_file),
                "_stuck": bool(sub.config.gemini_stuck_jobs),
            },
            wrap=_wrap,
        )

    batch = await anyio.to_thread.run_sync(start)
    if sub.config._take("gemini_lost_creates"):
        return _lost_answer(sub.config, GeminiError(500, "Internal error (injected)"))
    return _json(_operation(sub, batch))


@router.get("/v1beta/batches")
def list_batches(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    try:
        size = int(request.query_params.get("pageSize", "50"))
    except ValueError:
        size = 0
    if not 1 <= size <= 1000:
        raise GeminiError(400, "pageSize must be an integer from 1 to 1000.")
    with sub.store.lock:
        items = list(sub.store.batches.values())
    items.reverse()  # newest first
    token = request.query_params.get("pageToken")
    start = 0
    if token:
        names = [_batch_name(b) for b in items]
        if token not in names:
            raise GeminiError(400, f"Invalid pageToken {token!r}.")
        start = names.index(token) + 1
    page = items[start : start + size]
    answer: dict[str, Any] = {"operations": [_operation(sub, b) for b in page]}
    if start + size < len(items) and page:
        answer["nextPageToken"] = _batch_name(page[-1])
    return _json(answer)


@router.post("/v1beta/batches/{name}:cancel")
def cancel_batch(name: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = _get(sub, name)
    with sub.store.lock:
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            sub.store.update_batch(
                batch["id"], status="cancelling", cancelling_at=int(sub.config.now())
            )
    sub.worker.cancel(batch["id"])
    return _json({})


@router.get("/v1beta/batches/{name}")
def get_batch(name: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    return _json(_operation(sub, _get(sub, name)))


@router.delete("/v1beta/batches/{name}")
def delete_batch(name: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = _get(sub, name)
    if not ended(batch):
        raise GeminiError(
            400,
            f"batches/{name} is still running; cancel it (batches.cancel) and delete it once "
            "it has ended.",
        )
    responses = batch.get("_responses_file_id")
    drop_batch(sub, batch)
    if responses and responses in sub.store.files:
        sub.store.delete_file(responses)
    return _json({})
