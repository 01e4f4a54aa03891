"""What the Anthropic and Gemini routes share: each provider's batches run as ordinary internal
OpenAI chat-completions batches (same worker, engine, clock, faults and expiry), kept in a store
of their own under ``<data dir>/<provider>`` so that OpenAI's ``/v1/batches`` and ``/v1/files``
never list them. The provider modules translate requests in and results out.

    >>> sub = sub_state(server.state, "anthropic")                     # doctest: +SKIP
    >>> batch = start_batch(sub, [line], name="anthropic")             # doctest: +SKIP
    >>> [o.kind for o in outcomes(sub, batch)]                         # doctest: +SKIP
    ['succeeded']
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from portfolio_batch._contract import TERMINAL
from portfolio_batch.local.app import ServerState, _new_batch
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.store import ApiError, Store, private_file
from portfolio_batch.local.worker import BatchWorker

__all__ = ["Outcome", "ended", "iso", "outcomes", "start_batch", "sub_state"]

_LOCK = threading.Lock()
CHAT = "/v1/chat/completions"


def sub_state(state: ServerState, name: str) -> ServerState:
    """The store and worker of one provider's batches, made (and resumed) at first use."""
    with _LOCK:
        sub = state.sub_states.get(name)
        if sub is None:
            config = state.config
            store = Store(state.store.root / name, clock=config.now)
            # the provider checks its own batch size limit at create
            worker = BatchWorker(store, state.executor, cast(ServerConfig, _WorkerConfig(config)))
            sub = ServerState(
                store=store,
                config=config,
                executor=state.executor,
                worker=worker,
                api_key=state.api_key,
            )
            from portfolio_batch.local.server import _resume

            _resume(sub)  # batches a previous run on this data dir left unfinished
            state.sub_states[name] = sub
        return sub


class _WorkerConfig:
    """The server's live settings as a provider's worker sees them, but with no cap of its own
    on requests per batch (Anthropic takes 100,000, more than OpenAI's 50,000)."""

    max_requests_per_batch = 1 << 62

    def __init__(self, base: ServerConfig) -> None:
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def iso(timestamp: float | None) -> str | None:
    """RFC 3339 with a ``Z``, as both providers write times.

    >>> iso(0)
    '1970-01-01T00:00:00Z'
    """
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat().replace("+00:00", "Z")


def ended(batch: dict[str, Any]) -> bool:
    return batch["status"] in TERMINAL


def start_batch(
    sub: ServerState,
    lines: Iterable[bytes],
    *,
    name: str,
    extra: dict[str, Any],
    wrap: Callable[[ApiError], ApiError],
) -> dict[str, Any]:
    """Write ``lines`` (OpenAI chat-completions batch lines) as an input file and run them as a
    batch carrying ``extra`` (private ``_`` fields); ``wrap`` turns an OpenAI-shaped refusal
    (the hourly creation limit) into the provider's."""
    store = sub.store
    file_id = store.new_file_id()
    size = 0
    with private_file(store.content_path(file_id), buffering=1 << 20) as handle:
        for line in lines:
            handle.write(line)
            handle.write(b"\n")
            size += len(line) + 1
    store.add_file(file_id, filename=f"{name}_input.jsonl", purpose="batch", nbytes=size)
    try:
        batch = _new_batch(sub, store.files[file_id], CHAT, {}, None)
    except ApiError as exc:
        store.delete_file(file_id)
        raise wrap(exc) from None
    batch.update(extra)
    store.add_batch(batch)
    sub.worker.submit(batch["id"])
    return batch


def write_file(store: Store, lines: Iterable[bytes], *, filename: str) -> str:
    """A private store file of ``lines`` (purpose ``batch_output``: it expires as results do);
    its id."""
    file_id = store.new_file_id()
    size = 0
    with private_file(store.content_path(file_id), buffering=1 << 20) as handle:
        for line in lines:
            handle.write(line)
            handle.write(b"\n")
            size += len(line) + 1
    store.add_file(file_id, filename=filename, purpose="batch_output", nbytes=size)
    return file_id


def read_lines(store: Store, file_id: str | None) -> Iterator[dict[str, Any]]:
    """The JSON objects of a store file's lines; nothing for a missing or deleted file."""
    return _lines(store, file_id)


@dataclass
class Outcome:
    """One request's end: ``kind`` succeeded (``body`` the chat completion), errored
    (``status``, ``message``), canceled or expired."""

    custom_id: str
    kind: str
    body: dict[str, Any] | None = None
    status: int = 0
    message: str = ""


def _lines(store: Store, file_id: str | None) -> Iterator[dict[str, Any]]:
    if not file_id:
        return
    path = store.content_path(file_id)
    if not path.exists():
        return
    with open(path, "rb", buffering=1 << 20) as handle:
        for raw in handle:
            if raw.strip():
                yield orjson.loads(raw)


def outcomes(sub: ServerState, batch: dict[str, Any]) -> Iterator[Outcome]:
    """The outcome of every request the internal batch wrote a line for, in file order (not
    input order). Requests with no line (a cancel before start, an engine that stopped) are the
    caller's to add from its own list of requests."""
    for line in _lines(sub.store, batch.get("output_file_id")):
        yield Outcome(line["custom_id"], "succeeded", body=line["response"]["body"])
    for line in _lines(sub.store, batch.get("error_file_id")):
        error = line.get("error")
        if error is not None:
            kind = {"batch_cancelled": "canceled", "batch_expired": "expired"}.get(
                error.get("code"), "errored"
            )
            yield Outcome(line["custom_id"], kind, status=500, message=error.get("message", ""))
            continue
        response = line.get("response") or {}
        body = response.get("body") or {}
        message = (body.get("error") or {}).get("message") or "The request failed."
        yield Outcome(
            line["custom_id"], "errored", status=response.get("status_code", 500), message=message
        )


def missing_kind(batch: dict[str, Any]) -> tuple[str, str]:
    """(kind, message) of a request an ended internal batch wrote no line for."""
    status = batch["status"]
    if status == "cancelled":
        return "canceled", ""
    if status == "expired":
        return "expired", ""
    errors = (batch.get("errors") or {}).get("data") or [{}]
    return "errored", errors[0].get("message") or "The local server did not run this request."


def drop_batch(sub: ServerState, batch: dict[str, Any]) -> None:
    """Forget an ended batch and its files."""
    store = sub.store
    with store.lock:
        store.batches.pop(batch["id"], None)
        (store.batches_dir / f"{batch['id']}.json").unlink(missing_ok=True)
    for key in ("input_file_id", "output_file_id", "error_file_id", "_manifest_file_id"):
        file_id = batch.get(key)
        if file_id and file_id in store.files:
            store.delete_file(file_id)
