"""Files and batches of the local server, kept on disk under its data dir.

Each file is ``files/<id>.jsonl`` (the bytes) plus ``files/<id>.json`` (the OpenAI file object);
each batch is ``batches/<id>.json``. Objects are also held in memory (they are small); the bytes
never are. Ids are checked against a strict pattern before any path is built from them, so no id
can name a path outside the data dir. Uploaded portfolios and results are private: the
directories the store creates are 0700 and every file it writes is 0600.

    >>> store = Store(Path(tempfile.mkdtemp()))             # doctest: +SKIP
    >>> store.new_file_id()                                 # doctest: +SKIP
    'file-3f0c…'
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = [
    "ApiError",
    "Store",
    "private_dir",
    "private_file",
]

FILE_ID = re.compile(r"^file-[A-Za-z0-9]{8,64}$")
BATCH_ID = re.compile(r"^batch_[A-Za-z0-9]{8,64}$")
# Batch input files expire 30 days after upload, and batch results 30 days after the batch
# (unless its output_expires_after says otherwise), like OpenAI's.
BATCH_FILE_TTL = 30 * 24 * 3600


class ApiError(Exception):
    """An error answered in OpenAI's shape ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def private_file(path: str | os.PathLike[str], buffering: int = -1) -> IO[bytes]:
    """``path`` opened for writing (truncated), created readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb", buffering=buffering)


def private_dir(path: Path) -> Path:
    """``path`` as a directory, created with its missing parents as 0700 (owner only)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another thread or process
            pass
        else:
            os.chmod(directory, 0o700)  # whatever the umask
    return path


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    # Write-then-rename so a reader (or a crash) never sees half an object.
    tmp = path.with_name(path.name + ".tmp")
    with private_file(tmp) as handle:
        handle.write(orjson.dumps(obj))
    os.replace(tmp, path)


class Store:
    """Thread-safe registry of file and batch objects under ``data_dir``."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(data_dir)
        # the server's clock (ServerConfig.now): files expire by it, like OpenAI deleting them
        self.clock = clock
        self.files_dir = self.root / "files"
        self.batches_dir = self.root / "batches"
        # owner only, also a data dir made by someone else's mkdir or an earlier version
        for directory in (self.root, self.files_dir, self.batches_dir):
            private_dir(directory)
            os.chmod(directory, 0o700)
        self.lock = threading.RLock()
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        # A server restarted on the same data dir sees the objects it had.
        for directory, pattern, target in (
            (self.files_dir, FILE_ID, self.files),
            (self.batches_dir, BATCH_ID, self.batches),
        ):
            found = []
            for path in directory.glob("*.json"):
                if pattern.match(path.stem):
                    obj = orjson.loads(path.read_bytes())
                    if "output_expires_after" in obj:  # kept in public by earlier versions
                        obj["_output_expires_after"] = obj.pop("output_expires_after")
                    found.append((obj.get("created_at", 0), obj.get("_seq", 0), obj))
            for _, _, obj in sorted(found, key=lambda item: (item[0], item[1])):
                target[obj["id"]] = obj

    # ids and paths -------------------------------------------------------------------------
    @staticmethod
    def new_file_id() -> str:
        return "file-" + secrets.token_hex(12)

    @staticmethod
    def new_batch_id() -> str:
        return "batch_" + secrets.token_hex(12)

    def content_path(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise ApiError(404, f"No such File object: {file_id}", param="file_id")
        return self.files_dir / f"{file_id}.jsonl"

    def partial_path(self, file_id: str) -> Path:
        return self.content_path(file_id).with_suffix(".part")

    # files ---------------------------------------------------------------------------------
    def add_file(
        self,
        file_id: str,
        *,
        filename: str,
        purpose: str,
        nbytes: int,
        expires_after: int | None = None,
    ) -> dict[str, Any]:
        now = int(self.clock())
        if expires_after is None and purpose in ("batch", "batch_output"):
            expires_after = BATCH_FILE_TTL
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": nbytes,
            "created_at": now,
            "expires_at": now + expires_after if expires_after else None,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        with self.lock:
            obj["_seq"] = len(self.files) + time.monotonic_ns()
            self.files[file_id] = obj
            _write_json(self.files_dir / f"{file_id}.json", obj)
        return self.public(obj)

    def get_file(self, file_id: str) -> dict[str, Any]:
        self.content_path(file_id)  # validates the id
        with self.lock:
            obj = self.files.get(file_id)
        if obj is None or self._expired(obj):
            raise ApiError(404, f"No such File object: {file_id}", param="file_id")
        return obj

    def _expired(self, obj: dict[str, Any]) -> bool:
        expires_at = obj.get("expires_at")
        return expires_at is not None and expires_at <= self.clock()

    def delete_file(self, file_id: str) -> dict[str, Any]:
        path = self.content_path(file_id)
        with self.lock:
            if file_id not in self.files or self._expired(self.files[file_id]):
                raise ApiError(404, f"No such File object: {file_id}", param="file_id")
            del self.files[file_id]
            (self.files_dir / f"{file_id}.json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def list_files(
        self, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        with self.lock:
            items = [
                f
                for f in self.files.values()
                if (purpose is None or f["purpose"] == purpose) and not self._expired(f)
            ]
        if order == "desc":
            items.reverse()
        return self._page(items, limit=limit, after=after, kind="File")

    # batches -------------------------------------------------------------------------------
    def add_batch(self, obj: dict[str, Any]) -> None:
        with self.lock:
            obj["_seq"] = time.monotonic_ns()
            self.batches[obj["id"]] = obj
            self.save_batch(obj)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        if not BATCH_ID.match(batch_id):
            raise ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
        with self.lock:
            obj = self.batches.get(batch_id)
        if obj is None:
            raise ApiError(404, f"No such Batch object: {batch_id}", param="batch_id")
        return obj

    def save_batch(self, obj: dict[str, Any]) -> None:
        with self.lock:
            _write_json(self.batches_dir / f"{obj['id']}.json", obj)

    def update_batch(self, batch_id: str, **fields: Any) -> dict[str, Any]:
        """Set fields (e.g. a new status and its ``*_at``) and persist the batch."""
        with self.lock:
            obj = self.batches[batch_id]
            obj.update(fields)
            self.save_batch(obj)
            return obj

    def list_batches(self, *, limit: int, after: str | None) -> dict[str, Any]:
        with self.lock:
            items = list(self.batches.values())
        items.reverse()  # newest first, like OpenAI
        return self._page(items, limit=limit, after=after, kind="Batch")

    def batches_with(self, statuses: Iterable[str]) -> list[dict[str, Any]]:
        wanted = set(statuses)
        with self.lock:
            return [b for b in self.batches.values() if b["status"] in wanted]

    # helpers -------------------------------------------------------------------------------
    def public(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of the object as the API returns it (internal ``_`` fields dropped)."""
        with self.lock:
            return orjson.loads(orjson.dumps({k: v for k, v in obj.items() if k[0] != "_"}))

    def _page(
        self, items: list[dict[str, Any]], *, limit: int, after: str | None, kind: str
    ) -> dict[str, Any]:
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise ApiError(
                    400,
                    f"Invalid 'after': no {kind} object with id {after!r} in this list.",
                    param="after",
                )
            items = items[ids.index(after) + 1 :]
        with self.lock:
            page = [self.public(item) for item in items[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
