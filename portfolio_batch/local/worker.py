"""The background worker that runs batches: validate, process, finalize.

Each batch runs in a thread of a small pool, so several batches progress at once. The input file
is read line by line twice (validation, then processing) and output is written line by line, so
memory stays flat whatever the file size. Output lines come out in an order other than the input
order (each chunk of up to 64 results is written reversed), as OpenAI does not keep input order.

Requests cut short by a cancel or by the completion window get an error-file line
``{"id", "custom_id", "response": null, "error": {"code": "batch_cancelled" | "batch_expired",
"message"}}`` and count as ``failed``, so ``completed + failed == total`` at the end.

A request whose engine crashed is an error line with ``status_code`` 500 and a message naming the
engine and the signal. If the engine cannot go on (it crashed while loading, or on several
requests in a row) the batch ends ``failed`` with ``errors.data`` naming the engine: the lines
answered so far stay in its output and error files, the requests after it were not run.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from portfolio_batch._contract import ACTIVE
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.engines.process import EngineError
from portfolio_batch.local.execute import Executor, Usage, count_prompt_tokens
from portfolio_batch.local.store import Store, private_file

__all__ = ["BatchWorker"]

log = logging.getLogger("portfolio_batch.local")

CHUNK = 64
MAX_REPORTED_ERRORS = 100
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was cancelled before it was executed."


@dataclass
class _InputCheck:
    """What validating a batch's input file found so far: its ``errors.data`` entries, the
    custom_ids seen and the model of the first line that names one."""

    endpoint: str
    errors: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    model: str | None = None

    def error(
        self, code: str, message: str, line: int | None = None, param: str | None = None
    ) -> None:
        self.errors.append({"code": code, "message": message, "param": param, "line": line})

    def line(self, number: int, line: bytes) -> dict[str, Any] | None:
        """Check one input line; its body when it has a JSON object one."""
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.error("invalid_json_line", "This line is not parseable as valid JSON.", number)
            return None
        if not isinstance(request, dict):
            self.error("invalid_json_line", "This line is not a JSON object.", number)
            return None
        self._custom_id(request.get("custom_id"), number)
        if request.get("method") != "POST":
            self.error(
                "invalid_request", "The 'method' of each line must be 'POST'.", number, "method"
            )
        if request.get("url") != self.endpoint:
            self.error(
                "url_mismatch",
                f"The url {request.get('url')!r} does not match the batch's endpoint {self.endpoint!r}.",
                number,
                "url",
            )
        body = request.get("body")
        if not isinstance(body, dict):
            self.error("invalid_request", "Each line needs a JSON object 'body'.", number, "body")
            return None
        self._model(body.get("model"), number)
        return body

    def _custom_id(self, custom_id: Any, number: int) -> None:
        if not isinstance(custom_id, str) or not custom_id:
            self.error(
                "invalid_request", "Each line needs a string 'custom_id'.", number, "custom_id"
            )
        elif custom_id in self.seen:
            self.error(
                "duplicate_custom_id",
                f"The custom_id {custom_id!r} is used more than once; custom_ids must be unique within a batch.",
                number,
                "custom_id",
            )
        else:
            self.seen.add(custom_id)

    def _model(self, line_model: Any, number: int) -> None:
        if self.model is None and isinstance(line_model, str):
            self.model = line_model
        elif line_model != self.model:
            self.error(
                "model_mismatch",
                f"The model {line_model!r} differs from {self.model!r} on an earlier line; a batch uses one model.",
                number,
                "body.model",
            )


class _Stop(Exception):
    """The batch must stop early: ``reason`` is ``cancelled``, ``expired`` or ``shutdown``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _lines(path: Any) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped line) of every non-blank line."""
    with open(path, "rb", buffering=1 << 20) as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line:
                yield number, line


class _ResultWriter:
    """Output and error files, written a chunk at a time in reversed order."""

    def __init__(self, store: Store, config: ServerConfig) -> None:
        self.store = store
        self.config = config
        self.output_id = store.new_file_id()
        self.error_id = store.new_file_id()
        self.n_output = 0
        self.n_error = 0
        self._buffers: dict[str, list[bytes]] = {"output": [], "error": []}
        self._handles: dict[str, IO[bytes]] = {}

    def add(self, kind: str, line: bytes) -> None:
        buffer = self._buffers[kind]
        buffer.append(line)
        if len(buffer) >= CHUNK:
            self.flush(kind)

    def flush(self, kind: str) -> None:
        buffer = self._buffers[kind]
        if not buffer:
            return
        handle = self._handles.get(kind)
        if handle is None:
            file_id = self.output_id if kind == "output" else self.error_id
            handle = private_file(self.store.partial_path(file_id), buffering=1 << 20)
            self._handles[kind] = handle
        buffer.reverse()
        for line in buffer:
            if kind == "output" and self.config.chance(self.config.malformed_output_rate):
                line = line[: len(line) // 2]  # a truncated line, as a flaky writer would leave
            handle.write(line)
            handle.write(b"\n")
        if kind == "output":
            self.n_output += len(buffer)
        else:
            self.n_error += len(buffer)
        buffer.clear()

    def close(self) -> tuple[str | None, str | None]:
        """Register the written files; ids are None for a file with no lines."""
        self.flush("output")
        self.flush("error")
        ids: list[str | None] = []
        for kind, file_id in (("output", self.output_id), ("error", self.error_id)):
            handle = self._handles.pop(kind, None)
            if handle is None:
                ids.append(None)
                continue
            handle.close()
            ids.append(file_id)
        return ids[0], ids[1]

    def register(self, batch: dict[str, Any], ids: tuple[str | None, str | None]) -> None:
        ttl = (batch.get("_output_expires_after") or {}).get("seconds")
        for file_id, name in zip(ids, ("output", "error"), strict=True):
            if file_id is None:
                continue
            final = self.store.content_path(file_id)
            self.store.partial_path(file_id).replace(final)
            self.store.add_file(
                file_id,
                filename=f"{batch['id']}_{name}.jsonl",
                purpose="batch_output",
                nbytes=final.stat().st_size,
                expires_after=ttl,
            )

    def abandon(self) -> None:
        for kind, handle in list(self._handles.items()):
            handle.close()
            file_id = self.output_id if kind == "output" else self.error_id
            self.store.partial_path(file_id).unlink(missing_ok=True)
        self._handles.clear()


class BatchWorker:
    """Runs submitted batches in a thread pool until ``shutdown``."""

    def __init__(self, store: Store, executor: Executor, config: ServerConfig) -> None:
        self.store = store
        self.executor = executor
        self.config = config
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_concurrent_batches, thread_name_prefix="pb-batch"
        )
        self._events: dict[str, threading.Event] = {}
        self._stopping = threading.Event()

    def submit(self, batch_id: str) -> None:
        self._events[batch_id] = threading.Event()
        self._pool.submit(self._run, batch_id)

    def cancel(self, batch_id: str) -> None:
        event = self._events.get(batch_id)
        if event is not None:
            event.set()

    def shutdown(self) -> None:
        self._stopping.set()
        for event in list(self._events.values()):
            event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # the batch -----------------------------------------------------------------------------
    def _run(self, batch_id: str) -> None:
        try:
            self._process(batch_id)
        except Exception as exc:
            # A bug must not leave the batch "in_progress" forever: fail it, and say why.
            log.exception("batch %s crashed", batch_id)
            now = int(self.config.now())
            self.store.update_batch(
                batch_id,
                status="failed",
                failed_at=now,
                errors={
                    "object": "list",
                    "data": [
                        {
                            "code": "server_error",
                            "message": f"The local server failed while running this batch: {exc!r}",
                            "param": None,
                            "line": None,
                        }
                    ],
                },
            )
        finally:
            self._events.pop(batch_id, None)

    def _check(self, batch: dict[str, Any], event: threading.Event) -> None:
        if self._stopping.is_set():
            raise _Stop("shutdown")
        if event.is_set() or batch["status"] == "cancelling":
            raise _Stop("cancelled")
        if self.config.now() >= batch["_deadline"]:
            raise _Stop("expired")

    def _pause(self, event: threading.Event) -> None:
        if self.config.request_delay > 0:
            event.wait(self.config.request_delay)

    def _transition(self, batch_id: str, status: str, **fields: Any) -> bool:
        """Move to ``status`` unless a cancel got there first."""
        with self.store.lock:
            batch = self.store.batches[batch_id]
            if batch["status"] == "cancelling" and status != "cancelled":
                return False
            self.store.update_batch(batch_id, status=status, **fields)
            return True

    def _process(self, batch_id: str) -> None:
        batch = self.store.batches[batch_id]
        event = self._events[batch_id]
        try:
            self._pause(event)
            self._check(batch, event)
            model, total, errors, tokens = self._validate(batch, event)
        except _Stop as stop:
            self._stop_before_start(batch_id, stop.reason)
            return
        now = int(self.config.now())
        if errors:
            self._transition(
                batch_id,
                "failed",
                failed_at=now,
                errors={"object": "list", "data": errors[:MAX_REPORTED_ERRORS]},
            )
            return
        with self.store.lock:  # check and claim the enqueued tokens atomically
            cap = self.config.max_enqueued_tokens
            if cap is not None:
                queued = sum(
                    b.get("_enqueued_tokens", 0)
                    for b in self.store.batches_with(ACTIVE)
                    if b.get("model") == model and b["id"] != batch_id
                )
                if queued + tokens > cap:
                    self._transition(
                        batch_id,
                        "failed",
                        failed_at=now,
                        model=model,
                        errors={
                            "object": "list",
                            "data": [
                                {
                                    "code": "token_limit_exceeded",
                                    "message": (
                                        f"Enqueued token limit reached for {model} in organization "
                                        f"org-local. Limit: {cap:,} enqueued tokens. Please try again "
                                        "once some in_progress batches have been completed."
                                    ),
                                    "param": None,
                                    "line": None,
                                }
                            ],
                        },
                    )
                    return
            started = self._transition(
                batch_id,
                "in_progress",
                in_progress_at=now,
                model=model,
                _enqueued_tokens=tokens,
                request_counts={"total": total, "completed": 0, "failed": 0},
            )
        if not started:
            self._stop_before_start(batch_id, "cancelled")
            return
        self._execute(batch_id, batch, event, total)

    def _stop_before_start(self, batch_id: str, reason: str) -> None:
        now = int(self.config.now())
        if reason == "cancelled":
            self._transition(batch_id, "cancelled", cancelled_at=now)
        elif reason == "expired":
            # As on OpenAI, every request the window cut short is in the error file as
            # batch_expired, even when none of them ran.
            batch = self.store.batches[batch_id]
            writer = _ResultWriter(self.store, self.config)
            try:
                n = self._expire_all(batch, writer)
            except BaseException:
                writer.abandon()
                raise
            ids = writer.close()
            writer.register(batch, ids)
            counts = {"total": n, "completed": 0, "failed": n}
            if not self._transition(
                batch_id, "expired", expired_at=now, error_file_id=ids[1], request_counts=counts
            ):
                self._transition(batch_id, "cancelled", cancelled_at=now)

    def _expire_all(self, batch: dict[str, Any], writer: _ResultWriter) -> int:
        """Write a batch_expired error line for each request of the input file; returns how many.
        Lines validation would have refused (no JSON object, no custom_id, a repeat) are skipped."""
        path = self.store.content_path(batch["input_file_id"])
        if not path.exists():
            return 0
        seen: set[str] = set()
        error = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
        for _number, line in _lines(path):
            try:
                request = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if isinstance(custom_id, str) and custom_id and custom_id not in seen:
                seen.add(custom_id)
                writer.add("error", _result_line(custom_id, None, error))
        return len(seen)

    def _validate(
        self, batch: dict[str, Any], event: threading.Event
    ) -> tuple[str | None, int, list[dict[str, Any]], int]:
        """(model, number of requests, errors.data entries, prompt tokens if capped)."""
        path = self.store.content_path(batch["input_file_id"])
        check = _InputCheck(batch["endpoint"])
        total = 0
        tokens = 0
        count_tokens = self.config.max_enqueued_tokens is not None
        if not path.exists():
            check.error("invalid_file", f"The input file {batch['input_file_id']} was deleted.")
            return None, 0, check.errors, 0
        for number, line in _lines(path):
            total += 1
            if total % 1024 == 0:
                self._check(batch, event)
            body = check.line(number, line)
            if count_tokens and body and check.model and isinstance(body.get("messages"), list):
                tokens += count_prompt_tokens(
                    body["messages"], check.model, body.get("response_format")
                )
        if total == 0:
            check.error("empty_file", "The input file is empty: it has no requests.")
        elif total > self.config.max_requests_per_batch:
            check.error(
                "too_many_tasks",
                f"The input file has {total} requests; a batch can have at most "
                f"{self.config.max_requests_per_batch}. Split it into several batches.",
            )
        return check.model, total, check.errors, tokens

    def _execute(
        self, batch_id: str, batch: dict[str, Any], event: threading.Event, total: int
    ) -> None:
        writer = _ResultWriter(self.store, self.config)
        usage = Usage()
        completed = failed = 0
        stop: _Stop | None = None
        halted: EngineError | None = None
        endpoint = batch["endpoint"]
        chat_fields = self.config.batch_usage_chat_fields
        try:
            for _number, line in _lines(self.store.content_path(batch["input_file_id"])):
                request = orjson.loads(line)
                custom_id = request["custom_id"]
                if stop is None:
                    try:
                        self._check(batch, event)
                    except _Stop as exc:
                        stop = exc
                        if exc.reason == "shutdown":
                            writer.abandon()
                            return
                if stop is not None:
                    code = "batch_cancelled" if stop.reason == "cancelled" else "batch_expired"
                    message = CANCELLED_MESSAGE if code == "batch_cancelled" else EXPIRED_MESSAGE
                    writer.add(
                        "error", _result_line(custom_id, None, {"code": code, "message": message})
                    )
                    failed += 1
                    continue
                self._pause(event)
                try:
                    status, body, used = self.executor.run(endpoint, request["body"])
                except EngineError as exc:  # fatal: the engine keeps crashing, stop here
                    halted = exc
                    status, body, used = exc.status, exc.body(), Usage()
                response = {
                    "status_code": status,
                    "request_id": "req_" + secrets.token_hex(16),
                    "body": body,
                }
                if status == 200:
                    usage.add(used)
                    writer.add("output", _result_line(custom_id, response, None))
                    completed += 1
                else:
                    writer.add("error", _result_line(custom_id, response, None))
                    failed += 1
                with self.store.lock:
                    batch["request_counts"] = {
                        "total": total,
                        "completed": completed,
                        "failed": failed,
                    }
                    if (completed + failed) % CHUNK == 0:
                        batch["usage"] = usage.as_batch_usage(chat_fields=chat_fields)
                if halted is not None:
                    break
        except BaseException:
            writer.abandon()
            raise
        ids = writer.close()
        now = int(self.config.now())
        with self.store.lock:
            batch["request_counts"] = {"total": total, "completed": completed, "failed": failed}
            batch["usage"] = usage.as_batch_usage(chat_fields=chat_fields)
        if halted is not None and stop is None:
            # The lines answered so far stay in the output and error files; the others are in
            # neither, so a client sees them as missing and can send them again.
            writer.register(batch, ids)
            log.info("batch %s failed: %s", batch_id, halted.batch_message)
            error = {
                "code": halted.code,
                "message": halted.batch_message,
                "param": None,
                "line": None,
            }
            if not self._transition(
                batch_id,
                "failed",
                failed_at=now,
                output_file_id=ids[0],
                error_file_id=ids[1],
                errors={"object": "list", "data": [error]},
            ):  # a cancel came first
                self.store.update_batch(
                    batch_id,
                    status="cancelled",
                    output_file_id=ids[0],
                    error_file_id=ids[1],
                    cancelled_at=now,
                )
            return
        if stop is None and self._transition(batch_id, "finalizing", finalizing_at=now):
            self._pause(event)
            writer.register(batch, ids)
            self._transition(
                batch_id,
                "completed",
                completed_at=int(self.config.now()),
                output_file_id=ids[0],
                # "" rather than null, as the live API has sent on a clean batch (a knob)
                error_file_id="" if ids[1] is None and self.config.empty_error_file_id else ids[1],
                # retrievals that still show output_file_id null (a knob, as seen live)
                _lag_polls=self.config.output_file_lag_polls,
            )
            return
        writer.register(batch, ids)
        final = "expired" if stop is not None and stop.reason == "expired" else "cancelled"
        self.store.update_batch(
            batch_id,
            status=final,
            output_file_id=ids[0],
            error_file_id=ids[1],
            **{f"{final}_at": int(self.config.now())},
        )


def _result_line(custom_id: str, response: Any, error: Any) -> bytes:
    return orjson.dumps(
        {
            "id": "batch_req_" + secrets.token_hex(16),
            "custom_id": custom_id,
            "response": response,
            "error": error,
        }
    )
