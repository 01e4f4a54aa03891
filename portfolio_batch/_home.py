"""Where portfolio_batch keeps its state: the job registry, downloaded result files, the local
server's data.

``PORTFOLIO_BATCH_HOME`` if set, else ``./.portfolio_batch`` in the current directory (a project-local
home, so a notebook and the CLI run from the same project share one registry).

Every directory portfolio_batch writes into (the home, its sub-directories, the CLI's ``--out``,
``to_jsonl``'s ``out_dir``) goes through :func:`writable_dir`, so a path that is a file or cannot
be written is one ``InputError`` naming it, never a traceback from deep inside a run.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from portfolio_batch.errors import InputError

__all__ = ["cache_dir", "home", "writable_dir"]

# Directories already shown writable by this process: the probe file is written once per directory,
# not on every registry open or download.
_probed: set[str] = set()


def writable_dir(path: str | os.PathLike[str], *, what: str, fix: str | None = None) -> Path:
    """``path`` as an existing directory this process can write to, created (with its parents)
    if missing. Anything else is an ``InputError`` naming ``what`` (the flag, variable or
    argument the path came from), the path, the reason and ``fix``.

    >>> writable_dir("demo-out", what="--out")  # doctest: +SKIP
    PosixPath('demo-out')
    """
    directory = Path(path).expanduser()
    fix = fix or f"give {what} a directory you can write to (it is created if missing)"

    def refuse(reason: str) -> InputError:
        return InputError(f"{what} {str(directory)!r} {reason}; {fix}")

    try:
        is_dir = directory.is_dir()
        # The nearest part of the path that exists decides what went wrong.
        existing = (
            None
            if is_dir
            else next((p for p in (directory, *directory.parents) if p.exists()), None)
        )
    except OSError as exc:  # a parent we may not search (EACCES)
        raise refuse(f"cannot be reached ({exc.strerror or exc})") from None
    if not is_dir:
        # It may be a directory by now: another thread or process created it meanwhile.
        if existing == directory and not directory.is_dir():
            raise refuse("is a file, not a directory")
        if existing is not None and not existing.is_dir():
            raise refuse(f"cannot be created: {str(existing)!r} is a file, not a directory")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            # Created as a file meanwhile, or a symlink to nowhere.
            raise refuse("exists and is not a directory") from None
        except OSError as exc:
            raise refuse(f"cannot be created ({exc.strerror or exc})") from None
    key = os.path.realpath(directory)
    if key not in _probed:
        # os.access() says yes to root whatever the mode bits and knows nothing of read-only
        # mounts; creating a file is the test that cannot lie.
        try:
            handle, probe = tempfile.mkstemp(prefix=".write-check-", dir=directory)
        except OSError as exc:
            raise refuse(f"is not writable ({exc.strerror or exc})") from None
        os.close(handle)
        os.unlink(probe)
        _probed.add(key)
    return directory


def home() -> Path:
    """The home directory, created if missing; an ``InputError`` if it cannot be written.

    >>> home()  # doctest: +SKIP
    PosixPath('.portfolio_batch')
    """
    env = os.environ.get("PORTFOLIO_BATCH_HOME")
    # Portfolios and results live here: a home made here, and the default one, are owner-only
    # (0700); a directory you named that already existed keeps its mode.
    private = not env or not Path(env).expanduser().exists()
    if env:
        path = writable_dir(
            env,
            what="PORTFOLIO_BATCH_HOME",
            fix="set PORTFOLIO_BATCH_HOME to a directory you can write to (it is created if missing)",
        )
    else:
        path = writable_dir(
            Path.cwd() / ".portfolio_batch",
            what="the home directory",
            fix="run from a directory you can write to, or set PORTFOLIO_BATCH_HOME to one",
        )
    if private:
        # a home writable but someone else's is not ours to change
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o700)
    return path


def cache_dir(name: str) -> Path:
    """A sub-directory of the home, e.g. ``cache_dir("files")`` for downloaded result files."""
    return writable_dir(
        home() / name,
        what="the home's sub-directory",
        fix=f"remove or rename what is in the way of the home's {name!r} directory, or set "
        "PORTFOLIO_BATCH_HOME to another directory",
    )
