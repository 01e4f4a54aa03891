"""Mistral's batch jobs API on the local server, under ``/mistral/v1`` (Mistral's own paths
``/v1/files`` and ``/v1/batch/jobs`` would collide with OpenAI's ``/v1/files``, so the local
server answers as Mistral at ``<root>/mistral/v1/...``; ``MISTRAL_BASE_URL=<root>/mistral/v1``):

    POST /mistral/v1/files                          upload (multipart ``file``, ``purpose=batch``)
    GET  /mistral/v1/files/{id}                     a file
    GET  /mistral/v1/files/{id}/content             its bytes
    POST /mistral/v1/batch/jobs                     create ({input_files, endpoint, model,
                                                    metadata, timeout_hours})
    GET  /mistral/v1/batch/jobs                     list (page, page_size; {data, object, total})
    GET  /mistral/v1/batch/jobs/{id}                retrieve
    POST /mistral/v1/batch/jobs/{id}/cancel         cancel (CANCELLATION_REQUESTED, then CANCELLED)

A job's ``{custom_id, body}`` lines run as an internal OpenAI chat-completions batch on the
server's worker and engine (``providers.py``); the job shows Mistral's statuses and counts
(``total_requests``, ``succeeded_requests``, ``failed_requests``, ``completed_requests``),
keeps its ``metadata``, and ends with an ``output_file`` (the answers) and an ``error_file``
(the requests that failed), both lines in OpenAI's output shape; requests that never ran (a
cancel, a timeout) are in neither, as assumed of Mistral. The key is a bearer token
(``dialects.py``); errors are OpenAI-shaped ``{"error": {message, type, code}}`` (assumed: no
source we read gives Mistral's error body).

    >>> httpx.post(f"{server.root_url}/mistral/v1/batch/jobs", json={...},
    ...            headers={"Authorization": f"Bearer {server.api_key}"})  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from portfolio_batch.local.app import ServerState, State, _json
from portfolio_batch.local.providers import (
    ended,
    missing_kind,
    outcomes,
    read_lines,
    start_batch,
    sub_state,
    write_file,
)
from portfolio_batch.local.store import ApiError, private_file

__all__ = ["router"]

router = APIRouter()

NAME = "mistral"
PREFIX = "/mistral/v1"
MAX_REQUESTS = 1_000_000  # providers.md
_STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}


# -- shared with together.py: files and {custom_id, body} lines ---------------------------------
async def upload(
    request: Request, sub: ServerState, *, purposes: tuple[str, ...]
) -> dict[str, Any]:
    """A multipart upload (``file`` and ``purpose``; ``file_name`` when given) kept in the
    provider's store; the stored file object."""
    form = await request.form()
    try:
        purpose = str(form.get("purpose") or "")
        if purpose not in purposes:
            raise ApiError(400, f"purpose must be one of {', '.join(purposes)} (got {purpose!r}).")
        item = form.get("file")
        if item is None or isinstance(item, str):
            raise ApiError(400, "file: Field required (a multipart file part).")
        data = await item.read()
        name = str(form.get("file_name") or item.filename or "upload.jsonl")
    finally:
        await form.close()
    limit = sub.config.max_upload_bytes
    if len(data) > limit:
        raise ApiError(413, f"The file is {len(data):,} bytes; at most {limit:,} are taken.")

    def keep() -> dict[str, Any]:
        store = sub.store
        file_id = store.new_file_id()
        with private_file(store.content_path(file_id), buffering=1 << 20) as handle:
            handle.write(data)
        obj = store.add_file(file_id, filename=name, purpose="batch", nbytes=len(data))
        return {**obj, "purpose": purpose, "num_lines": data.count(b"\n")}

    return await anyio.to_thread.run_sync(keep)


def public_file(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def file_content(sub: ServerState, file_id: str) -> Response:
    sub.store.get_file(file_id)  # 404 when unknown or expired
    path = sub.store.content_path(file_id)

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                yield block

    return StreamingResponse(chunks(), media_type="application/octet-stream")


def internal_lines(
    sub: ServerState, file_ids: Iterable[str], *, max_requests: int
) -> tuple[list[bytes], list[str]]:
    """(internal OpenAI batch lines, custom_ids) of the ``{custom_id, body}`` input files; a
    400 for a line that is not one, a repeated custom_id or too many lines."""
    lines, ids, seen = [], [], set()
    for file_id in file_ids:
        sub.store.get_file(file_id)
        for number, item in enumerate(read_lines(sub.store, file_id), 1):
            cid, body = item.get("custom_id"), item.get("body")
            if not isinstance(cid, str) or not cid or not isinstance(body, dict):
                raise ApiError(
                    400,
                    f"{file_id} line {number}: expected {{custom_id, body}} (a string and "
                    "an object).",
                )
            if cid in seen:
                raise ApiError(400, f"{file_id} line {number}: custom_id {cid!r} is repeated.")
            seen.add(cid)
            ids.append(cid)
            chat = {**body, "model": "local-" + sub.store.root.name}
            lines.append(
                orjson.dumps(
                    {
                        "custom_id": cid,
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": chat,
                    }
                )
            )
    if not lines:
        raise ApiError(400, "The input files hold no requests.")
    if len(lines) > max_requests:
        raise ApiError(400, f"{len(lines):,} requests; a batch takes at most {max_requests:,}.")
    return lines, ids


def results_files(sub: ServerState, batch: dict[str, Any]) -> dict[str, Any]:
    """Once an internal batch has ended: its counts and its output / error files as the
    provider shows them (only answers in one, only failed requests in the other; requests that
    never ran in neither), made once and kept on the batch."""
    kept = batch.get("_ended")
    if kept is not None:
        return dict(kept)
    ok = failed = 0
    errors: list[bytes] = []
    seen: set[str] = set()
    for outcome in outcomes(sub, batch):
        seen.add(outcome.custom_id)
        if outcome.kind == "succeeded":
            ok += 1
        elif outcome.kind == "errored":
            failed += 1
            errors.append(_error_line(batch, outcome.custom_id, outcome.status, outcome.message))
    kind, message = missing_kind(batch)
    if kind == "errored":  # the engine stopped: the requests it did not run failed
        for cid in batch.get("_ids") or []:
            if cid not in seen:
                failed += 1
                errors.append(_error_line(batch, cid, 500, message))
    error_file = write_file(sub.store, errors, filename=f"{NAME}_errors.jsonl") if errors else None
    kept = {
        "succeeded": ok,
        "failed": failed,
        "output_file": batch.get("output_file_id") if ok else None,
        "error_file": error_file,
    }
    sub.store.update_batch(batch["id"], _ended=kept)
    return dict(kept)


def _error_line(batch: dict[str, Any], cid: str, status: int, message: str) -> bytes:
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return orjson.dumps(
        {
            "id": f"{batch['id']}-{cid}",
            "custom_id": cid,
            "response": {
                "status_code": status or 500,
                "request_id": "",
                "body": {"error": {"message": message, "type": kind, "code": None}},
            },
            "error": None,
        }
    )


def ended_at(batch: dict[str, Any]) -> int | None:
    return next(
        (
            batch[key]
            for key in ("completed_at", "failed_at", "expired_at", "cancelled_at")
            if batch.get(key) is not None
        ),
        None,
    )


def cancel(sub: ServerState, batch: dict[str, Any]) -> None:
    with sub.store.lock:
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            sub.store.update_batch(
                batch["id"], status="cancelling", cancelling_at=int(sub.config.now())
            )
    sub.worker.cancel(batch["id"])


def get(sub: ServerState, batch_id: str, what: str) -> dict[str, Any]:
    try:
        return sub.store.get_batch(batch_id)
    except ApiError:
        raise ApiError(404, f"No {what} with id {batch_id!r}.") from None


def _wrap(exc: ApiError) -> ApiError:
    return exc


# -- Mistral's job object ----------------------------------------------------------------------
def _job(sub: ServerState, batch: dict[str, Any]) -> dict[str, Any]:
    with sub.store.lock:
        batch = dict(batch)
    total = batch.get("_total", 0)
    counts = batch.get("request_counts") or {}
    if ended(batch):
        files = results_files(sub, batch)
        ok, failed = files["succeeded"], files["failed"]
    else:
        files = {"output_file": None, "error_file": None}
        ok, failed = counts.get("completed", 0), counts.get("failed", 0)
    return {
        "id": batch["id"],
        "object": "batch",
        "input_files": batch.get("_input_files") or [],
        "metadata": batch.get("_metadata"),
        "endpoint": batch.get("_endpoint") or "/v1/chat/completions",
        "model": batch.get("_model"),
        "agent_id": None,
        "output_file": files["output_file"],
        "error_file": files["error_file"],
        "errors": [],
        "outputs": None,
        "status": _STATUS[batch["status"]],
        "created_at": batch["created_at"],
        "total_requests": total,
        "completed_requests": ok + failed,
        "succeeded_requests": ok,
        "failed_requests": failed,
        "started_at": batch.get("in_progress_at"),
        "completed_at": ended_at(batch) if ended(batch) else None,
    }


# -- routes --------------------------------------------------------------------------------------
@router.post(f"{PREFIX}/files")
async def mistral_upload(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    obj = await upload(request, sub, purposes=("batch", "fine-tune", "ocr"))
    return _json(public_file(obj))


@router.get(PREFIX + "/files/{file_id}")
def mistral_file(file_id: str, state: State) -> Response:
    return _json(public_file(sub_state(state, NAME).store.get_file(file_id)))


@router.get(PREFIX + "/files/{file_id}/content")
def mistral_file_content(file_id: str, state: State) -> Response:
    return file_content(sub_state(state, NAME), file_id)


@router.post(f"{PREFIX}/batch/jobs")
async def mistral_create_job(request: Request, state: State) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    inputs = body.get("input_files")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise ApiError(400, "input_files: a non-empty list of file ids is required.")
    if body.get("endpoint") != "/v1/chat/completions":
        raise ApiError(
            400, f"endpoint {body.get('endpoint')!r}: this server runs /v1/chat/completions."
        )
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, "metadata: an object of strings.")
    sub = sub_state(state, NAME)

    def start() -> dict[str, Any]:
        lines, ids = internal_lines(sub, inputs, max_requests=MAX_REQUESTS)
        return start_batch(
            sub,
            lines,
            name=NAME,
            extra={
                "_total": len(lines),
                "_ids": ids,
                "_input_files": inputs,
                "_metadata": metadata,
                "_model": body.get("model"),
                "_endpoint": body["endpoint"],
            },
            wrap=_wrap,
        )

    batch = await anyio.to_thread.run_sync(start)
    return _json(_job(sub, batch))


@router.get(f"{PREFIX}/batch/jobs")
def mistral_list_jobs(request: Request, state: State) -> Response:
    sub = sub_state(state, NAME)
    try:
        page = int(request.query_params.get("page", "0"))
        size = int(request.query_params.get("page_size", "100"))
    except ValueError:
        raise ApiError(400, "page and page_size are integers.") from None
    if page < 0 or not 1 <= size <= 1000:
        raise ApiError(400, "page >= 0 and 1 <= page_size <= 1000.")
    with sub.store.lock:
        items = list(sub.store.batches.values())
    items.reverse()  # newest first
    chunk = items[page * size : (page + 1) * size]
    return _json({"data": [_job(sub, b) for b in chunk], "object": "list", "total": len(items)})


@router.get(PREFIX + "/batch/jobs/{job_id}")
def mistral_get_job(job_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    return _json(_job(sub, get(sub, job_id, "batch job")))


@router.post(PREFIX + "/batch/jobs/{job_id}/cancel")
def mistral_cancel_job(job_id: str, state: State) -> Response:
    sub = sub_state(state, NAME)
    batch = get(sub, job_id, "batch job")
    cancel(sub, batch)
    return _json(_job(sub, get(sub, job_id, "batch job")))
