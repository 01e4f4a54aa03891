"""The ``portfolio-batch`` command line: ``analyze-risk``, ``estimate``, ``report``, ``jobs`` and
``serve``.

Commands import pandas, openai and the pipeline only when they run, so ``--help`` stays fast.

    $ portfolio-batch analyze-risk testdata/portfolio.csv --batch --yes --out demo-out/
"""

from __future__ import annotations

import sys
from typing import NoReturn

from portfolio_batch.errors import missing_extra

__all__ = ["main"]

# What the ``cli`` extra installs (pyproject.toml); click comes with typer.
_EXTRA_MODULES = frozenset({"typer", "click", "rich"})


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI and exit with its code (0 ok, 3 partial, 2 usage/input, 1 unexpected).

    Without the ``cli`` extra it prints which ``pip install`` adds it and exits 2.
    """
    try:
        from portfolio_batch.cli._app import run
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0] not in _EXTRA_MODULES:
            raise
        print(f"Error: {missing_extra(exc.name, 'cli')}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(argv))
