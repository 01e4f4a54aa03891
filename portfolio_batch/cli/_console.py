"""Shared terminal plumbing for the CLI: the two Rich consoles, exit codes, logging, the
confirmation prompt and the one place where errors become exit codes.

Results go to stdout (``out``) so a command can be piped; estimates, progress, logs and errors go
to stderr (``err``).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from portfolio_batch.errors import (
    BudgetExceededError,
    InputError,
    MissingDependencyError,
    PortfolioBatchError,
    PricingError,
)

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "confirm",
    "debug_enabled",
    "err",
    "error_line",
    "fail",
    "out",
    "run_app",
    "setup_logging",
]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

# Errors the user fixes by changing the command line or the input: exit 2, like click's usage errors.
_USAGE_ERRORS: tuple[type[BaseException], ...] = (
    InputError,
    PricingError,
    BudgetExceededError,
    MissingDependencyError,
)

err = Console(stderr=True, highlight=False)
# Piped stdout (a file, `less`, CI logs) has no width: wider than Rich's default 80 columns keeps
# the report's tables from wrapping or truncating there.
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
out = Console(highlight=False, width=_PIPE_WIDTH)


def debug_enabled() -> bool:
    """True when ``PORTFOLIO_BATCH_DEBUG`` asks for full tracebacks."""
    return os.environ.get("PORTFOLIO_BATCH_DEBUG", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def setup_logging(*, verbose: bool = False) -> None:
    """Send the library's log records to stderr: warnings by default, info with ``--verbose``."""
    from rich.logging import RichHandler

    level = logging.DEBUG if debug_enabled() else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    logger = logging.getLogger("portfolio_batch")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").handlers[:] = [handler]


def error_line(message: str, *, label: str = "Error:") -> None:
    """Print one error line on stderr; the message is plain text, never Rich markup."""
    err.print(Text.assemble((label, "bold red"), " ", message), soft_wrap=True)


def fail(message: str, *, code: int = EXIT_USAGE) -> NoReturn:
    """Stop with one clear line on stderr and the given exit code."""
    error_line(message)
    raise SystemExit(code)


def confirm(question: str, *, yes: bool) -> None:
    """Ask before spending money; refuse (exit 2) when there is no terminal to ask on.

    >>> confirm("Submit 40 requests?", yes=True)  # doctest: +SKIP
    """
    if yes:
        return
    if not sys.stdin.isatty():
        fail(
            "no terminal to confirm on (stdin is not a TTY): pass --yes to run without confirmation."
        )
    if not typer.confirm(question, default=False, err=True):
        err.print("Nothing was submitted.")
        raise SystemExit(EXIT_UNEXPECTED)


def _exit_code_for(exc: BaseException) -> int:
    return EXIT_USAGE if isinstance(exc, _USAGE_ERRORS) else EXIT_UNEXPECTED


def _api_error_message(exc: BaseException) -> str | None:
    """A one-line explanation for the openai SDK's own errors, without importing openai."""
    openai = sys.modules.get("openai")
    if openai is None or not isinstance(exc, openai.OpenAIError):
        return None
    if isinstance(exc, openai.AuthenticationError):
        return f"the API rejected the key ({exc}); check OPENAI_API_KEY (or AZURE_OPENAI_API_KEY)."
    if isinstance(exc, openai.APIConnectionError):
        return (
            f"could not reach the API ({exc}); check your network, OPENAI_BASE_URL, or unset the "
            "key to use the embedded local server."
        )
    return f"the API returned an error: {exc}"


def run_app(command: Any, argv: list[str] | None) -> int:
    """Run the (typer-vendored) click command; turn expected errors into one line on stderr and an exit code."""
    try:
        command.main(args=argv, prog_name="portfolio-batch", standalone_mode=True)
    except SystemExit as exc:
        code: Any = exc.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_UNEXPECTED)
    except PortfolioBatchError as exc:
        if debug_enabled():
            traceback.print_exc()
        error_line(str(exc))
        return _exit_code_for(exc)
    except Exception as exc:
        message = _api_error_message(exc)
        if debug_enabled() or message is None:
            traceback.print_exc()
        if message is not None:
            error_line(message)
        else:
            error_line(
                f"{type(exc).__name__}: {exc}. This is a bug; please report it with the "
                "traceback above.",
                label="Unexpected error:",
            )
        return EXIT_UNEXPECTED
    return EXIT_OK
