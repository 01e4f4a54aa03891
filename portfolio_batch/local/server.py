"""Starting and stopping the local server: in a background thread (``serve``, ``LocalServer``) or
blocking in the foreground (``run``, used by ``python -m portfolio_batch.local`` and
``portfolio-batch serve``).

Keys: a ``LocalServer`` requires a bearer key, by default a random one made at each start (its
``api_key``; ``client()`` uses it), so nothing else that reaches the port can read the uploaded
portfolios. ``run`` requires the key it is given (``--api-key`` / ``PORTFOLIO_BATCH_SERVER_KEY``)
and otherwise accepts any non-empty key, saying so; on an address other than loopback it warns.

    >>> with serve(engine="rules") as server:                       # doctest: +SKIP
    ...     client = server.client()
    ...     client.files.list().data
    []
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import ipaddress
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from portfolio_batch._contract import ACTIVE, CANCELLING
from portfolio_batch._home import cache_dir
from portfolio_batch._tokens import encoding_for_model
from portfolio_batch.errors import InputError, LocalServerError
from portfolio_batch.local.app import ServerState, create_app
from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.engines import load_engine
from portfolio_batch.local.engines.process import EngineError
from portfolio_batch.local.execute import Executor
from portfolio_batch.local.store import Store, private_file
from portfolio_batch.local.worker import BatchWorker

if TYPE_CHECKING:
    import openai

__all__ = ["KEY_ENV", "LocalServer", "new_api_key", "read_api_key", "run", "serve"]

log = logging.getLogger("portfolio_batch.local")

KEY_ENV = "PORTFOLIO_BATCH_SERVER_KEY"
# The key clients send to a server started with any_key=True (the SDK insists on one).
ANY_KEY = "local-any-key"
STATE_FILE = "server.json"


def new_api_key() -> str:
    """A random key for one run of a local server.

    >>> new_api_key().startswith("sk-local-")
    True
    """
    return "sk-local-" + secrets.token_urlsafe(24)


def read_api_key(
    *,
    prompt: bool = False,
    key_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str | None:
    """The key a foreground server should require, never from the command line (where ``ps``
    shows it): from ``key_file``, else typed at a hidden prompt (or one line of stdin when it is
    not a terminal) if ``prompt``, else ``$PORTFOLIO_BATCH_SERVER_KEY``; None when none is set.

    >>> read_api_key(env={"PORTFOLIO_BATCH_SERVER_KEY": "sk-team"})
    'sk-team'
    """
    env = os.environ if env is None else env
    if key_file is not None:
        try:
            key = open(key_file, encoding="utf-8").read().strip()  # noqa: SIM115
        except OSError as exc:
            raise InputError(
                f"--api-key-file {str(key_file)!r} cannot be read ({exc.strerror or exc}); give "
                "the path of a file holding the key on one line."
            ) from None
        where = f"--api-key-file {str(key_file)!r}"
    elif prompt:
        if sys.stdin.isatty():
            key = getpass.getpass("API key the local server requires: ").strip()
        else:
            key = sys.stdin.readline().strip()
        where = "--api-key (read from the prompt or stdin)"
    else:
        return env.get(KEY_ENV) or None
    if not key:
        raise InputError(f"{where} gave an empty key; give a non-empty key, or leave it out.")
    return key


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        for sub in list(state.sub_states.values()):  # the Anthropic and Gemini batches' workers
            sub.worker.shutdown()
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
    for batch in state.store.batches_with(ACTIVE | CANCELLING):
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

    Every request needs ``Authorization: Bearer <api_key>``: the ``api_key`` given, or a random
    key made at each start (then also written, 0600, to ``<data_dir>/server.json`` for this
    user's other processes, and removed at stop). ``any_key=True`` accepts any non-empty key.
    """

    def __init__(
        self,
        *,
        engine: str = "rules",
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        api_key: str | None = None,
        any_key: bool = False,
        **config: Any,
    ) -> None:
        if any_key and api_key:
            raise InputError("Give the local server an api_key or any_key=True, not both.")
        self.engine = engine
        self.host = host
        self.port = port
        self.api_key = ANY_KEY if any_key else api_key
        self.any_key = any_key
        self._generate_key = not any_key and not api_key
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

    def client(self, **kwargs: Any) -> openai.OpenAI:
        """An ``openai.OpenAI`` client for this server (extra kwargs go to the client)."""
        import openai

        kwargs.setdefault("api_key", self.api_key)
        return openai.OpenAI(base_url=self.base_url, **kwargs)

    def start(self) -> LocalServer:
        """Start serving in a background thread (stopped at interpreter exit, or by ``stop``)."""
        with self._lock:
            if self._server is not None:
                return self
            made_data_dir = self.data_dir is None
            if self.data_dir is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="pb-local-"))
            if self._generate_key:
                self.api_key = new_api_key()  # a new one at each start
            if not _loopback(self.host):
                log.warning(
                    "The local server listens on %s, reachable from other machines; it requires "
                    "its API key, but requests travel as plain HTTP.",
                    self.host,
                )
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
            self._write_state()
            atexit.register(self.stop)
        return self

    def _write_state(self) -> None:
        """``<data_dir>/server.json`` (0600): where this server listens and, for a key made at
        start, the key, so that this user's other processes on the same home can reach it."""
        assert self.data_dir is not None
        state = {"base_url": self.base_url, "pid": os.getpid(), "engine": self.engine}
        if self._generate_key:
            state["api_key"] = self.api_key
        with private_file(self.data_dir / STATE_FILE) as handle:
            handle.write(json.dumps(state).encode())

    def _serve(
        self, sock: socket.socket, data_dir: Path
    ) -> tuple[uvicorn.Server, threading.Thread]:
        """Build the state and run uvicorn on ``sock`` in a thread; return once it accepts."""
        self._state = _build_state(
            engine=self.engine,
            data_dir=data_dir,
            api_key=None if self.any_key else self.api_key,
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
            if self.data_dir is not None:
                (self.data_dir / STATE_FILE).unlink(missing_ok=True)
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
    any_key: bool = False,
    **config: Any,
) -> Iterator[LocalServer]:
    """Run a local server in a background thread for the duration of a ``with`` block
    (arguments as ``LocalServer``'s; by default it requires a random key that ``client()`` has).

    >>> with serve(engine="rules", request_delay=0.01) as server:    # doctest: +SKIP
    ...     batch = server.client().batches.list()
    """
    server = LocalServer(
        engine=engine,
        host=host,
        port=port,
        data_dir=data_dir,
        api_key=api_key,
        any_key=any_key,
        **config,
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
    ``api_key`` is required of every request when given (read it with ``read_api_key``, never
    from the command line); without one any non-empty key is accepted, which the banner says.

    >>> run(port=8000, engine="rules", api_key=read_api_key())       # doctest: +SKIP
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
    sock.listen(2048)  # connections made once the banner is out wait for uvicorn, not refused
    banner = (
        f"portfolio_batch local server ({engine} engine, data in {directory}) at "
        f"http://{host}:{bound}/v1  (Ctrl-C to stop; "
        f"{'API key required' if api_key else 'any API key accepted'})"
    )
    if not _loopback(host):
        # Loud on purpose: the data dir holds every uploaded portfolio and every result. One
        # write with the banner, so that whoever reads the URL has been warned.
        banner += "\n" + _exposed_warning(host, bound, keyed=bool(api_key))
    print(banner, file=sys.stderr, flush=True)
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


def _exposed_warning(host: str, port: int, *, keyed: bool) -> str:
    line = "!" * 78
    if keyed:
        body = (
            f"WARNING: listening on {host}:{port}, reachable from other machines. Requests, the\n"
            "API key and every uploaded portfolio travel as plain HTTP: keep it on 127.0.0.1, or\n"
            "put it behind TLS on a network you trust."
        )
    else:
        body = (
            f"WARNING: listening on {host}:{port} with NO API KEY: anyone who can reach this port\n"
            "can list, download and delete every uploaded portfolio and every result. Stop it\n"
            f"and set {KEY_ENV} (or pass --api-key / --api-key-file), or bind 127.0.0.1."
        )
    return f"{line}\n{body}\n{line}"
