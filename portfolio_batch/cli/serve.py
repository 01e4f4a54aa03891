"""``portfolio-batch serve``: the local OpenAI-compatible Files + Batches server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from portfolio_batch.cli.analyze import engine_option

__all__ = ["serve"]


def serve(
    host: Annotated[
        str, typer.Option("--host", help="Address to bind; keep 127.0.0.1 unless you mean it.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)
    ] = 8000,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="rules (instant, deterministic), smollm2 (a real small LLM), or your engine's "
            "import path package.module:factory (smollm2 and yours run in a child process).",
            callback=engine_option,
        ),
    ] = "rules",
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where files and batches are kept [default: $PORTFOLIO_BATCH_HOME/local].",
        ),
    ] = None,
) -> None:
    """Run the local OpenAI-compatible Files + Batches server until Ctrl-C.

    Point the SDK or another portfolio-batch at it with OPENAI_BASE_URL=http://HOST:PORT/v1 and
    any non-empty OPENAI_API_KEY. Unlike the embedded server, it outlives the CLI run, so
    `jobs resume` works after the CLI is interrupted.

    Example:

        portfolio-batch serve --port 8000 --engine rules
    """
    from portfolio_batch import local
    from portfolio_batch.home import writable_dir

    if data_dir is not None:
        data_dir = writable_dir(data_dir, what="--data-dir")
    local.run(host=host, port=port, engine=engine, data_dir=data_dir)
