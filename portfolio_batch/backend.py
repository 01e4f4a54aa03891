"""``client()``: the one place that decides where requests go.

- ``OPENAI_API_KEY`` set → ``openai.OpenAI``.
- ``AZURE_OPENAI_ENDPOINT`` + ``AZURE_OPENAI_API_KEY`` + ``OPENAI_API_VERSION`` → ``openai.AzureOpenAI``
  (request urls have no ``/v1``; the model is the deployment name).
- Neither, or ``engine=`` given → the embedded local server (engine from ``PORTFOLIO_BATCH_ENGINE``,
  default ``rules``), started once per process and engine, data under ``home()/local/<engine>``.
  Picking it issues a ``SimulatedBackendWarning`` once per process and engine: its answers are
  simulated, and a user must not mistake them for an LLM's.

    >>> import portfolio_batch as pb
    >>> c = pb.client()                       # no key in the environment: the local server
    >>> str(c.base_url).startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping
from typing import Any

import openai

from portfolio_batch.errors import InputError, LocalServerError, SimulatedBackendWarning
from portfolio_batch.home import home

__all__ = [
    "backend_name",
    "client",
    "configured_backend",
    "embedded_server",
    "engine_of",
    "key_typos",
    "poll_interval_bounds",
    "reset_client",
    "simulated_banner",
    "simulated_notice",
]

log = logging.getLogger("portfolio_batch")

_AZURE_VARS = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION")
# An embedded server requires the random key it makes at each start (server.api_key); this is
# only the fallback for a server object without one.
_LOCAL_KEY = "local-no-key"

_lock = threading.Lock()
_servers: dict[str, Any] = {}  # engine -> running LocalServer
_embedded_urls: dict[str, str] = {}  # base_url -> engine
_logged: set[str] = set()
# Engines whose SimulatedBackendWarning this process has shown; reset_client() keeps it, as the
# user has been told.
_announced: set[str] = set()
# Spellings of OPENAI_API_KEY seen in the wild, compared in upper case without "_"/"-": with one
# of them set, the user meant OpenAI and silently got simulated answers.
_KEY_TYPOS = frozenset(
    {
        "OPENAIAPIKEY",  # OPENAI_APIKEY, OPEN_AI_API_KEY, openai_api_key
        "OPENAIKEY",
        "OPENAIAPIKEYS",
        "OPENAIAPITOKEN",
        "OPENAITOKEN",
        "OPENAISECRETKEY",
        "OPENAIAPISECRET",
        "OPENAPIKEY",
    }
)
_LOCAL_PREFIX = "local:embedded:"


def _log_once(name: str, detail: str) -> None:
    if name not in _logged:
        _logged.add(name)
        log.info("portfolio_batch backend: %s", detail)


def key_typos(environ: Mapping[str, str] | None = None) -> list[str]:
    """Set variables whose name looks like a misspelt ``OPENAI_API_KEY`` (never their values).

    >>> key_typos({"OPENAI_APIKEY": "sk-...", "openai_api_key": "sk-...", "HOME": "/root"})
    ['OPENAI_APIKEY', 'openai_api_key']
    """
    env = os.environ if environ is None else environ
    return sorted(
        name
        for name, value in env.items()
        if value and name != "OPENAI_API_KEY" and re.sub(r"[^A-Z]", "", name.upper()) in _KEY_TYPOS
    )


def simulated_notice(engine: str, *, reason: str | None = None) -> str:
    """What picking the embedded server means, in one or two sentences (the warning's and the
    CLI's text), naming a likely typo of the key variable.

    >>> print(simulated_notice("rules"))  # doctest: +ELLIPSIS
    No API key found: running offline on the local server (engine rules); answers are simulated, ...
    """
    what = "not an LLM's judgement" if engine == "rules" else "not the requested model's"
    text = (
        f"{reason or 'No API key found'}: running offline on the local server (engine {engine}); "
        f"answers are simulated, {what}. Set OPENAI_API_KEY to use OpenAI."
    )
    typos = key_typos()
    if typos:
        text += f" Found {', '.join(typos)}: did you mean OPENAI_API_KEY?"
    return text


def simulated_banner(engine: str | None, *, mode: str = "batch") -> str:
    """The line a simulated run's report, CSV, summary and notebook panel start with.

    >>> simulated_banner("rules")
    'Simulated: answers from the offline local rules engine, not an LLM. Costs show what this run would cost at OpenAI batch prices.'
    """
    source = f"the offline local {engine} engine" if engine else "an offline local server"
    what = "an LLM" if engine == "rules" else "the requested model"
    prices = "synchronous" if mode == "sync" else "batch"
    return (
        f"Simulated: answers from {source}, not {what}. "
        f"Costs show what this run would cost at OpenAI {prices} prices."
    )


def engine_of(backend: str | None) -> str | None:
    """The engine of an embedded-server backend name (``local:embedded:rules`` → ``rules``).

    >>> engine_of("local:embedded:smollm2"), engine_of("openai")
    ('smollm2', None)
    """
    if isinstance(backend, str) and backend.startswith(_LOCAL_PREFIX):
        return backend.removeprefix(_LOCAL_PREFIX)
    return None


def _announce(engine: str, reason: str | None) -> None:
    with _lock:
        if engine in _announced:
            return
        _announced.add(engine)
    warnings.warn(
        simulated_notice(engine, reason=reason), SimulatedBackendWarning, stacklevel=_user_level()
    )


def _user_level() -> int:
    """The stacklevel of the first caller outside portfolio_batch: the warning names the user's
    line (``pb.submit(...)``), not the library's call of ``client()``."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "portfolio_batch"
    ):
        frame, level = frame.f_back, level + 1
    return level


def embedded_server(engine: str | None = None) -> Any:
    """The embedded local server for ``engine``, started on first use and stopped at exit."""
    engine = engine or os.environ.get("PORTFOLIO_BATCH_ENGINE") or "rules"
    with _lock:
        server = _servers.get(engine)
        if server is not None:
            return server
        try:
            from portfolio_batch.local import LocalServer
        except ImportError as exc:
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing and not missing.startswith("portfolio_batch"):
                # an install that lacks a dependency: reinstalling fixes it, paying for OpenAI
                # is not the fix
                raise LocalServerError(
                    f"The embedded local server cannot be imported: its dependency {missing!r} "
                    f"is missing ({exc}); install it with pip install -e . in portfolio_batch's "
                    "directory (or make demo), or set OPENAI_API_KEY to use OpenAI"
                ) from exc
            raise LocalServerError(
                f"The embedded local server cannot be imported ({exc}); set OPENAI_API_KEY to use "
                "OpenAI instead."
            ) from exc
        data_dir = home() / "local" / engine
        data_dir.mkdir(parents=True, exist_ok=True)
        server = LocalServer(engine=engine, data_dir=data_dir)
        try:
            server.start()
        except LocalServerError:
            raise
        except Exception as exc:
            raise LocalServerError(
                f"The embedded local server (engine={engine!r}, data in {data_dir}) did not start: "
                f"{exc}. Set OPENAI_API_KEY to use OpenAI, or try PORTFOLIO_BATCH_ENGINE=rules."
            ) from exc
        if not _servers:
            atexit.register(reset_client)
        _servers[engine] = server
        _embedded_urls[str(server.base_url).rstrip("/")] = engine
        return server


def configured_backend() -> str | None:
    """``"openai"`` or ``"azure"`` when the environment configures a real backend, else None.

    Azure half set up (one or two of its three variables) is an error rather than a silent fall
    back to the local server: the user meant to reach Azure, and would otherwise get local answers.
    """
    if os.environ.get("OPENAI_API_KEY"):
        return "openai"
    present = [v for v in _AZURE_VARS if os.environ.get(v)]
    if len(present) == len(_AZURE_VARS):
        return "azure"
    if present:
        missing = [v for v in _AZURE_VARS if v not in present]
        raise InputError(
            f"Azure OpenAI is partly configured: {', '.join(present)} set but {', '.join(missing)} "
            f"missing. Set {' and '.join(missing)} (e.g. OPENAI_API_VERSION=2024-10-21) to use "
            f"Azure, or unset {', '.join(present)} to use the local server."
        )
    return None


def client(**overrides: Any) -> openai.OpenAI:
    """An ``openai`` client for the backend the environment selects.

    ``overrides`` go to the client's constructor (``max_retries=``, ``timeout=`` …);
    ``engine="smollm2"`` (the CLI's ``--engine``) always selects the embedded local server.

    >>> pb.client(max_retries=5).max_retries   # doctest: +SKIP
    5
    """
    engine = overrides.pop("engine", None)
    configured = configured_backend() if engine is None else None
    if configured == "openai":
        _log_once("openai", "OpenAI (OPENAI_API_KEY is set)")
        return openai.OpenAI(**overrides)
    if configured == "azure":
        _log_once("azure", f"Azure OpenAI at {os.environ['AZURE_OPENAI_ENDPOINT']}")
        return openai.AzureOpenAI(**overrides)
    server = embedded_server(engine)
    chosen = getattr(server, "engine", None) or engine or "rules"
    keyed = os.environ.get("OPENAI_API_KEY") or all(os.environ.get(v) for v in _AZURE_VARS)
    _announce(str(chosen), f"engine={engine!r} given" if engine is not None and keyed else None)
    _log_once(
        f"local:{server.base_url}",
        f"embedded local server (engine={server.engine if hasattr(server, 'engine') else engine}) "
        f"at {server.base_url}; set OPENAI_API_KEY to use OpenAI",
    )
    # the random key the embedded server made at start and requires (issue 15)
    overrides.setdefault("api_key", getattr(server, "api_key", None) or _LOCAL_KEY)
    return openai.OpenAI(base_url=str(server.base_url), **overrides)


def reset_client() -> None:
    """Stop the embedded local servers this process started, so the next ``client()`` decides
    afresh (for tests, and at interpreter exit)."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
        _embedded_urls.clear()
        _logged.clear()
    for server in servers:
        server.stop()


def backend_name(c: Any) -> str:
    """A stable name of the backend a client talks to: ``"openai"`` (``"openai:<org>:<project>"``
    when those are set), ``"azure:<host>"``, ``"local:embedded:<engine>"`` for the embedded server,
    else ``"local:<base_url>"``.

    It is part of the idempotency key, so that the same file sent to two backends makes two
    batches; it never contains a key.

    >>> backend_name(openai.OpenAI(api_key="x"))
    'openai'
    """
    host = c.base_url.host
    if isinstance(c, openai.AzureOpenAI) or host.endswith(
        (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
    ):
        return f"azure:{host}"
    base = str(c.base_url).rstrip("/")
    engine = _embedded_urls.get(base)
    if engine is not None:
        # The port changes per process; the data directory (and so the batches) does not.
        return f"{_LOCAL_PREFIX}{engine}"
    if host == "api.openai.com":
        scope = [s for s in (getattr(c, "organization", None), getattr(c, "project", None)) if s]
        return ":".join(["openai", *scope])
    return f"local:{base}"


def poll_interval_bounds(c: Any) -> tuple[float, float]:
    """(first, largest) seconds between status checks: quick on loopback, about a minute on
    OpenAI and Azure, where a batch takes minutes to hours."""
    if c.base_url.host in ("127.0.0.1", "localhost", "::1"):
        return 0.05, 1.0
    return 5.0, 60.0
