"""Batch result files: their streaming, cached, resumable download. Their lines are decoded in
``decode.py``, the answers checked against the request's schema in ``validate.py``.

A file lands in ``home()/files/<file_id>.jsonl``. It is written to a ``.part`` file first, by one
downloader at a time (a lock per file in the home), and renamed only once complete, so a cached
file is always whole, two processes never write one ``.part`` at once and a re-run never
downloads it again.

    >>> from portfolio_batch.local import serve
    >>> with serve() as server:                              # an offline server holding one file
    ...     client = server.client()
    ...     file_id = client.files.create(file=("a.jsonl", b"{}\\n"), purpose="batch").id
    ...     path = download_file(file_id, client=client)
    >>> path.name == f"{file_id}.jsonl", path.read_bytes()
    (True, b'{}\\n')
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import httpx2
import openai
import tenacity

from portfolio_batch._home import cache_dir
from portfolio_batch._locks import LockBusy, home_lock
from portfolio_batch.errors import DownloadError, InputError, ResultFileGoneError

__all__ = ["download_file", "is_cached"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# How long to wait for another process downloading the same file (a large one takes minutes).
LOCK_WAIT_S = 30 * 60.0
# File ids become file names: anything else could point outside the cache.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
# Failures worth another attempt: the connection dropped or the server hiccuped. A 404 (file
# deleted, e.g. 30 days after the batch) or 401 will not heal by retrying.
_RETRYABLE: tuple[type[BaseException], ...] = (
    httpx2.TransportError,
    openai.APIConnectionError,
    openai.InternalServerError,
    openai.RateLimitError,
)


def _cache_path(file_id: str) -> Path:
    return cache_dir("files") / f"{file_id}.jsonl"


def is_cached(file_id: str) -> bool:
    """Whether ``file_id`` was downloaded whole into the cache (so the server may delete it)."""
    return bool(_SAFE_ID.match(file_id)) and _cache_path(file_id).exists()


def download_file(
    file_id: str,
    *,
    client: Any,
    attempts: int = 4,
    expected_bytes: int | None = None,
    backoff: float = 0.5,
) -> Path:
    """Download ``file_id`` into the home's ``files/`` cache and return its path.

    Streams with ``client.files.with_streaming_response.content`` in 1 MiB chunks. A cut connection
    or a size that differs from the file object's ``bytes`` is retried up to ``attempts`` times;
    when the server honours ``Range`` the download continues where it stopped.

    >>> download_file("file-abc123", client=client).read_bytes()[:1]  # doctest: +SKIP
    b'{'
    """
    if not isinstance(file_id, str) or not _SAFE_ID.match(file_id):
        raise InputError(f"file id {file_id!r} is not a valid OpenAI file id (e.g. 'file-abc123')")
    dest = _cache_path(file_id)
    if dest.exists():  # only ever created by the rename below, after the size check
        log.debug("using cached %s", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    try:
        # One downloader per file (threads, processes: two aggregate_df of one run): the .part
        # file is only ever written by the lock's holder.
        with home_lock(cache_dir("locks") / f"download-{file_id}.lock", timeout=LOCK_WAIT_S):
            if dest.exists():  # the holder before us finished it
                return dest
            if expected_bytes is None:
                expected_bytes = getattr(client.files.retrieve(file_id), "bytes", None)
            return _download(client, file_id, dest, part, expected_bytes, attempts, backoff)
    except LockBusy as exc:
        raise DownloadError(
            f"file {file_id} has been downloading in another process for {LOCK_WAIT_S:.0f} s (it "
            f"holds {exc.path}); run aggregate_df again once it has finished."
        ) from None
    except openai.NotFoundError as exc:
        raise ResultFileGoneError(
            f"file {file_id} is no longer on the server ({exc.message}) and was never downloaded "
            "here. OpenAI deletes batch result files 30 days after the batch (or at its "
            "output_expires_after). If you still have the file, pass it with "
            "output_files=/error_files=; otherwise aggregate_df keeps its requests as missing "
            "rows and retry_failed() gives them to send again (billed again)."
        ) from exc


class _Incomplete(Exception):
    """The stream ended, but with a size other than the file object's: retried like a cut."""


def _download(
    client: Any,
    file_id: str,
    dest: Path,
    part: Path,
    expected_bytes: int | None,
    attempts: int,
    backoff: float,
) -> Path:
    attempts = max(1, attempts)

    def log_failure(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "download of %s incomplete (attempt %d/%d): %s",
            file_id,
            state.attempt_number,
            attempts,
            _problem(exc),
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_incrementing(start=backoff, increment=backoff),  # backoff × attempt
        retry=tenacity.retry_if_exception_type((*_RETRYABLE, _Incomplete)),
        after=log_failure,
    )
    try:
        return retrying(_attempt, client, file_id, dest, part, expected_bytes)
    except tenacity.RetryError as exc:
        last = exc.last_attempt.exception()
        problem = _problem(last)
        raise DownloadError(
            f"could not download file {file_id} completely after {attempts} attempts "
            f"({problem}). The partial data is in {part}; run aggregate_df again to continue, or "
            "download the file from the dashboard and pass it with output_files=/error_files=."
        ) from last


def _problem(exc: BaseException | None) -> str:
    return str(exc) if isinstance(exc, _Incomplete) else f"{type(exc).__name__}: {exc}"


def _attempt(client: Any, file_id: str, dest: Path, part: Path, expected_bytes: int | None) -> Path:
    """One attempt, continuing the ``.part`` file where the last one stopped."""
    have = part.stat().st_size if part.exists() else 0
    if expected_bytes is not None and have >= expected_bytes > 0:
        # a whole file left by a run stopped before the rename, or junk: no Range to ask for
        if have == expected_bytes:
            os.replace(part, dest)
            return dest
        part.unlink()
        have = 0
    _fetch(client, file_id, part, have)
    size = part.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        if size > expected_bytes:  # appended onto something else: start over
            part.unlink()
        raise _Incomplete(f"got {size} bytes, the file object says {expected_bytes}")
    os.replace(part, dest)
    log.info("downloaded %s (%d bytes) to %s", file_id, size, dest)
    return dest


def _fetch(client: Any, file_id: str, part: Path, have: int) -> None:
    """One streaming attempt; appends when the server answers a Range request with 206."""
    headers = {"Range": f"bytes={have}-"} if have else None
    with client.files.with_streaming_response.content(file_id, extra_headers=headers) as resp:
        append = bool(have) and resp.status_code == 206
        # Results are private: 0600 whatever the umask or the mode of a home you named.
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        with os.fdopen(os.open(part, flags, 0o600), "ab" if append else "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # a .part left by an earlier version
            for chunk in resp.iter_bytes(_CHUNK):
                fh.write(chunk)
