"""``python -m portfolio_batch.local [--host] [--port] [--engine] [--data-dir] [--api-key] ...``

The key the server requires is never given on the command line, where ``ps`` shows it to every
user: ``PORTFOLIO_BATCH_SERVER_KEY``, ``--api-key-file PATH``, or ``--api-key`` alone, which asks
for it (or reads one line of stdin: ``printf %s "$KEY" | python -m portfolio_batch.local --api-key``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from portfolio_batch.errors import InputError, PortfolioBatchError
from portfolio_batch.local.engines import ENGINES, check_engine_name
from portfolio_batch.local.server import KEY_ENV, read_api_key, run


def _engine(value: str) -> str:
    try:
        return check_engine_name(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m portfolio_batch.local",
        description="Run the local OpenAI-compatible Files + Batches server in the foreground.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; 0 = any free port)"
    )
    parser.add_argument(
        "--engine",
        type=_engine,
        default=os.environ.get("PORTFOLIO_BATCH_ENGINE", "rules"),
        help=f"{' or '.join(ENGINES)}, or your engine's import path package.module:factory "
        "(run in a child process) (default rules)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="where files and batches live (default <home>/local)"
    )
    parser.add_argument(
        "--api-key",
        nargs="?",
        const=True,
        default=None,
        help=f"require an API key, asked for at a prompt (or read from stdin); or set {KEY_ENV}, "
        "or --api-key-file. Without any, every non-empty key is accepted.",
    )
    parser.add_argument(
        "--api-key-file", default=None, help="require the API key held in this file"
    )
    parser.add_argument("--max-upload-bytes", type=int, default=None)
    parser.add_argument("--max-requests-per-batch", type=int, default=None)
    parser.add_argument("--max-enqueued-tokens", type=int, default=None)
    parser.add_argument("--completion-window-seconds", type=float, default=None)
    parser.add_argument(
        "--request-delay", type=float, default=None, help="seconds per batch request"
    )
    parser.add_argument(
        "--latency", type=float, default=None, help="seconds added to every API call"
    )
    parser.add_argument("--context-tokens", type=int, default=None)
    parser.add_argument("--fault-rate-429", type=float, default=None)
    parser.add_argument("--fault-rate-500", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    return parser


_CONFIG_FLAGS = (
    "max_upload_bytes",
    "max_requests_per_batch",
    "max_enqueued_tokens",
    "completion_window_seconds",
    "request_delay",
    "latency",
    "context_tokens",
    "fault_rate_429",
    "fault_rate_500",
    "seed",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(args.api_key, str):
        parser.error(
            "--api-key takes no value: a key on the command line is visible to every user in "
            f"`ps`. Set {KEY_ENV}, use --api-key-file PATH, or pass --api-key alone to type it."
        )
    config = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    try:
        api_key = read_api_key(prompt=args.api_key is True, key_file=args.api_key_file)
        run(
            host=args.host,
            port=args.port,
            engine=args.engine,
            data_dir=args.data_dir,
            api_key=api_key,
            log_level=args.log_level,
            **config,
        )
    except PortfolioBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
