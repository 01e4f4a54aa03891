"""``POST /v1/files``: the multipart upload, streamed straight into the data dir.

The file part is written chunk by chunk as it arrives (python-multipart's streaming parser), so a
200 MB upload never sits in memory; over ``max_upload_bytes`` the rest is drained and discarded
and the client gets a 400 it can read (answering before the body is read would look like a
connection error to the SDK, which would then retry the whole upload).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from portfolio_batch.local.store import ApiError, Store, private_file

__all__ = ["FILE_PURPOSES", "receive_upload"]

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_MAX_FIELD_BYTES = 64 * 1024


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _UploadSink:
    """python-multipart callbacks writing the ``file`` part to ``path``."""

    def __init__(self, path: os.PathLike[str], max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.nbytes = 0
        self.too_large = False
        self.error: str | None = None
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._out: IO[bytes] | None = None

    def callbacks(self) -> Any:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options and self._part.name == "file":
            if self._out is not None:
                self.error = "Only one 'file' part is allowed."
                return
            self._part.filename = options[b"filename"].decode("utf-8", "replace")
            self.filename = self._part.filename
            self._out = private_file(self.path)  # closed in on_part_end / close

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part.filename is not None and self._out is not None:
            self.nbytes += len(chunk)
            if self.nbytes > self.max_bytes:
                self.too_large = True
            elif not self.too_large:
                self._out.write(chunk)
        elif len(self._part.data) + len(chunk) <= _MAX_FIELD_BYTES:
            self._part.data.extend(chunk)
        else:
            self.error = f"Form field {self._part.name!r} is too long."

    def on_part_end(self) -> None:
        if self._part.filename is not None:
            self.close()
        elif self._part.name:
            self.fields[self._part.name] = self._part.data.decode("utf-8", "replace")

    def close(self) -> None:
        if self._out is not None and not self._out.closed:
            self._out.close()


async def receive_upload(request: Request, store: Store, max_bytes: int) -> dict[str, Any]:
    """Parse the upload, store the file and return its OpenAI file object."""
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "Expected a multipart/form-data body with a 'file' and a 'purpose'.")
    file_id = store.new_file_id()
    part_path = store.partial_path(file_id)
    sink = _UploadSink(part_path, max_bytes)
    parser = MultipartParser(boundary, sink.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except Exception as exc:
        sink.close()
        part_path.unlink(missing_ok=True)
        raise ApiError(400, f"Invalid multipart body: {exc}.") from exc
    sink.close()
    try:
        purpose = sink.fields.get("purpose")
        if sink.error:
            raise ApiError(400, sink.error)
        if sink.filename is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                400,
                f"Invalid value for 'purpose': {purpose!r}. Supported values are {list(FILE_PURPOSES)}.",
                param="purpose",
            )
        if sink.too_large:
            raise ApiError(
                400,
                f"File {sink.filename!r} is {sink.nbytes} bytes; this server accepts at most "
                f"{max_bytes} bytes per file. Split it into smaller .jsonl files.",
                param="file",
                code="file_too_large",
            )
        if purpose == "batch" and not sink.filename.lower().endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        expires_after = None
        if "expires_after[seconds]" in sink.fields:
            try:
                expires_after = int(sink.fields["expires_after[seconds]"])
            except ValueError:
                expires_after = -1
            if not 3600 <= expires_after <= 2_592_000:
                raise ApiError(
                    400,
                    "Invalid 'expires_after[seconds]': must be an integer between 3600 and 2592000.",
                    param="expires_after",
                )
    except ApiError:
        part_path.unlink(missing_ok=True)
        raise
    os.replace(part_path, store.content_path(file_id))
    return store.add_file(
        file_id,
        filename=sink.filename,
        purpose=purpose,
        nbytes=sink.nbytes,
        expires_after=expires_after,
    )
