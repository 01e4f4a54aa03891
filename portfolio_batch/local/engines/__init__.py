"""Engines answer chat requests for the local server; one module each.

``rules`` (default) is instant and deterministic; ``smollm2`` runs a real 135M-parameter model
through llama-cpp-python (extra ``local-llm``).

    >>> engine = load_engine("rules")
    >>> engine.chat([{"role": "user", "content": "hi"}], model="gpt-4o-mini",
    ...             response_format=None, max_tokens=None)[1]
    'stop'
"""

from __future__ import annotations

from typing import Any, Protocol

from portfolio_batch.errors import InputError

__all__ = ["ENGINES", "Engine", "load_engine"]

ENGINES = ("rules", "smollm2")


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


def load_engine(name: str) -> Engine:
    """A new engine by name (``rules`` or ``smollm2``)."""
    if name == "rules":
        from portfolio_batch.local.engines.rules import RulesEngine

        return RulesEngine()
    if name == "smollm2":
        from portfolio_batch.local.engines.smollm2 import SmolLM2Engine

        return SmolLM2Engine()
    raise InputError(f"Unknown engine {name!r}; use --engine rules or --engine smollm2.")
