"""Together AI's Batch API on the local server, under ``/together/v1`` (Together's own
``/v1/batches`` would collide with OpenAI's, so the local server answers as Together at
``<root>/together/v1/...``; ``TOGETHER_BASE_URL=<root>/together/v1``):

    POST /together/v1/files/upload                 upload (multipart ``file``, ``file_name``,
                                                   ``purpose=batch-api``, ``file_type``)
    GET  /together/v1/files/{id}                   a file (its ``filename``)
    GET  /together/v1/files/{id}/content           its bytes
    POST /together/v1/batches                      create ({input_file_id, endpoint,
                                                   completion_window, model_id}) -> {job, warning}
    GET  /together/v1/batches                      list (a JSON array)
    GET  /together/v1/batches/{id}                 retrieve
    POST /together/v1/batches/{id}/cancel          cancel (CANCELING, then CANCELLED)

The ``{custom_id, body}`` lines run as an internal OpenAI chat-completions batch on the
server's worker and engine (``providers.py``, shared helpers in ``mistral.py``); the batch
shows Together's statuses, ``progress`` (0-100), ISO times, no request counts and no metadata,
as Together does, and ends with an ``output_file_id`` (answers) and an ``error_file_id``
(failed requests), lines in OpenAI's output shape (assumed of Together).

    >>> httpx.get(f"{server.root_url}/together/v1/batches",
    ...           headers={"Authorization": f"Bearer {server.api_key}"})  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from portfolio_batch.local.app import ServerState, State, _json
from portfolio_batch.local.mistral import (
    cancel,
    ended_at,
    file_content,
    get,
    internal_lines,
    public_file,
    results_files,
    upload,
)
from portfolio_batch.local.providers import ended, iso, start_batch, sub_state
from portfolio_batch.local.store import ApiError

__all__ = ["router"]

router = APIRouter()

NAME = "together"
PREFIX = "/together/v1"
MAX_REQUESTS = 50_000  # providers.md
_STATUS = {
    "validating": "VALIDATING",
    "in_progress": "IN_PROGRESS",
    "finalizing": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "expired": "EXPIRED",
    "cancelling": "CANCELING",
    "cancelled": "CANCELLED",
}


def _wrap(exc: ApiError) -> ApiError:
    return exc


def _job(sub: ServerState, batch: dict[str, Any]) -> dict[str, Any]:
    with sub.store.lock:
        batch = dict(batch)
    total = batch.get("_total", 0) or 1
    counts = batch.get("request_counts") or {}
    done = ended(batch)
    files = results_files(sub, batch) if done else {"output_file": None, "error_file": None}
    progress = (
        100.0 if done else 100.0 * (counts.get("completed", 0) + counts.get("failed", 0)) / total
    )
    errors = (batch.get("errors") or {}).get("data") or []
    return {
        "id": batch["id"],
        "user_id": "local",
        "input_file_id": batch.get("_input_file"),
        "file_size_bytes": batch.get("_input_bytes", 0),
        "status": _STATUS[batch["status"]],
        "job_deadline": iso(batch["expires_at"]),
        "created_at": iso(batch["created_at"]),
        "endpoint": batch.get("_endpoint") or "/v1/chat/completions",
        "progress": round(progress, 1),
        "model_id": batch.get("_model"),
        "output_file_id": files["output_file"],
        "error_file_id": files["error_file"],
        "error": errors[0].get("message") if errors else None,
        "completed_at": iso(ended_at(batch)) if done else None,
    }


@router.post(f"{PREFIX}/files/upload")
async def together_upload(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    obj = await upload(request, sub, purposes=("batch-api", "fine-tune", "eval"))
    return _json({**public_file(obj), "Processed": True, "FileType": "jsonl"})


@router.get(PREFIX + "/files/{file_id}")
def together_file(file_id: str, state: State) -> Response:
    return _json(public_file(sub_state(state, NAME).store.get_file(file_id)))


@router.get(PREFIX + "/files/{file_id}/content")
def together_file_content(file_id: str, state: State) -> Response:
    return file_content(sub_state(state, NAME), file_id)


@router.post(f"{PREFIX}/batches")
async def together_create(request: Request, state: State) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
        raise ApiError(400, "input_file_id: Field required.")
    if body.get("endpoint") != "/v1/chat/completions":
        raise ApiError(
            400, f"endpoint {body.get('endpoint')!r}: this server runs /v1/chat/completions."
        )
    sub = sub_state(state, NAME)
    file_id = body["input_file_id"]

    def start() -> dict[str, Any]:
        lines, ids = internal_lines(sub, [file_id], max_requests=MAX_REQUESTS)
        return start_batch(
            sub,
            lines,
            name=NAME,
            extra={
                "_total": len(lines),
                "_ids": ids,
                "_input_file": file_id,
                "_input_bytes": sub.store.get_file(file_id)["bytes"],
                "_model": body.get("model_id"),
                "_endpoint": body["endpoint"],
            },
            wrap=_wrap,
        )

    batch = await anyio.to_thread.run_sync(start)
    return _json({"job": _job(sub, batch), "warning": None})


@router.get(f"{PREFIX}/batches")
def together_list(state: State) -> Response:
    sub = sub_state(state, NAME)
    with sub.store.lock:
        items = list(sub.store.batches.values())
    return _json([_job(sub, b) for b in items])  # in creation order; the client sorts


@router.get(PREFIX + "/batches/{batch_id}")
def together_get(batch_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    return _json(_job(sub, get(sub, batch_id, "batch")))


@router.post(PREFIX + "/batches/{batch_id}/cancel")
def together_cancel(batch_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    cancel(sub, get(sub, batch_id, "batch"))
    return _json(_job(sub, get(sub, batch_id, "batch")))
