"""``POST /v1/files``: the multipart upload, parsed by Starlette (python-multipart underneath).

Starlette spools the file part to a temporary file (in memory up to 1 MiB, then on disk), so a
200 MB upload never sits in memory; the file is then copied into the data dir, 0600. Over
``max_upload_bytes`` the client gets a 400 it can read, ``file_too_large``; a body far over it
is read to its end and dropped rather than spooled (a server that answers before reading the body
can leave the client writing into a closed connection, which the SDK would retry from the start).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncGenerator
from typing import IO, Any

import anyio.to_thread
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from portfolio_batch.local.store import ApiError, Store, private_file

__all__ = ["FILE_PURPOSES", "receive_upload"]

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_MAX_FIELD_BYTES = 64 * 1024
_MAX_FIELDS = 16
# What a body may carry besides the file (the form fields, part headers, boundaries) before it
# is known to be over the limit without parsing it to the end.
_FORM_ALLOWANCE = _MAX_FIELDS * _MAX_FIELD_BYTES


class _TooLarge(Exception):
    """The body is over ``max_upload_bytes`` plus the form's allowance (read to its end)."""


class _CountedBody:
    """The request body, counted; past ``cap`` bytes the rest is read and dropped, then
    ``_TooLarge`` stops the parser."""

    def __init__(self, request: Request, cap: int) -> None:
        self.request = request
        self.cap = cap
        self.nbytes = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        stream = self.request.stream()
        async for chunk in stream:
            self.nbytes += len(chunk)
            if self.nbytes > self.cap:
                async for rest in stream:
                    self.nbytes += len(rest)
                raise _TooLarge
            yield chunk


def _too_large(what: str, nbytes: int, max_bytes: int) -> ApiError:
    return ApiError(
        400,
        f"{what} is {nbytes} bytes; this server accepts at most {max_bytes} bytes per file. "
        "Split it into smaller .jsonl files.",
        param="file",
        code="file_too_large",
    )


async def _parse(request: Request, max_bytes: int) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "Expected a multipart/form-data body with a 'file' and a 'purpose'.")
    body = _CountedBody(request, max_bytes + _FORM_ALLOWANCE)
    parser = MultiPartParser(
        request.headers,
        body.chunks(),
        max_files=1,
        max_fields=_MAX_FIELDS,
        max_part_size=_MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, f"Invalid multipart body: {exc.message}") from exc
    except _TooLarge:
        raise _too_large("The upload", body.nbytes, max_bytes) from None


def _expires_after(form: FormData) -> int | None:
    raw = form.get("expires_after[seconds]")
    if raw is None:
        return None
    try:
        seconds = int(str(raw))
    except ValueError:
        seconds = -1
    if not 3600 <= seconds <= 2_592_000:
        raise ApiError(
            400,
            "Invalid 'expires_after[seconds]': must be an integer between 3600 and 2592000.",
            param="expires_after",
        )
    return seconds


def _checked(form: FormData, max_bytes: int) -> tuple[UploadFile, str, int | None]:
    """(file, purpose, expires_after seconds) of a valid upload, else OpenAI's 400."""
    upload = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(upload, UploadFile) or upload.filename is None:
        raise ApiError(400, "Missing required parameter: 'file'.", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in FILE_PURPOSES:
        raise ApiError(
            400,
            f"Invalid value for 'purpose': {purpose!r}. Supported values are {list(FILE_PURPOSES)}.",
            param="purpose",
        )
    if upload.size is not None and upload.size > max_bytes:
        raise _too_large(f"File {upload.filename!r}", upload.size, max_bytes)
    if purpose == "batch" and not upload.filename.lower().endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
    return upload, purpose, _expires_after(form)


def _save(source: IO[bytes], path: os.PathLike[str], final: os.PathLike[str]) -> int:
    """Copy the spooled upload to ``path`` (0600), then move it to ``final``; its size."""
    source.seek(0)
    try:
        with private_file(path) as out:
            shutil.copyfileobj(source, out, 1 << 20)
            nbytes = out.tell()
    except BaseException:
        os.unlink(path)
        raise
    os.replace(path, final)
    return nbytes


async def receive_upload(request: Request, store: Store, max_bytes: int) -> dict[str, Any]:
    """Parse the upload, store the file and return its OpenAI file object."""
    form = await _parse(request, max_bytes)
    try:
        upload, purpose, expires_after = _checked(form, max_bytes)
        file_id = store.new_file_id()
        nbytes = await anyio.to_thread.run_sync(
            _save, upload.file, store.partial_path(file_id), store.content_path(file_id)
        )
    finally:
        await form.close()
    assert upload.filename is not None  # checked in _checked
    return store.add_file(
        file_id,
        filename=upload.filename,
        purpose=purpose,
        nbytes=nbytes,
        expires_after=expires_after,
    )
