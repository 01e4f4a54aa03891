"""Starting and stopping the local server: in a background thread (``serve``, ``LocalServer``) or
blocking in the foreground (``run``, used by ``python -m portfolio_batch.local`` and
``portfolio-batch serve``).

    >>> with serve(engine="rules") as server:                       # doctest: +SKIP
    ...     client = server.client()
    ...     client.files.list().data
    []
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from portfolio_batch.errors import LocalServerError
from portfolio_batch.home import cache_dir
from portfolio_batch.local.app import ServerState, create_app
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.engines import load_engine
from portfolio_batch.local.engines.process import EngineError
from portfolio_batch.local.execute import Executor
from portfolio_batch.local.store import Store
from portfolio_batch.local.worker import BatchWorker
from portfolio_batch.tokens import encoding_for_model

__all__ = ["LocalServer", "run", "serve"]

log = logging.getLogger("portfolio_batch.local")


def _warm(engine: Any) -> None:
    # Loading the tokenizer takes ~2 s: do it while the client is still uploading.
    try:
        encoding_for_model("gpt-4o-mini")
        engine.warm()
    except EngineError as exc:  # from the engine's child process; its message says it all
        if exc.code != "engine_stopped":  # not when the server stopped while it loaded
            log.error("%s (the next request tries again)", exc.message)
    except Exception:
        log.exception("warming the %s engine failed; it will be retried on first use", engine.name)


def _close_engine(engine: Any) -> None:
    """Stop an engine's child process, if it has one."""
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def _shutdown(state: ServerState) -> None:
    """Stop the batch worker (it finishes the request in hand), then the engine."""
    try:
        state.worker.shutdown()
    finally:
        _close_engine(state.executor.engine)


def _build_state(
    *, engine: str, data_dir: Path, api_key: str | None, config: dict[str, Any]
) -> ServerState:
    settings = ServerConfig()
    settings.update(**config)
    store = Store(data_dir, clock=settings.now)
    model = load_engine(engine)
    try:
        executor = Executor(model, settings)
        worker = BatchWorker(store, executor, settings)
        state = ServerState(
            store=store, config=settings, executor=executor, worker=worker, api_key=api_key or None
        )
        _resume(state)
    except BaseException:
        _close_engine(model)
        raise
    threading.Thread(target=_warm, args=(model,), name="pb-warm", daemon=True).start()
    return state


def _resume(state: ServerState) -> None:
    """Batches left unfinished by a previous run on this data dir start over."""
    now = int(state.config.now())
    for batch in state.store.batches_with(
        {"validating", "in_progress", "finalizing", "cancelling"}
    ):
        if batch["status"] == "cancelling":
            state.store.update_batch(batch["id"], status="cancelled", cancelled_at=now)
            continue
        state.store.update_batch(
            batch["id"],
            status="validating",
            request_counts={"total": 0, "completed": 0, "failed": 0},
        )
        state.worker.submit(batch["id"])


class LocalServer:
    """A local Files + Batches server running in a background thread.

    ``base_url`` ends in ``/v1``; ``client()`` is an ``openai.OpenAI`` pointed at it;
    ``configure(**config)`` changes settings while it runs (see ``ServerConfig``).
    ``engine`` is ``"rules"`` (in this process), ``"smollm2"`` or your own engine's import path
    ``"package.module:factory"``; those two run in a child process that ``stop()`` ends.
    """

    def __init__(
        self,
        *,
        engine: str = "rules",
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        api_key: str | None = None,
        **config: Any,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.api_key = api_key
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._config = config
        self._state: ServerState | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise LocalServerError("The local server is not running; call start() first.")
        return f"http://{self.host}:{self.port}/v1"

    @property
    def state(self) -> ServerState:
        if self._state is None:
            raise LocalServerError("The local server is not running; call start() first.")
        return self._state

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    def configure(self, **config: Any) -> None:
        """Change settings at runtime, e.g. ``configure(fault_rate_429=0.3, seed=1)``."""
        if self._state is None:
            ServerConfig().update(**config)  # validate now rather than at start
            self._config.update(config)
        else:
            self._state.config.update(**config)

    def client(self, **kwargs: Any) -> Any:
        """An ``openai.OpenAI`` client for this server (extra kwargs go to the client)."""
        import openai

        kwargs.setdefault("api_key", self.api_key or "local-key")
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def start(self) -> LocalServer:
        """Start serving in a background thread (stopped at interpreter exit, or by ``stop``)."""
        with self._lock:
            if self._server is not None:
                return self
            made_data_dir = self.data_dir is None
            if self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="pb-local-"))
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                sock.close()
                raise LocalServerError(
                    f"Cannot listen on {self.host}:{self.port}: {exc}. Pick another --port (0 = any free port)."
                ) from exc
            self.port = sock.getsockname()[1]
            try:
                server, thread = self._serve(sock, self.data_dir)
            except BaseException:
                # Whatever failed (a missing engine dependency, the thread), leave nothing behind:
                # the port is free and a later start() begins afresh.
                sock.close()
                if self._state is not None:
                    _shutdown(self._state)
                    self._state = None
                if made_data_dir:
                    shutil.rmtree(self.data_dir, ignore_errors=True)
                    self.data_dir = None
                raise
            self._server, self._thread, self._sock = server, thread, sock
            atexit.register(self.stop)
        return self

    def _serve(
        self, sock: socket.socket, data_dir: Path
    ) -> tuple[uvicorn.Server, threading.Thread]:
        """Build the state and run uvicorn on ``sock`` in a thread; return once it accepts."""
        self._state = _build_state(
            engine=self.engine,
            data_dir=data_dir,
            api_key=self.api_key,
            config=self._config,
        )
        config = uvicorn.Config(
            create_app(self._state),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="pb-local-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout=5)
                raise LocalServerError(
                    f"The local server did not start on {self.host}:{self.port}; see the log above."
                )
            time.sleep(0.01)
        return server, thread

    def stop(self) -> None:
        """Stop serving, stop the batch worker and remove a temporary data dir."""
        with self._lock:
            server, thread, state = self._server, self._thread, self._state
            self._server = self._thread = None
            if server is None or thread is None or state is None:
                return
            server.should_exit = True
            thread.join(timeout=10)
            _shutdown(state)
            self._sock.close()
            self._state = None
            atexit.unregister(self.stop)
            if self._owns_data_dir and self.data_dir is not None:
                shutil.rmtree(self.data_dir, ignore_errors=True)
                self.data_dir = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "stopped"
        return f"<LocalServer engine={self.engine!r} {where}>"


@contextlib.contextmanager
def serve(
    *,
    engine: str = "rules",
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: str | Path | None = None,
    api_key: str | None = None,
    **config: Any,
) -> Iterator[LocalServer]:
    """Run a local server in a background thread for the duration of a ``with`` block.

    >>> with serve(engine="rules", request_delay=0.01) as server:    # doctest: +SKIP
    ...     batch = server.client().batches.list()
    """
    server = LocalServer(
        engine=engine, host=host, port=port, data_dir=data_dir, api_key=api_key, **config
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = "rules",
    data_dir: str | Path | None = None,
    api_key: str | None = None,
    log_level: str = "warning",
    **config: Any,
) -> None:
    """Serve in the foreground until Ctrl-C. ``data_dir`` defaults to ``<home>/local``.

    >>> run(port=8000, engine="rules")                                # doctest: +SKIP
    """
    directory = Path(data_dir) if data_dir is not None else cache_dir("local")
    state = _build_state(engine=engine, data_dir=directory, api_key=api_key, config=config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        _shutdown(state)
        raise LocalServerError(
            f"Cannot listen on {host}:{port}: {exc}. Pick another --port (0 = any free port)."
        ) from exc
    bound = sock.getsockname()[1]
    print(
        f"portfolio_batch local server ({engine} engine, data in {directory}) at "
        f"http://{host}:{bound}/v1  (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )
    config_ = uvicorn.Config(
        create_app(state),
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=2,
        lifespan="off",
    )
    try:
        uvicorn.Server(config_).run(sockets=[sock])
    finally:
        _shutdown(state)
        sock.close()
