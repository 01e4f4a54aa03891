"""The FastAPI app: OpenAI's Files + Batches routes, the synchronous model routes, and a thin ASGI
layer in front for the bearer token, added latency and injected faults. ``server.py`` builds the
``ServerState`` and serves ``create_app(state)`` with uvicorn:

    >>> from portfolio_batch.local import serve
    >>> with serve() as server:
    ...     app = create_app(server.state)
    >>> app.title
    'portfolio_batch local OpenAI-compatible server'
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import FileResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.dialects import dialect_for
from portfolio_batch.local.execute import SUPPORTED_ENDPOINTS, Executor, Usage
from portfolio_batch.local.store import ApiError, Store
from portfolio_batch.local.upload import receive_upload
from portfolio_batch.local.worker import BatchWorker

__all__ = ["ServerState", "create_app"]

log = logging.getLogger("portfolio_batch.local")

# OpenAI's batch endpoint enum: all accepted (the image and video requests fail line by line).
BATCH_ENDPOINTS = SUPPORTED_ENDPOINTS
# How far into an input file create looks for the batch's model (the first line that names one).
_MODEL_SCAN_BYTES = 1 << 20


@dataclass
class ServerState:
    store: Store
    config: ServerConfig
    executor: Executor
    worker: BatchWorker
    api_key: str | None = None  # None: any non-empty key
    cut_files: set[str] = field(default_factory=set)
    # server clock times of the batch creations in the last hour (max_batches_per_hour)
    creations: list[float] = field(default_factory=list)
    # the Anthropic and Gemini batches' own store and worker, made at first use (providers.py)
    sub_states: dict[str, ServerState] = field(default_factory=dict)


class DownloadCut(Exception):
    """Raised inside a download to drop the connection partway (fault injection)."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status, exc.headers)


# Route names for fault_endpoints, by method and path.
_ROUTES = [
    ("POST", re.compile(r"^/v1/files/?$"), "files.create"),
    ("GET", re.compile(r"^/v1/files/?$"), "files.list"),
    ("GET", re.compile(r"^/v1/files/[^/]+/content$"), "files.content"),
    ("GET", re.compile(r"^/v1/files/[^/]+$"), "files.retrieve"),
    ("DELETE", re.compile(r"^/v1/files/[^/]+$"), "files.delete"),
    ("POST", re.compile(r"^/v1/batches/?$"), "batches.create"),
    ("GET", re.compile(r"^/v1/batches/?$"), "batches.list"),
    ("POST", re.compile(r"^/v1/batches/[^/]+/cancel$"), "batches.cancel"),
    ("GET", re.compile(r"^/v1/batches/[^/]+$"), "batches.retrieve"),
    ("POST", re.compile(r"^/v1/chat/completions$"), "chat.completions"),
    ("POST", re.compile(r"^/v1/completions$"), "completions"),
    ("POST", re.compile(r"^/v1/embeddings$"), "embeddings"),
    ("POST", re.compile(r"^/v1/moderations$"), "moderations"),
    ("POST", re.compile(r"^/v1/responses$"), "responses"),
]


def route_name(method: str, path: str) -> str | None:
    for route_method, pattern, name in _ROUTES:
        if method == route_method and pattern.match(path):
            return name
    return None


class GatewayMiddleware:
    """An ``x-request-id`` on every answer, then the bearer token check, then added latency,
    then injected 429/500 faults (before the request is carried out) and lost replies (after)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The SDKs read it into their `request_id` (openai-python's `_request_id`).
        request_id = ("req_" + secrets.token_hex(16)).encode()
        inner = send

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await inner(message)

        send = send_with_id
        # Anthropic's and Gemini's routes check their own key headers and answer in their shape
        dialect = dialect_for(scope)
        if dialect is not None:
            refused = dialect.refuse(scope, self.state.api_key)
            if refused is not None:
                await _error(refused)(scope, receive, send)
                return
            scope = dialect.route(scope)
        elif not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token and dialect is None:
            await _error(
                ApiError(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            )(scope, receive, send)
            return
        expected = self.state.api_key
        if (
            dialect is None
            and expected
            and not hmac.compare_digest(token.encode(), expected.encode())
        ):
            # The key itself is never echoed or logged.
            await _error(
                ApiError(
                    401,
                    "Incorrect API key provided. Use the key this local server was started with (--api-key).",
                    code="invalid_api_key",
                )
            )(scope, receive, send)
            return
        config = self.state.config
        if config.latency > 0:
            await asyncio.sleep(config.latency)
        route = route_name(scope["method"], scope["path"])
        if route is not None and config.faults_apply(route):
            if config.chance(config.fault_rate_429):
                delay = config.retry_after
                await _error(
                    ApiError(
                        429,
                        "Rate limit reached for requests (injected by the local server). Please try again shortly.",
                        type="requests",
                        code="rate_limit_exceeded",
                        headers={
                            "retry-after-ms": str(max(1, int(delay * 1000))),
                            "retry-after": str(max(1, math.ceil(delay))),
                        },
                    )
                )(scope, receive, send)
                return
            if config.chance(config.fault_rate_500):
                await _error(
                    ApiError(
                        500,
                        "The server had an error while processing your request (injected by the local server). Retry your request.",
                        type="server_error",
                    )
                )(scope, receive, send)
                return
            if config.chance(config.fault_rate_lost_reply):
                # Carried out, then the answer replaced: the client sees a 500 for a request
                # the server did act on (a gateway error after the fact).
                await self.app(scope, receive, _discard)
                await _error(
                    ApiError(
                        500,
                        "The server had an error while processing your request (injected by the local server after carrying the request out: its reply was lost). Retry your request.",
                        type="server_error",
                    )
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _discard(message: Message) -> None:
    """An ASGI ``send`` that drops the answer (a lost reply)."""


class _DropDownloadCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DownloadCut) and not isinstance(
            getattr(exc, "__cause__", None), DownloadCut
        )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(
            400, f"Invalid '{name}': {raw!r}; expected an integer from {low} to {high}.", param=name
        )
    return value


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.") from exc


def _check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ApiError(
            400,
            "Invalid 'metadata': expected an object of at most 16 string pairs.",
            param="metadata",
        )
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise ApiError(
                400,
                f"Invalid 'metadata[{key}]': keys are strings of at most 64 characters and "
                "values strings of at most 512.",
                param="metadata",
            )


def _only_params(request: Request, allowed: tuple[str, ...]) -> None:
    """A query parameter the route does not take is a 400, as on OpenAI (not silently ignored)."""
    for name in request.query_params:
        if name not in allowed:
            raise ApiError(
                400,
                f"Unknown parameter: '{name}'. This route takes {_names(allowed)}.",
                param=name,
                code="unknown_parameter",
            )


def _names(names: tuple[str, ...]) -> str:
    quoted = [f"'{n}'" for n in names]
    return ", ".join(quoted[:-1]) + f" and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _first_model(store: Store, file_id: str) -> str | None:
    """The model of the first line of an input file that names one (OpenAI sets a batch's
    ``model`` from its input file); None when the file's first MiB names none."""
    try:
        with open(store.content_path(file_id), "rb") as handle:
            for line in handle.readlines(_MODEL_SCAN_BYTES):
                try:
                    request = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                body = request.get("body") if isinstance(request, dict) else None
                model = body.get("model") if isinstance(body, dict) else None
                if isinstance(model, str) and model:
                    return model
    except OSError:
        return None
    return None


def _count_creation(state: ServerState, now: float) -> None:
    """Count a batch creation against ``max_batches_per_hour``; over it, OpenAI's 429."""
    limit = state.config.max_batches_per_hour
    with state.store.lock:
        # a list, not a queue: clock_offset can move the clock back as well as forward
        recent = state.creations = [t for t in state.creations if now - 3600 < t <= now]
        if limit is not None and len(recent) >= limit:
            wait = max(1, math.ceil(min(recent) + 3600 - now))
            raise ApiError(
                429,
                f"Rate limit reached for batch creations: at most {limit:,} per hour (the local "
                f"server's max_batches_per_hour, OpenAI's limit). Try again in {wait} seconds.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(wait), "retry-after-ms": str(wait * 1000)},
            )
        recent.append(now)


def _server_state(request: Request) -> ServerState:
    """The ``ServerState`` ``create_app`` put on the app: every route takes it as ``state``."""
    state: ServerState = request.app.state.server
    return state


State = Annotated[ServerState, Depends(_server_state)]


# error handlers --------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
    return _error(ApiError(400, f"Invalid request: {first.get('msg', exc)}", param=param))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = (
        f"Invalid URL ({request.method} {request.url.path})"
        if exc.status_code in (404, 405)
        else str(exc.detail)
    )
    return _error(ApiError(exc.status_code, message))


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client left while sending its body (a timeout, a killed process): routine, not a
    # server error, and nobody is left to answer.
    log.debug("client left during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _server_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, DownloadCut):  # injected on purpose; the connection is dropped
        log.debug("%s", exc)
        return _error(ApiError(500, str(exc), type="server_error"))
    log.error("error answering %s %s", request.method, request.url.path, exc_info=exc)
    return _error(ApiError(500, f"The local server failed: {exc!r}", type="server_error"))


# files -----------------------------------------------------------------------------------------
_files = APIRouter()


@_files.post("/v1/files")
async def create_file(request: Request, state: State) -> Response:
    return _json(await receive_upload(request, state.store, state.config.max_upload_bytes))


@_files.get("/v1/files")
def list_files(request: Request, state: State) -> Response:
    _only_params(request, ("purpose", "limit", "order", "after"))
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid 'order': {order!r}; use 'asc' or 'desc'.", param="order")
    return _json(
        state.store.list_files(
            purpose=request.query_params.get("purpose"),
            limit=_int_param(request, "limit", 10_000, 1, 10_000),
            order=order,
            after=request.query_params.get("after"),
        )
    )


@_files.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, state: State) -> Response:
    return _json(state.store.public(state.store.get_file(file_id)))


@_files.delete("/v1/files/{file_id}")
def delete_file(file_id: str, state: State) -> Response:
    return _json(state.store.delete_file(file_id))


@_files.get("/v1/files/{file_id}/content")
def file_content(file_id: str, state: State) -> Response:
    """The raw bytes; Starlette's ``FileResponse`` answers ``Range`` requests (206, 416)."""
    state.store.get_file(file_id)
    path = state.store.content_path(file_id)
    stat = path.stat()
    cut_at = _cut_at(state, file_id, stat.st_size)
    if cut_at is None:
        return FileResponse(path, media_type="application/octet-stream", stat_result=stat)
    return _CutFileResponse(
        path,
        media_type="application/octet-stream",
        stat_result=stat,
        cut_at=cut_at,
        on_cut=lambda: state.cut_files.add(file_id),
        message=f"download of {file_id} cut after {cut_at} bytes (fault injection)",
    )


def _cut_at(state: ServerState, file_id: str, size: int) -> int | None:
    """After how many bytes this download is dropped (``cut_download_*``), or None."""
    config = state.config
    limit = config.cut_download_after_bytes
    if limit is None or limit >= size:
        return None
    if config.cut_download_rate is None:  # once per file
        return None if file_id in state.cut_files else limit
    return limit if config.chance(config.cut_download_rate) else None


class _CutFileResponse(FileResponse):
    """A ``FileResponse`` that drops the connection once ``cut_at`` body bytes are sent (a Range
    request for fewer bytes than that is answered whole)."""

    def __init__(
        self,
        path: Path,
        *,
        cut_at: int,
        on_cut: Callable[[], None],
        message: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(path, **kwargs)
        self.cut_at, self.on_cut, self.message = cut_at, on_cut, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def cut_send(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                if sent + len(body) > self.cut_at:
                    await send({**message, "body": body[: self.cut_at - sent], "more_body": True})
                    self.on_cut()
                    raise DownloadCut(self.message)
                sent += len(body)
            await send(message)

        # no zero-copy file send (pathsend): the bytes must pass through cut_send
        extensions = {
            k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"
        }
        await super().__call__({**scope, "extensions": extensions}, receive, cut_send)


# batches ---------------------------------------------------------------------------------------
_batches = APIRouter()


def _batch_request(body: Any) -> tuple[str, dict[str, Any] | None]:
    """(endpoint, output_expires_after) of a valid ``POST /v1/batches`` body, else OpenAI's 400."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise ApiError(400, f"Missing required parameter: '{name}'.", param=name)
    endpoint = body["endpoint"]
    if endpoint not in BATCH_ENDPOINTS:
        raise ApiError(
            400,
            f"Invalid value for 'endpoint': {endpoint!r}. Supported values are {list(BATCH_ENDPOINTS)}.",
            param="endpoint",
        )
    if body["completion_window"] != "24h":
        raise ApiError(
            400,
            f"Invalid value for 'completion_window': {body['completion_window']!r}. Supported values are: '24h'.",
            param="completion_window",
        )
    _check_metadata(body.get("metadata"))
    expires_after = body.get("output_expires_after")
    if expires_after is not None and (
        not isinstance(expires_after, dict)
        or expires_after.get("anchor") != "created_at"
        or not isinstance(expires_after.get("seconds"), int)
        or not 3600 <= expires_after["seconds"] <= 2_592_000
    ):
        raise ApiError(
            400,
            "Invalid 'output_expires_after': expected {anchor: 'created_at', seconds: 3600..2592000}.",
            param="output_expires_after",
        )
    return endpoint, expires_after


def _new_batch(
    state: ServerState,
    input_file: dict[str, Any],
    endpoint: str,
    body: dict[str, Any],
    expires_after: dict[str, Any] | None,
) -> dict[str, Any]:
    """The Batch object of a new batch, validating, counted against ``max_batches_per_hour``."""
    config = state.config
    now = config.now()
    _count_creation(state, now)
    window = config.completion_window_seconds
    return {
        "id": state.store.new_batch_id(),
        "object": "batch",
        "endpoint": endpoint,
        "model": _first_model(state.store, input_file["id"]),
        "errors": None,
        "input_file_id": input_file["id"],
        "completion_window": "24h",
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": int(now),
        "in_progress_at": None,
        "expires_at": int(now + window),
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": Usage().as_batch_usage(chat_fields=config.batch_usage_chat_fields),
        "metadata": body.get("metadata"),
        # not a field of OpenAI's Batch object: kept, not shown
        "_output_expires_after": expires_after,
        "_deadline": now + window,
    }


@_batches.post("/v1/batches")
async def create_batch(request: Request, state: State) -> Response:
    body = await _body(request)
    endpoint, expires_after = _batch_request(body)
    input_file = state.store.get_file(body["input_file_id"])
    if input_file["purpose"] != "batch":
        raise ApiError(
            400,
            f"File {input_file['id']} has purpose {input_file['purpose']!r}; a batch input file must be uploaded with purpose 'batch'.",
            param="input_file_id",
        )
    batch = _new_batch(state, input_file, endpoint, body, expires_after)
    state.store.add_batch(batch)
    # The answer is taken before the worker may start: a create always answers validating.
    answer = _json(state.store.public(batch))
    state.worker.submit(batch["id"])
    return answer


@_batches.get("/v1/batches")
def list_batches(request: Request, state: State) -> Response:
    _only_params(request, ("after", "limit"))
    return _json(
        state.store.list_batches(
            limit=_int_param(request, "limit", 20, 1, 100),
            after=request.query_params.get("after"),
        )
    )


@_batches.get("/v1/batches/{batch_id}")
def retrieve_batch(batch_id: str, state: State) -> Response:
    store = state.store
    batch = store.get_batch(batch_id)
    with store.lock:
        public = store.public(batch)
        lag = batch.get("_lag_polls", 0)
        if public["status"] == "completed" and lag > 0:
            # as the live API sometimes does: completed, but the output file not yet shown
            batch["_lag_polls"] = lag - 1
            public["output_file_id"] = None
    return _json(public)


@_batches.post("/v1/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, state: State) -> Response:
    store = state.store
    batch = store.get_batch(batch_id)
    with store.lock:
        status = batch["status"]
        if status in ("validating", "in_progress"):
            store.update_batch(batch_id, status="cancelling", cancelling_at=int(state.config.now()))
        elif status not in ("cancelling", "cancelled"):
            raise ApiError(
                400,
                f"Cannot cancel batch {batch_id}: its status is {status!r}. Only validating "
                "or in_progress batches can be cancelled.",
                param="batch_id",
            )
    state.worker.cancel(batch_id)
    return _json(store.public(batch))


# synchronous model routes ----------------------------------------------------------------------
_models = APIRouter()


async def _sync(endpoint: str, request: Request, state: ServerState) -> Response:
    body = await _body(request)
    status, answer, _ = await anyio.to_thread.run_sync(state.executor.run, endpoint, body)
    return _json(answer, status)


@_models.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State) -> Response:
    return await _sync("/v1/chat/completions", request, state)


@_models.post("/v1/embeddings")
async def embeddings(request: Request, state: State) -> Response:
    return await _sync("/v1/embeddings", request, state)


@_models.post("/v1/completions")
async def completions(request: Request, state: State) -> Response:
    return await _sync("/v1/completions", request, state)


@_models.post("/v1/moderations")
async def moderations(request: Request, state: State) -> Response:
    return await _sync("/v1/moderations", request, state)


@_models.post("/v1/responses")
async def responses(request: Request, state: State) -> Response:
    return await _sync("/v1/responses", request, state)


@_models.get("/health")
def health(state: State) -> Response:
    return _json({"status": "ok", "engine": state.executor.engine.name})


def create_app(state: ServerState) -> FastAPI:
    """The app for one server state: the files, batches and model routes, OpenAI-shaped errors
    and the gateway (request ids, key check, latency, faults) in front."""
    app = FastAPI(
        title="portfolio_batch local OpenAI-compatible server", docs_url=None, redoc_url=None
    )
    app.state.server = state
    logging.getLogger("uvicorn.error").addFilter(_DropDownloadCut())
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _server_error)
    for router in (_files, _batches, _models):
        app.include_router(router)
    # Anthropic's Message Batches and Gemini's batch routes, run by the same worker and engine
    from portfolio_batch.local import anthropic, gemini, mistral, together

    app.include_router(anthropic.router)
    app.include_router(gemini.router)
    # Mistral's and Together's, under /mistral/v1 and /together/v1 (their paths are OpenAI's)
    app.include_router(mistral.router)
    app.include_router(together.router)
    app.add_middleware(GatewayMiddleware, state=state)
    return app
