"""``client()``: the one place that decides where requests go.

- ``OPENAI_API_KEY`` set → ``openai.OpenAI``.
- ``AZURE_OPENAI_ENDPOINT`` + ``AZURE_OPENAI_API_KEY`` + ``OPENAI_API_VERSION`` → ``openai.AzureOpenAI``
  (request urls have no ``/v1``; the model is the deployment name).
- Neither, or ``engine=`` given → the embedded local server (engine from ``PORTFOLIO_BATCH_ENGINE``,
  default ``rules``), one per home and engine, data under ``home()/local/<engine>``: the first
  process starts it and records its address and random key in ``server.json`` there; later
  processes (a notebook and the CLI at once) use it, and a dead one is replaced by the next caller.
  Picking it issues a ``SimulatedBackendWarning`` once per process and engine: its answers are
  simulated, and a user must not mistake them for an LLM's.

    >>> import portfolio_batch as pb
    >>> c = pb.client()                       # no key in the environment: the local server
    >>> str(c.base_url).startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import httpx2  # openai's HTTP library (a fork of httpx): its client takes this transport
import openai

from portfolio_batch._home import cache_dir, home
from portfolio_batch._locks import LockBusy, home_lock
from portfolio_batch.errors import (
    InputError,
    LocalServerError,
    MissingDependencyError,
    SimulatedBackendWarning,
    missing_extra,
)

__all__ = [
    "backend_name",
    "client",
    "client_for",
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
_servers: dict[str, Any] = {}  # engine -> running LocalServer, or _SharedServer of another process
# engine -> the "owner" file lock held while this process's embedded server runs: it tells the
# other processes on the home that the server named in server.json is alive (the OS drops it when
# this process dies, however it dies).
_owner_locks: dict[str, Any] = {}
_embedded_urls: dict[str, str] = {}  # base_url -> engine
_logged: set[str] = set()
# Engines whose SimulatedBackendWarning this process has shown; reset_client() keeps it, as the
# user has been told.
_announced: set[tuple[str, str | None]] = set()
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


# provider -> (its name as shown, the variable of its key): what a simulated run tells the user
_PROVIDER_SHOWN = {
    "openai": ("OpenAI", "OPENAI_API_KEY"),
    "anthropic": ("Anthropic", "ANTHROPIC_API_KEY"),
    "gemini": ("Gemini", "GEMINI_API_KEY"),
    "mistral": ("Mistral", "MISTRAL_API_KEY"),
    "together": ("Together AI", "TOGETHER_API_KEY"),
    "groq": ("Groq", "GROQ_API_KEY"),
}
# provider -> the batch API the requests went to, when it is not OpenAI's /v1/batches: the
# report's provenance says where they were sent, not only the line format they were written in
_PROVIDER_API = {
    "anthropic": "Anthropic Message Batches (/v1/messages/batches)",
    "gemini": "Gemini batch mode (batchGenerateContent, file mode)",
    "mistral": "Mistral batch jobs (/v1/batch/jobs)",
    "together": "Together batches (/v1/batches)",
}


def provider_api(provider: str | None) -> str | None:
    """The batch API of a provider whose API is not OpenAI's, else None.

    >>> provider_api("anthropic"), provider_api("groq")
    ('Anthropic Message Batches (/v1/messages/batches)', None)
    """
    return _PROVIDER_API.get(provider or "")


def provider_shown(provider: str | None) -> tuple[str, str]:
    """(name, key variable) of a provider for the simulated notices; OpenAI's for any other.

    >>> provider_shown("anthropic")
    ('Anthropic', 'ANTHROPIC_API_KEY')
    """
    return _PROVIDER_SHOWN.get(provider or "openai", _PROVIDER_SHOWN["openai"])


def simulated_notice(engine: str, *, reason: str | None = None, provider: str | None = None) -> str:
    """What picking the embedded server means, in one or two sentences (the warning's and the
    CLI's text), naming a likely typo of the key variable.

    >>> print(simulated_notice("rules"))  # doctest: +ELLIPSIS
    No API key found: running offline on the local server (engine rules); answers are simulated, ...
    >>> simulated_notice("rules", provider="anthropic").endswith("Set ANTHROPIC_API_KEY to use Anthropic.")
    True
    """
    name, key = provider_shown(provider)
    what = "not an LLM's judgement" if engine == "rules" else "not the requested model's"
    text = (
        f"{reason or 'No API key found'}: running offline on the local server (engine {engine}); "
        f"answers are simulated, {what}. Set {key} to use {name}."
    )
    typos = key_typos() if key == "OPENAI_API_KEY" else []
    if typos:
        text += f" Found {', '.join(typos)}: did you mean OPENAI_API_KEY?"
    return text


def simulated_banner(
    engine: str | None, *, mode: str = "batch", provider: str | None = None
) -> str:
    """The line a simulated run's report, CSV, summary and notebook panel start with.

    >>> simulated_banner("rules")
    'Simulated: answers from the offline local rules engine, not an LLM. Costs show what this run would cost at OpenAI batch prices.'
    >>> simulated_banner("rules", provider="gemini").endswith("at Gemini batch prices.")
    True
    """
    source = f"the offline local {engine} engine" if engine else "an offline local server"
    what = "an LLM" if engine == "rules" else "the requested model"
    prices = "synchronous" if mode == "sync" else "batch"
    return (
        f"Simulated: answers from {source}, not {what}. "
        f"Costs show what this run would cost at {provider_shown(provider)[0]} {prices} prices."
    )


def banner_of(attrs: Mapping[Any, Any]) -> str:
    """``simulated_banner`` for a results frame's ``attrs``: its engine, mode and provider
    (from the backend name), so every place that shows results says the same line.

    >>> banner_of({"engine": "rules", "backend": "anthropic:local:embedded:rules"})[-31:]
    'cost at Anthropic batch prices.'
    """
    return simulated_banner(
        attrs.get("engine"),
        mode=attrs.get("mode", "batch"),
        provider=provider_of_backend(attrs.get("backend")),
    )


def is_local_backend(backend: str | None) -> bool:
    """Whether a backend name is a portfolio_batch local server's (the embedded one, a
    ``serve`` one, with or without a provider in front): its answers are simulated.

    >>> is_local_backend("anthropic:local:http://127.0.0.1:8000"), is_local_backend("anthropic")
    (True, False)
    """
    name = backend or ""
    if provider_of_backend(name) is not None:
        name = name.split(":", 1)[1] if ":" in name else ""
    return name.startswith("local:")


def engine_of(backend: str | None) -> str | None:
    """The engine of an embedded-server backend name (``local:embedded:rules`` → ``rules``).

    >>> engine_of("local:embedded:smollm2"), engine_of("openai")
    ('smollm2', None)
    """
    if isinstance(backend, str) and provider_of_backend(backend) is not None:
        backend = backend.split(":", 1)[1]  # anthropic:local:embedded:rules
    if isinstance(backend, str) and backend.startswith(_LOCAL_PREFIX):
        return backend.removeprefix(_LOCAL_PREFIX)
    return None


def _announce(engine: str, reason: str | None, *, provider: str | None = None) -> None:
    with _lock:
        # once per engine and provider: a simulated OpenAI run, then a Claude one in the same
        # kernel, each say which key would make it real
        if (engine, provider) in _announced:
            return
        _announced.add((engine, provider))
    # the provider's key and name: "No ANTHROPIC_API_KEY found ... Set ANTHROPIC_API_KEY"
    notice = simulated_notice(engine, reason=reason, provider=provider)
    warnings.warn(notice, SimulatedBackendWarning, stacklevel=_user_level())


def _user_level() -> int:
    """The stacklevel of the first caller outside portfolio_batch: the warning names the user's
    line (``pb.submit(...)``), not the library's call of ``client()``."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "portfolio_batch"
    ):
        frame, level = frame.f_back, level + 1
    return level


class _SharedServer:
    """The embedded server another process on the same home started (from its ``server.json``);
    this process only talks to it, so ``stop`` leaves it running."""

    def __init__(self, engine: str, base_url: str, api_key: str, pid: int) -> None:
        self.engine, self.base_url, self.api_key, self.pid = engine, base_url, api_key, pid

    def stop(self) -> None:
        """Nothing: the process that started the server stops it."""

    def __repr__(self) -> str:
        return f"<shared embedded server engine={self.engine} at {self.base_url} (pid {self.pid})>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_shared(data_dir: Any, engine: str) -> _SharedServer | None:
    """The server ``data_dir/server.json`` names, if its process lives and it answers within 1 s
    with its key."""
    try:
        state = json.loads((data_dir / "server.json").read_text())
        base_url, key, pid = str(state["base_url"]), str(state["api_key"]), int(state["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _pid_alive(pid):
        return None
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        answer = httpx2.get(
            f"{root}/health", headers={"Authorization": f"Bearer {key}"}, timeout=1.0
        )
    except httpx2.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    return _SharedServer(engine, base_url, key, pid)


def _import_local_server() -> Any:
    try:
        from portfolio_batch.local import LocalServer
    except MissingDependencyError as exc:  # the local extra is not installed
        raise missing_extra(
            exc.name or "fastapi",
            "local",
            alternative="With no OPENAI_API_KEY the embedded local server answers, and it "
            "needs that extra: set OPENAI_API_KEY to use OpenAI",
        ) from exc
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
    return LocalServer


def embedded_server(engine: str | None = None) -> Any:
    """The embedded local server of this home for ``engine``: the one another process started
    (named in ``home()/local/<engine>/server.json``) while that process lives, else one started
    here (stopped at exit). Two servers on one data dir would both run its batches.

    >>> from portfolio_batch._backend import embedded_server
    >>> embedded_server("rules").base_url          # doctest: +SKIP
    'http://127.0.0.1:53117/v1'
    """
    engine = engine or os.environ.get("PORTFOLIO_BATCH_ENGINE") or "rules"
    with _lock:
        server = _servers.get(engine)
        if server is not None:
            return server
        LocalServer = _import_local_server()
        data_dir = home() / "local" / engine
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # one process at a time decides who serves the home (and starts it)
            with home_lock(cache_dir("locks") / f"embedded-{engine}.lock", timeout=120):
                server = _resolve(engine, data_dir, LocalServer)
        except LockBusy as exc:
            raise LocalServerError(
                f"Another process has been starting the embedded local server (engine={engine!r}, "
                f"data in {data_dir}) for 120 s; wait for it or end it, then retry."
            ) from exc
        if not _servers and not _owner_locks:
            atexit.register(reset_client)
        _servers[engine] = server
        _embedded_urls[str(server.base_url).rstrip("/")] = engine
        return server


def _resolve(engine: str, data_dir: Any, LocalServer: Any) -> Any:
    """Under the home's server lock: the live server of the home, else a new one owned here."""
    owner = _owner_lock(cache_dir("locks") / f"embedded-{engine}-owner.lock")
    deadline = time.monotonic() + 10
    while True:
        try:
            owner.acquire(timeout=0)
            break
        except Exception as exc:  # filelock.Timeout: a live process owns the server
            if not _is_timeout(exc):
                raise
        shared = _live_shared(data_dir, engine)
        if shared is not None:
            return shared
        # The owner is alive but its server does not answer: it is stopping (its lock goes
        # with it) or hung.
        if time.monotonic() > deadline:
            raise LocalServerError(
                f"Another process owns the embedded local server of {data_dir} (see its "
                "server.json) but it does not answer; end that process, then retry."
            )
        time.sleep(0.1)
    server = LocalServer(engine=engine, data_dir=data_dir)
    try:
        server.start()  # writes server.json for the other processes
    except LocalServerError:
        owner.release()
        raise
    except Exception as exc:
        owner.release()
        raise LocalServerError(
            f"The embedded local server (engine={engine!r}, data in {data_dir}) did not start: "
            f"{exc}. Set OPENAI_API_KEY to use OpenAI, or try PORTFOLIO_BATCH_ENGINE=rules."
        ) from exc
    _owner_locks[engine] = owner
    return server


def _owner_lock(path: Any) -> Any:
    """A file lock any thread may release (``reset_client`` runs in another thread, at exit)."""
    import filelock

    try:
        return filelock.FileLock(path, timeout=0, thread_local=False, fallback_to_soft=False)  # type: ignore[call-arg]
    except TypeError:
        return filelock.FileLock(path, timeout=0, thread_local=False)


def _is_timeout(exc: Exception) -> bool:
    import filelock

    return isinstance(exc, filelock.Timeout)


def _forget_shared(engine: str) -> None:
    """Drop this process's handle on another process's server (it stopped answering), so the
    next ``embedded_server`` looks again and replaces a dead one."""
    with _lock:
        if isinstance(_servers.get(engine), _SharedServer):
            del _servers[engine]


class _HomeTransport(httpx2.HTTPTransport):
    """Sends each request to the home's embedded server as it is now: when the process serving
    it has ended, the request goes to its replacement (started here if need be), with its key."""

    def __init__(self, engine: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = engine

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        for attempt in (0, 1):
            server = embedded_server(self._engine)
            target = httpx2.URL(str(server.base_url))
            request.url = request.url.copy_with(host=target.host, port=target.port)
            request.headers["Host"] = f"{target.host}:{target.port}"
            request.headers["Authorization"] = f"Bearer {server.api_key}"
            try:
                return super().handle_request(request)
            except httpx2.ConnectError:
                # refused: nothing was sent, so sending it to the replacement is safe
                if attempt or not isinstance(server, _SharedServer):
                    raise
                _forget_shared(self._engine)
        raise AssertionError("unreachable")


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


def client(
    *, provider: str | None = None, engine: str | None = None, **overrides: Any
) -> openai.OpenAI:
    """An ``openai`` client for the backend the environment selects.

    ``overrides`` go to the client's constructor (``max_retries=``, ``timeout=`` …);
    ``engine="smollm2"`` (the CLI's ``--engine``) always selects the embedded local server.
    ``provider="anthropic"`` / ``"gemini"`` (``submit`` and ``start`` pick it from the model
    name) gives an OpenAI-shaped client over that provider's batch API
    (``_providers._facade.BatchClient``); with no ``provider``, a lone ``ANTHROPIC_API_KEY`` or
    ``GEMINI_API_KEY`` (no OpenAI or Azure configured) selects that provider.
    ``provider="mistral"`` / ``"together"`` give a ``BatchClient`` over their own batch APIs
    (``MISTRAL_API_KEY`` / ``TOGETHER_API_KEY``, ``*_BASE_URL``; no key: the embedded local
    server's routes for them), never chosen by a model name or a lone key.
    ``provider="groq"`` (``_providers.compatible.SUPPORTED``) gives ``openai.OpenAI`` at that
    provider's base URL (``GROQ_BASE_URL`` overrides it) with ``GROQ_API_KEY``; only ``provider=``
    selects it, never the model name or a lone key. ``"together"``, ``"mistral"``,
    ``"fireworks"`` raise an ``InputError`` naming what their batch API lacks.

    >>> pb.client(max_retries=5).max_retries   # doctest: +SKIP
    5
    """
    if provider is None and engine is None:
        provider = _lone_provider()
    if provider in _compatible() and provider not in PROVIDER_KEYS:
        # Groq, Together, Mistral...: only provider= selects them (their model names are open
        # models'); those whose Files + Batches are OpenAI's get openai.OpenAI(base_url=...)
        from portfolio_batch._providers import compatible

        return compatible.client(str(provider), engine=engine, **overrides)
    if provider not in (None, "openai"):
        made: openai.OpenAI = _provider_client(str(provider), engine=engine, **overrides)
        return made
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
    if "http_client" not in overrides:
        # follows the home's server when the process serving it ends (a notebook closed while
        # the CLI polls): requests go to its replacement, not to a closed port
        overrides["http_client"] = openai.DefaultHttpxClient(transport=_HomeTransport(str(chosen)))
    return openai.OpenAI(base_url=str(server.base_url), **overrides)


# provider -> the environment variables of its key (first set wins); the module
# portfolio_batch._providers.<provider> has the same in KEY_VARS
PROVIDER_KEYS = {
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "mistral": ("MISTRAL_API_KEY",),
    "together": ("TOGETHER_API_KEY",),
}
# chosen only by provider= (their models are open models others serve too): a lone key of
# theirs does not select them (_lone_provider), and no model name does (provider_of)
_ONLY_BY_NAME = frozenset({"mistral", "together"})


def _lone_provider() -> str | None:
    """The provider whose key is the only one set (OpenAI and Azure unset), else None."""
    if configured_backend() is not None:
        return None
    keyed = [
        p
        for p, names in PROVIDER_KEYS.items()
        if p not in _ONLY_BY_NAME and any(os.environ.get(v) for v in names)
    ]
    return keyed[0] if len(keyed) == 1 else None


def provider_of_backend(backend: str | None) -> str | None:
    """The provider of a recorded backend name (``anthropic:local:embedded:rules`` →
    ``anthropic``); None for OpenAI, Azure and the OpenAI-compatible local server.

    >>> provider_of_backend("anthropic"), provider_of_backend("local:embedded:rules")
    ('anthropic', None)
    """
    head = (backend or "").split(":", 1)[0]
    return head if head in PROVIDER_KEYS or head in _compatible() else None


def _compatible() -> tuple[str, ...]:
    """The OpenAI-compatible providers' names (``_providers.compatible.PROVIDERS``)."""
    from portfolio_batch._providers.compatible import PROVIDERS

    return tuple(PROVIDERS)


def client_for(backends: str | None, **overrides: Any) -> openai.OpenAI:
    """The client for batches recorded under ``backends`` (a jobs frame's ``backend`` column,
    joined by ", "): the provider they were submitted to, else ``client()``'s choice."""
    names = [b for b in (backends or "").split(", ") if b]
    providers = {provider_of_backend(b) for b in names}
    if len(providers) != 1 or None in providers:
        return client(provider="openai" if names else None, **overrides)
    engine = engine_of(names[0])
    return client(provider=next(iter(providers)), engine=engine, **overrides)  # type: ignore[arg-type]


def _provider_client(provider: str, *, engine: str | None, **overrides: Any) -> Any:
    """A ``BatchClient`` over ``provider``'s backend: with its key (and base URL variable) from
    the environment, else (no key at all, or ``engine=``) the embedded local server's routes
    for that provider, simulated."""
    import importlib

    from portfolio_batch._providers._facade import BatchClient

    if provider not in PROVIDER_KEYS:
        raise InputError(
            f"provider={provider!r} is not known; use one of openai, "
            f"{', '.join(dict.fromkeys([*PROVIDER_KEYS, *_compatible()]))} (or leave it out: "
            "the model name decides)."
        )
    extra = sorted(set(overrides) - {"max_retries", "timeout"})
    if extra:
        raise InputError(
            f"client(provider={provider!r}) takes max_retries= and timeout=; not {extra[0]}="
        )
    try:
        module = importlib.import_module(f"portfolio_batch._providers.{provider}")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("portfolio_batch"):
            raise
        raise InputError(f"The {provider} backend is not available in this version.") from exc
    names = PROVIDER_KEYS[provider]
    # a provider module may bring its own facade (Mistral/Together: metadata kept there)
    client_class = getattr(module, "CLIENT", BatchClient)
    key = next((os.environ[v] for v in names if os.environ.get(v)), None)
    if engine is None and key:
        base = os.environ.get(module.BASE_URL_VAR) or None
        backend = module.backend(api_key=key, base_url=base, **overrides)
        from portfolio_batch._providers.compatible import shown_url

        # a local server's answers are marked simulated, as on the OpenAI path, and its name says
        # local (anthropic:local:<url>), so a run card reads it as simulated before any answer
        local = _local_engine(base, key)
        # the label is kept in the registry and logged: never a user:password@ of the url
        where = "" if base is None else shown_url(base.rstrip("/"))
        label = provider if base is None else f"{provider}:{'local:' if local else ''}{where}"
        _log_once(label, f"{provider} batches at {shown_url(backend.base_url)}")
        return client_class(backend, label=label, simulated_engine=local)
    others = [
        v
        for p, vs in PROVIDER_KEYS.items()
        for v in vs
        if p != provider and p not in _ONLY_BY_NAME and os.environ.get(v)
    ]
    if engine is None and (configured_backend() is not None or others):
        have = "OpenAI" if configured_backend() is not None else ", ".join(others)
        raise InputError(
            f"The {provider} model needs {' or '.join(names)}, which is not set ({have} is "
            f"configured, but a {provider} model runs only on {provider}). Set "
            f"{names[0]}, or choose a model of the configured provider."
        )
    server = embedded_server(engine)
    chosen = str(getattr(server, "engine", None) or engine or "rules")
    _announce(
        chosen,
        f"No {names[0]} found" if engine is None else f"engine={engine!r} given",
        provider=provider,
    )
    root = str(server.base_url).rstrip("/").removesuffix("/v1")
    backend = module.backend(
        api_key=getattr(server, "api_key", None) or _LOCAL_KEY,
        base_url=root + getattr(module, "LOCAL_PATH", ""),  # Mistral's, Together's: a prefix
        **overrides,
    )
    return client_class(
        backend, label=f"{provider}:{_LOCAL_PREFIX}{chosen}", simulated_engine=chosen
    )


def _local_engine(base_url: str | None, key: str) -> str | None:
    """The engine of the portfolio_batch local server at a loopback ``base_url`` (its
    ``/health`` names it), else None."""
    if not base_url or httpx2.URL(base_url).host not in ("127.0.0.1", "localhost", "::1"):
        return None
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        answer = httpx2.get(
            f"{root}/health", headers={"Authorization": f"Bearer {key}"}, timeout=1.0
        )
        engine = answer.json().get("engine") if answer.status_code == 200 else None
    except (httpx2.HTTPError, ValueError, AttributeError):
        return None
    return engine if isinstance(engine, str) and engine else None


def reset_client() -> None:
    """Stop the embedded local servers this process started, so the next ``client()`` decides
    afresh (for tests, and at interpreter exit); another process's server keeps running."""
    with _lock:
        servers = list(_servers.values())
        owners = list(_owner_locks.values())
        _servers.clear()
        _owner_locks.clear()
        _embedded_urls.clear()
        _logged.clear()
    for server in servers:
        server.stop()
    # after the stop: the next owner must not start while this server still runs the batches
    for owner in owners:
        owner.release()


def backend_name(c: Any) -> str:
    """A stable name of the backend a client talks to: ``"openai"`` (``"openai:<org>:<project>"``
    when those are set), ``"azure:<host>"``, ``"local:embedded:<engine>"`` for the embedded server,
    a provider's name (``"anthropic"``, ``"groq"``, ``"groq:<base_url>"`` for another endpoint),
    else ``"local:<base_url>"``.

    It is part of the idempotency key, so that the same file sent to two backends makes two
    batches; it never contains a key.

    >>> backend_name(openai.OpenAI(api_key="x"))
    'openai'
    """
    label = getattr(c, "label", None)  # a _providers BatchClient names itself
    if isinstance(label, str) and provider_of_backend(label) is not None:
        return label
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
