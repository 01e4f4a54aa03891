"""The child process an engine runs in: ``python -m portfolio_batch.local.engines._child PARENT_PID``
(``process.py`` starts it with ``python -c``, so that it imports the server's portfolio_batch).

It reads requests from stdin and writes replies to stdout, each a 4-byte big-endian length then
an orjson object (see ``process.py`` for the parent's side). A native crash here (SIGSEGV, SIGILL)
ends only this process; the server sees end-of-file on the pipe and reports it.

Requests: ``{"op": "init", "spec": "pkg.module:factory", "path": [...]}``, ``{"op": "warm"}``,
``{"op": "chat", "messages", "model", "response_format", "max_tokens"}``. Replies:
``{"ok": true, ...}``, or ``{"ok": false, "api_error": {...}}`` for an ``ApiError`` (the engine's
own 4xx, e.g. context_length_exceeded), or ``{"ok": false, "error": {"type", "module",
"message", "stage"}}`` for any other exception (stage ``import`` when the spec does not import).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import importlib
import os
import resource
import signal
import struct
import sys
import threading
import time
from typing import IO, Any

import orjson

HEADER = struct.Struct(">I")


def read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at end of file."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return orjson.loads(payload)


def write_frame(stream: IO[bytes], message: Any) -> None:
    payload = orjson.dumps(message)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def import_factory(spec: str) -> Any:
    """The callable named by ``"pkg.module:factory"`` (``factory`` may be dotted: ``Class.make``)."""
    module_name, _, attr = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _watch_parent(parent: int) -> None:
    # Reading stdin notices a dead parent only between requests; this also covers a long answer.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _error_reply(exc: BaseException) -> dict[str, Any]:
    status = getattr(exc, "status", None)
    if isinstance(status, int) and hasattr(exc, "body"):  # an ApiError: answered as the API would
        return {"ok": False, "api_error": {"status": status, **exc.body()["error"]}}
    kind = type(exc)
    return {
        "ok": False,
        "error": {"type": kind.__qualname__, "module": kind.__module__, "message": str(exc)},
    }


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until end of file."""
    engine: Any = None
    while True:
        message = read_frame(requests)
        if message is None:
            return
        op = message.get("op")
        stage = op
        reply: dict[str, Any]
        try:
            if op == "init":
                # The parent's import path, so an engine importable there is importable here.
                sys.path[:0] = [p for p in message.get("path", ()) if p not in sys.path]
                stage = "import"
                factory = import_factory(message["spec"])
                stage = "init"
                engine = factory()
                reply = {
                    "ok": True,
                    "name": str(getattr(engine, "name", message["spec"])),
                    "context_tokens": int(getattr(engine, "context_tokens", 0) or 0),
                    "crash_hint": str(getattr(engine, "crash_hint", "") or ""),
                }
            elif op == "warm":
                warm = getattr(engine, "warm", None)
                if warm is not None:
                    warm()
                reply = {"ok": True}
            elif op == "chat":
                content, finish_reason = engine.chat(
                    message["messages"],
                    model=message["model"],
                    response_format=message["response_format"],
                    max_tokens=message["max_tokens"],
                )
                reply = {"ok": True, "content": content, "finish_reason": finish_reason}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            reply = _error_reply(exc)
            if "error" in reply:
                reply["error"]["stage"] = stage
        write_frame(replies, reply)


def _no_core_dump() -> None:
    """A crash leaves no core file, whatever ``ulimit -c`` the user has (the server reports it
    in one line instead); not dumpable also covers a core_pattern that pipes to a collector."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):  # prctl is Linux only
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE (4) = 0
    faulthandler.disable()


def main(argv: list[str]) -> int:
    _no_core_dump()
    # Ctrl-C is for the parent (it has its own session anyway); it stops us by closing stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol gets private copies of stdin/stdout; fd 1 then goes to stderr, so whatever an
    # engine or its C library prints cannot corrupt a reply.
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    if argv:
        threading.Thread(
            target=_watch_parent, args=(int(argv[0]),), name="pb-engine-watch", daemon=True
        ).start()
    with contextlib.suppress(BrokenPipeError):  # the parent went away mid-reply
        serve(requests, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
