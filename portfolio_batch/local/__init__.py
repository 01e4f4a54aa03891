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

from portfolio_batch.local.config import ServerConfig
from portfolio_batch.local.server import LocalServer, run, serve

__all__ = ["LocalServer", "ServerConfig", "run", "serve"]
