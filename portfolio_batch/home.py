"""Where portfolio_batch keeps its state: the job registry, downloaded result files, the local
server's data.

``PORTFOLIO_BATCH_HOME`` if set, else ``./.portfolio_batch`` in the current directory (a project-local
home, so a notebook and the CLI run from the same project share one registry).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "home"]


def home() -> Path:
    """The home directory, created if missing.

    >>> home()  # doctest: +SKIP
    PosixPath('.portfolio_batch')
    """
    env = os.environ.get("PORTFOLIO_BATCH_HOME")
    path = Path(env).expanduser() if env else Path.cwd() / ".portfolio_batch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(name: str) -> Path:
    """A sub-directory of the home, e.g. ``cache_dir("files")`` for downloaded result files."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
