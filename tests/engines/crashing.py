"""Engines that crash on purpose (SIGSEGV, as a bad native build does), to test that the local
server runs engines in a child process: ``LocalServer(engine="tests.engines.crashing:on_marked")``.

- ``on_marked``: the rules engine, except a request whose messages contain ``CRASH_MARK`` crashes;
- ``always``: every request crashes;
- ``on_load``: loading (``warm``) crashes.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson

from portfolio_batch.local.engines.rules import RulesEngine

CRASH_MARK = "CRASH-ME"


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


class CrashingEngine(RulesEngine):
    """The rules engine that dies by SIGSEGV when told to."""

    name = "crashing"

    def __init__(self, *, always: bool = False, on_load: bool = False) -> None:
        self.always = always
        self.on_load = on_load

    def warm(self) -> None:
        if self.on_load:
            _crash()

    def chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> tuple[str, str]:
        if self.always or CRASH_MARK in orjson.dumps(messages).decode():
            _crash()
        return super().chat(messages, **kwargs)


def on_marked() -> CrashingEngine:
    return CrashingEngine()


def always() -> CrashingEngine:
    return CrashingEngine(always=True)


def on_load() -> CrashingEngine:
    return CrashingEngine(on_load=True)
