"""Engines answer chat requests for the local server; one module each.

``rules`` (default) is instant and deterministic and runs in the server's process; ``smollm2``
runs a real 135M-parameter model through llama-cpp-python (extra ``local-llm``) in a child process
(``process.ChildEngine``), where a native crash fails requests instead of killing the server. Any
other engine is named by an import path ``"package.module:factory"`` (``factory()`` returns an
object with ``name``, ``context_tokens``, ``chat`` and ``warm``) and also runs in a child process.

    >>> engine = load_engine("rules")
    >>> engine.chat([{"role": "user", "content": "hi"}], model="gpt-4o-mini",
    ...             response_format=None, max_tokens=None)[1]
    'stop'
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from portfolio_batch.errors import InputError

__all__ = ["ENGINES", "Engine", "check_engine_name", "load_engine"]

ENGINES = ("rules", "smollm2")
# Built-in engines that load native code: they run in a child process.
CHILD_ENGINES = {"smollm2": "portfolio_batch.local.engines.smollm2:SmolLM2Engine"}
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class Engine(Protocol):
    """What the server needs from an engine."""

    name: str
    context_tokens: int

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
    ) -> tuple[str, str]:
        """The answer's text and its ``finish_reason``."""
        ...

    def warm(self) -> None:
        """Load whatever is slow to load (called once in the background at start)."""
        ...


def check_engine_name(name: str) -> str:
    """``name`` if it names an engine (``rules``, ``smollm2`` or ``package.module:factory``).

    >>> check_engine_name("my_engines.fast:make_engine")
    'my_engines.fast:make_engine'
    """
    if name in ENGINES or IMPORT_PATH.match(name):
        return name
    raise InputError(
        f"Unknown engine {name!r}; use --engine rules, --engine smollm2, or an import path "
        "'package.module:factory' of your own engine."
    )


def load_engine(name: str) -> Engine:
    """A new engine by name: ``rules`` in this process; ``smollm2`` and ``package.module:factory``
    in a child process (close it with ``engine.close()``)."""
    check_engine_name(name)
    if name == "rules":
        from portfolio_batch.local.engines.rules import RulesEngine

        return RulesEngine()
    from portfolio_batch.local.engines.process import ChildEngine

    if name in CHILD_ENGINES:
        return ChildEngine(CHILD_ENGINES[name], name=name)
    return ChildEngine(name)
