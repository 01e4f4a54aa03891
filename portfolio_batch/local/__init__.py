"""An OpenAI-compatible Files + Batches server that runs offline on 127.0.0.1.

Spoken to by the real ``openai`` SDK over real HTTP; batches run on a deterministic ``rules``
engine (default) or a real small model (``smollm2``, extra ``local-llm``).

    >>> from portfolio_batch.local import serve
    >>> with serve(engine="rules") as server:                        # doctest: +SKIP
    ...     client = server.client()
    ...     f = client.files.create(file=open("requests.jsonl", "rb"), purpose="batch")
    ...     batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
    ...                                   completion_window="24h")

Three ways to start it: ``serve(...)`` (a context manager, background thread),
``LocalServer(...).start()``, and ``run(...)`` / ``python -m portfolio_batch.local`` (foreground).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from portfolio_batch.errors import missing_extra

if TYPE_CHECKING:
    from portfolio_batch.local.config import ServerConfig
    from portfolio_batch.local.server import LocalServer, run, serve

__all__ = ["LocalServer", "ServerConfig", "run", "serve"]

# Imported on first use: an engine's child process imports portfolio_batch.local.engines, and
# must not pay for uvicorn and FastAPI, which only the server needs.
_LAZY = {
    "LocalServer": "portfolio_batch.local.server",
    "run": "portfolio_batch.local.server",
    "serve": "portfolio_batch.local.server",
    "ServerConfig": "portfolio_batch.local.config",
}
# What the ``local`` extra installs (pyproject.toml): the server's imports of these fail without it.
_EXTRA_MODULES = frozenset(
    {"fastapi", "starlette", "uvicorn", "python_multipart", "fastjsonschema"}
)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.partition(".")[0] in _EXTRA_MODULES:
                raise missing_extra(exc.name, "local") from exc
            raise
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
