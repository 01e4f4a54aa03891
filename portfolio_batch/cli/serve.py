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
    api_key: Annotated[
        bool,
        typer.Option(
            "--api-key",
            help="Require an API key, typed at a prompt (or one line of stdin). Never put the key "
            "itself on the command line, where `ps` shows it; or set PORTFOLIO_BATCH_SERVER_KEY.",
        ),
    ] = False,
    api_key_file: Annotated[
        Path | None,
        typer.Option("--api-key-file", help="Require the API key held in this file."),
    ] = None,
) -> None:
    """Run the local OpenAI-compatible Files + Batches server until Ctrl-C.

    Point the SDK or another portfolio-batch at it with OPENAI_BASE_URL=http://HOST:PORT/v1 and
    OPENAI_API_KEY set to the key it requires (PORTFOLIO_BATCH_SERVER_KEY, --api-key or
    --api-key-file; without one it accepts any non-empty key). Unlike the embedded server, it
    outlives the CLI run, so `jobs resume` works after the CLI is interrupted. On an address
    other than 127.0.0.1 it warns loudly.

    Example:

        PORTFOLIO_BATCH_SERVER_KEY=sk-team portfolio-batch serve --port 8000 --engine rules
    """
    from portfolio_batch import local
    from portfolio_batch._home import writable_dir

    # first through the package: without the local extra this names it (exit 2), not a traceback
    run = local.run
    from portfolio_batch.local.server import read_api_key

    if data_dir is not None:
        data_dir = writable_dir(data_dir, what="--data-dir")
    key = read_api_key(prompt=api_key, key_file=api_key_file)
    run(host=host, port=port, engine=engine, data_dir=data_dir, api_key=key)
