"""Engines run in a child process of the server, so a native crash cannot take the server (or the
CLI, or the notebook kernel the embedded server runs in) down with it.

``ChildEngine("pkg.module:factory")`` starts a Python running ``engines/_child.py``, which builds
the engine by calling ``factory()`` and answers ``chat``/``warm`` over a pipe. It is
an ``Engine`` like any other, so the executor and the batch worker use it unchanged.

When the child dies (a signal such as SIGSEGV, or an exit) during a request, that request fails
with a 500 ``EngineError`` naming the engine and the signal, and the next request starts a new
child. A crash while starting or loading, or ``MAX_CONSECUTIVE_CRASHES`` crashes in a row, is
``fatal``: the batch worker ends the batch ``failed`` rather than crash again on every line.

    >>> engine = ChildEngine("portfolio_batch.local.engines.rules:RulesEngine")  # doctest: +SKIP
    >>> engine.chat([{"role": "user", "content": "hi"}], model="gpt-4o-mini",
    ...             response_format=None, max_tokens=None)[1]                    # doctest: +SKIP
    'stop'
    >>> engine.close()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from portfolio_batch.errors import InputError, LocalServerError, PortfolioBatchError
from portfolio_batch.local.engines._child import read_frame, write_frame
from portfolio_batch.local.store import ApiError

__all__ = ["MAX_CONSECUTIVE_CRASHES", "ChildEngine", "EngineError", "describe_exit"]

log = logging.getLogger("portfolio_batch.local")

MAX_CONSECUTIVE_CRASHES = 3
# How long a child gets to exit after its stdin is closed, before it is killed.
STOP_GRACE_SECONDS = 2.0


class EngineError(ApiError):
    """An engine could not answer: a 500 in OpenAI's shape. ``fatal`` means the engine cannot be
    relied on any more (it crashed while loading, or on several requests in a row): the batch
    worker then fails the batch with ``batch_message`` instead of trying the next line."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "engine_crashed",
        fatal: bool = False,
        batch_message: str | None = None,
        status: int = 500,
    ) -> None:
        super().__init__(status, message, type="server_error", code=code)
        self.fatal = fatal
        self.batch_message = batch_message or message


def describe_exit(returncode: int | None) -> str:
    """``SIGSEGV`` for a process killed by signal 11, ``exit code 3`` for ``exit(3)``.

    >>> describe_exit(-11), describe_exit(3)
    ('SIGSEGV', 'exit code 3')
    """
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class _ChildDied(Exception):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


# The child imports this same portfolio_batch, wherever it was imported from (argv[1]); put
# first only when it is not already on the path, so site-packages never goes before the stdlib.
_BOOTSTRAP = (
    "import sys; root = sys.argv[1]; root in sys.path or sys.path.insert(0, root); "
    "from portfolio_batch.local.engines._child import main; sys.exit(main(sys.argv[2:]))"
)


def _child_command() -> list[str]:
    root = str(Path(__file__).resolve().parents[3])  # the directory holding portfolio_batch/
    return [sys.executable, "-c", _BOOTSTRAP, root, str(os.getpid())]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The crash is reported in one line by the server; a faulthandler dump would only add noise.
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _known_error(module: str, name: str) -> type[PortfolioBatchError] | None:
    """The class of an error the child raised, if it is one of ours (rebuilt from its message)."""
    if module != "portfolio_batch.errors":
        return None
    cls = getattr(importlib.import_module(module), name, None)
    if isinstance(cls, type) and issubclass(cls, PortfolioBatchError):
        return cls
    return None


class ChildEngine:
    """An ``Engine`` whose ``chat`` and ``warm`` run in a child process (one request at a time).

    ``spec`` is ``"package.module:factory"``; ``factory()`` returns the engine. ``name`` labels
    it in messages (default: the engine's own ``name``). Building it starts the child and raises
    what the engine's constructor raised (e.g. ``MissingDependencyError``); ``close()`` stops it.
    """

    def __init__(self, spec: str, *, name: str | None = None) -> None:
        self.spec = spec
        self.name = name or spec
        self.context_tokens = 0
        self.crash_hint = ""
        self._named = name is not None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._warmed = False
        self._closed = False
        self._crashes = 0
        with self._lock:
            try:
                self._spawn()
            except _ChildDied as died:
                raise LocalServerError(
                    f"engine {self.name} crashed ({died.how}) while starting, before answering "
                    f"anything.{self._hint()}"
                ) from None

    @property
    def pid(self) -> int | None:
        """The child's process id (None between a crash and the next request)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    # the child ---------------------------------------------------------------------------
    def _hint(self) -> str:
        return f" {self.crash_hint}" if self.crash_hint else ""

    def _spawn(self) -> None:
        """Start a child and build the engine in it (lock held)."""
        if self._closed:  # close() ran meanwhile: start nothing it would not stop
            raise _ChildDied("stopped")
        self._warmed = False
        self._proc = subprocess.Popen(
            _child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(),
            # Its own session: Ctrl-C in the terminal is for the CLI, which stops the child itself.
            start_new_session=True,
        )
        # The parent's sys.path, so that an engine importable here is importable there.
        paths = [os.getcwd() if p == "" else p for p in sys.path if isinstance(p, str)]
        reply = self._call({"op": "init", "spec": self.spec, "path": paths})
        if not reply.get("ok"):
            self._stop_child()
            raise self._init_error(reply)
        if not self._named:
            self.name = reply["name"] or self.spec
        self.context_tokens = int(reply["context_tokens"]) or 128_000
        self.crash_hint = reply["crash_hint"]

    def _init_error(self, reply: dict[str, Any]) -> Exception:
        error = reply.get("error") or reply.get("api_error") or {}
        kind, message = error.get("type", "Exception"), error.get("message", "")
        if error.get("stage") == "import":
            return InputError(
                f"Engine {self.spec!r} cannot be imported ({kind}: {message}). An engine is "
                "'rules', 'smollm2' or 'package.module:factory' importable by this Python."
            )
        cls = _known_error(str(error.get("module")), str(kind))
        if cls is not None:
            try:
                return cls(message)
            except TypeError:  # an error class with required keyword arguments
                pass
        return LocalServerError(f"engine {self.name} could not be created: {kind}: {message}")

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and read its reply; ``_ChildDied`` if the child is gone (lock held)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise _ChildDied("not running")
        try:
            write_frame(proc.stdin, message)
            reply = read_frame(proc.stdout)
        except (OSError, ValueError):  # a broken pipe, or a pipe close() shut meanwhile
            reply = None
        if reply is None:
            raise _ChildDied(describe_exit(self._reap(proc)))
        return dict(reply)

    def _reap(self, proc: subprocess.Popen[bytes]) -> int | None:
        """The dead child's exit status; it is forgotten, so the next request starts another."""
        self._proc = None
        self._warmed = False
        try:
            returncode = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed its pipe but lives on: end it
            proc.kill()
            returncode = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return returncode

    def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child reads end of file and exits
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # busy in native code: it is ours, and untrusted
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def _ready(self) -> None:
        """A running child with a loaded engine; a crash here is fatal (lock held)."""
        if self._closed:
            raise EngineError(
                f"engine {self.name} is stopped: the local server is shutting down.",
                code="engine_stopped",
                status=503,
            )
        doing = "starting"
        try:
            if self._proc is None:
                self._spawn()
            doing = "loading"
            if not self._warmed:
                reply = self._call({"op": "warm"})
                if not reply.get("ok"):
                    error = reply.get("error") or reply.get("api_error") or {}
                    raise EngineError(
                        f"engine {self.name} could not load: {error.get('type', 'error')}: "
                        f"{error.get('message')}",
                        code="engine_unavailable",
                        fatal=True,
                    )
                self._warmed = True
        except _ChildDied as died:
            if self._closed:
                raise EngineError(
                    f"engine {self.name} was stopped: the local server is shutting down.",
                    code="engine_stopped",
                    status=503,
                ) from None
            message = (
                f"engine {self.name} crashed ({died.how}) while {doing}, before answering "
                f"anything; no request can run on it.{self._hint()}"
            )
            raise EngineError(message, fatal=True) from None
        except PortfolioBatchError as exc:  # the engine's constructor refused, on a restart
            raise EngineError(
                f"engine {self.name} could not restart: {exc}",
                code="engine_unavailable",
                fatal=True,
            ) from None

    # Engine -------------------------------------------------------------------------------
    def warm(self) -> None:
        """Load the engine's model in the child now; raises a fatal ``EngineError`` if it crashes."""
        with self._lock:
            self._ready()

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
    ) -> tuple[str, str]:
        request = {
            "op": "chat",
            "messages": messages,
            "model": model,
            "response_format": response_format,
            "max_tokens": max_tokens,
        }
        with self._lock:
            self._ready()
            try:
                reply = self._call(request)
            except _ChildDied as died:
                if self._closed:
                    raise EngineError(
                        f"engine {self.name} was stopped: the local server is shutting down.",
                        code="engine_stopped",
                        status=503,
                    ) from None
                self._crashes += 1
                crashes = self._crashes
                fatal = crashes >= MAX_CONSECUTIVE_CRASHES
                if fatal:
                    self._crashes = 0  # a later batch gets its own tries
                log.warning("engine %s crashed (%s) while answering a request", self.name, died.how)
                raise EngineError(
                    f"engine {self.name} crashed ({died.how}) while answering this request; "
                    f"the local server restarts it for the next request.{self._hint()}",
                    fatal=fatal,
                    batch_message=(
                        f"engine {self.name} crashed ({died.how}) on {crashes} requests in a "
                        "row, so the local server stopped this batch; the requests after them "
                        f"were not run.{self._hint()}"
                    ),
                ) from None
            self._crashes = 0
        if reply.get("ok"):
            return str(reply["content"]), str(reply["finish_reason"])
        if "api_error" in reply:  # the engine's own answer, e.g. context_length_exceeded
            error = reply["api_error"]
            raise ApiError(
                int(error["status"]),
                str(error.get("message")),
                type=str(error.get("type") or "invalid_request_error"),
                param=error.get("param"),
                code=error.get("code"),
            )
        error = reply.get("error") or {}
        raise EngineError(
            f"engine {self.name} failed on this request: {error.get('type')}: "
            f"{error.get('message')}",
            code="engine_error",
        )

    def close(self) -> None:
        """Stop the child (it is also stopped if this process dies: it reads end of file)."""
        self._closed = True
        self._stop_child()

    def __repr__(self) -> str:
        return f"<ChildEngine {self.name} ({self.spec}) pid={self.pid}>"
